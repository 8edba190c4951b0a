"""Level matching: each track is separated at its model's training level, the stems turned back.

What a user relies on: a song mastered quietly gives the same stems, turned down, as the same song
mastered loudly (the models see magnitudes, so without matching they do not); the stems still add up
to the input; the bundled model matches by default and ``off`` restores the reference package's output.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import make_models, music_like
from openunmix_like import level
from openunmix_like.catalogue.records import settings_of
from openunmix_like.errors import ModelError
from openunmix_like.inference import TensorSource, iter_separate, separate, separate_tensor, separate_tracks
from openunmix_like.separator import Separator

RATE = 44100


def tiny_separator(input_level=None, niter=1, **options) -> Separator:
    torch.manual_seed(0)
    return Separator(make_models(n_fft=512), n_fft=512, n_hop=128, niter=niter, input_level=input_level,
                     **options).freeze()


def clip(seconds=3.0, seed=0) -> torch.Tensor:
    return torch.from_numpy(music_like(seconds, RATE, 2, seed)).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------- the level of a track


def test_level_of_a_sine_is_its_rms():
    t = torch.arange(3 * RATE) / RATE
    sine = 0.5 * torch.sin(2 * math.pi * 441 * t).repeat(2, 1)
    assert level.track_level(sine, RATE) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=1e-3)


def test_silence_has_no_level_and_is_left_as_it_is():
    assert level.track_level(torch.zeros(2, RATE), RATE) is None
    assert level.track_level(torch.full((2, RATE), 1e-5), RATE) is None  # -100 dBFS: below the gate
    assert level.matching_gain(None, -16.5) == 1.0
    out = separate(torch.zeros(2, RATE), RATE, model=tiny_separator(input_level=-16.5))
    assert all(torch.isfinite(v).all() and not v.any() for v in out.values())


def test_a_quiet_intro_and_a_silent_tail_do_not_change_a_songs_level():
    song = torch.randn(2, 6 * RATE, generator=torch.Generator().manual_seed(0)) * 0.1  # a steady -20 dBFS
    alone = level.track_level(song, RATE)
    padded = torch.cat([torch.zeros(2, 3 * RATE), song[:, :2 * RATE] * 0.01, song, torch.zeros(2, 4 * RATE)], dim=1)
    # 6 loud seconds against 2 quiet ones (the silent 7 are below the gate): the median is the song's.
    assert level.track_level(padded, RATE) == pytest.approx(alone, abs=0.1)
    plain_rms = 10 * math.log10(float(padded.double().square().mean()))
    assert plain_rms < alone - 3  # what an RMS over the whole file would have said


def test_a_file_read_a_few_seconds_at_a_time_has_the_level_of_the_whole_track():
    # Seconds at levels that change, over more than two reading chunks and a short tail.
    seconds = 2 * level.READ_BLOCKS + 7  # more than two reads and a short tail
    gains = torch.logspace(-2, 0, seconds).repeat_interleave(RATE)
    track = torch.randn(2, seconds * RATE + RATE // 3) * torch.cat([gains, torch.ones(RATE // 3)])
    whole = level.level_of(level.block_powers(track, RATE))  # every block at once, no reads
    assert level.source_level(TensorSource(track), RATE) == pytest.approx(whole, abs=1e-9)
    assert level.track_level(track, RATE) == pytest.approx(whole, abs=1e-9)
    short = torch.randn(1, RATE // 4) * 0.1  # shorter than a block: the whole track is one block
    assert level.source_level(TensorSource(short), RATE) == pytest.approx(-20, abs=0.5)


@pytest.mark.parametrize("value", [1.0, -61, float("nan"), "loud", True])
def test_a_level_out_of_range_is_refused_in_one_line(value):
    with pytest.raises(ValueError, match="input_level must be a level in dBFS") as info:
        tiny_separator(input_level=value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- separating with matching


def at_level(x: torch.Tensor, db: float) -> torch.Tensor:
    return x * 10 ** ((db - level.track_level(x, RATE)) / 20)


def test_a_track_within_the_tolerance_is_left_as_it_is_and_others_are_brought_to_its_edge():
    assert level.TOLERANCE_DB == 3.0
    assert level.matching_gain(-18.0, -16.5) == 1.0
    assert level.matching_gain(-30.0, -16.5) == pytest.approx(10 ** (10.5 / 20))  # to -19.5
    assert level.matching_gain(-5.0, -16.5) == pytest.approx(10 ** (-8.5 / 20))  # to -13.5
    assert level.matching_gain(-30.0, -16.5, tolerance=0) == pytest.approx(10 ** (13.5 / 20))
    x = at_level(clip(), -15.0)
    assert torch.equal(separate_tensor(tiny_separator(input_level=-16.5), x, RATE),
                       separate_tensor(tiny_separator(), x, RATE))


@pytest.mark.parametrize("levels", [(-45.0, -30.0), (-8.0, -2.0)])
def test_with_matching_a_quieter_or_louder_master_gives_the_same_stems_turned_down(levels):
    # Both masters beyond the model's range on one side: each is brought to the same edge.
    x = clip()
    for matched in (True, False):
        separator = tiny_separator(input_level=-16.5 if matched else None)
        quiet, loud = (at_level(x, db) for db in levels)
        scale = float(loud.abs().max() / quiet.abs().max())
        difference = rel(separate_tensor(separator, quiet, RATE) * scale, separate_tensor(separator, loud, RATE))
        if matched:  # float32 rounding, through the models and EM
            assert difference < 1e-4
        else:  # what matching removes: the models see another input
            assert difference > 1e-2


def test_matching_is_separating_the_track_at_that_level_and_turning_the_stems_back():
    x = at_level(clip(), -40.0)
    gain = 10 ** ((-16.5 - level.TOLERANCE_DB + 40.0) / 20)
    matched = separate_tensor(tiny_separator(input_level=-16.5), x, RATE)
    by_hand = separate_tensor(tiny_separator(), x * gain, RATE) / gain
    assert rel(matched, by_hand) < 1e-5
    assert rel(matched, separate_tensor(tiny_separator(), x, RATE)) > 1e-3


def test_matched_stems_still_add_up_to_the_input_without_em():
    x = at_level(clip(), -45.0)  # a quiet track: the gain is large
    separator = tiny_separator(input_level=-16.5, niter=0, residual="rest")
    stems = separate_tensor(separator, x, RATE)
    assert rel(stems.sum(dim=0), x) < 1e-5


def test_segmented_batched_and_several_track_paths_match_each_track_at_its_own_level():
    separator = tiny_separator(input_level=-20.0)
    quiet, loud = at_level(clip(5.0, seed=1), -40.0), at_level(clip(4.0, seed=2), -5.0)
    segmented = [torch.cat(list(iter_separate(separator, t, RATE, segment=1.5, overlap=0.5, batch_segments=3)), -1)
                 for t in (quiet, loud)]
    together = separate_tracks(separator, [quiet, loud], [RATE, RATE], segment=1.5, overlap=0.5, batch_segments=4)
    for s, t in zip(segmented, together):
        assert rel(s, t) < 1e-5
    # Each at its own gain: the quiet track's stems are not the loud one's gain applied to it.
    alone = torch.cat(list(iter_separate(separator, quiet, RATE, segment=1.5, overlap=0.5)), -1)
    assert rel(together[0], alone) < 1e-5


def test_forward_separates_what_it_is_given():
    # Separator.forward is the segment-level call (the reference package's): no matching there.
    x = clip()[None]
    assert torch.equal(tiny_separator(input_level=-16.5)(x), tiny_separator()(x))


# ---------------------------------------------------------------- models and commands


def test_the_bundled_model_matches_its_training_level_by_default_and_off_turns_it_off():
    assert Separator.from_pretrained(progress=False).input_level == -16.5
    assert Separator.from_pretrained(progress=False, input_level=None).input_level is None
    assert Separator.from_pretrained(progress=False, input_level=-20).input_level == -20.0


def test_a_model_folder_records_its_level_or_none(model_dir):
    folder = model_dir()
    assert Separator.from_pretrained(folder, progress=False).input_level is None
    path = folder / "separator.json"
    held = json.loads(path.read_text())
    path.write_text(json.dumps({**held, "input_level": -14}))
    assert Separator.from_pretrained(folder, progress=False).input_level == -14.0
    path.write_text(json.dumps({**held, "input_level": "loud"}))
    with pytest.raises(ModelError, match=r"separator.json: input_level must be .* not \"loud\"; fix it") as info:
        Separator.from_pretrained(folder, progress=False)
    assert "\n" not in str(info.value)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_umx_separate_matches_by_default_and_off_gives_the_unmatched_stems(tmp_path):
    song = tmp_path / "quiet.wav"
    quiet = at_level(torch.from_numpy(music_like(4.0, RATE, 2, 3)).float(), -35.0)
    sf.write(song, quiet.numpy().T, RATE, subtype="FLOAT")
    common = ["--targets", "vocals", "--bits", "32", "--clip", "none", "--precision", "fp32", "--quiet"]
    for name, extra in (("auto", []), ("off", ["--input-level", "off"]), ("level", ["--input-level", "-16.5"])):
        done = run_cli(str(song), "--outdir", str(tmp_path / name), *common, *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    read = {name: sf.read(tmp_path / name / "quiet" / "vocals.wav")[0] for name in ("auto", "off", "level")}
    assert np.array_equal(read["auto"], read["level"])
    assert np.abs(read["auto"] - read["off"]).max() > 1e-3 * np.abs(read["off"]).max()
    x = torch.from_numpy(sf.read(song, dtype="float32")[0].T.copy())
    separator = Separator.from_pretrained(targets=["vocals"], precision="fp32", input_level=None, progress=False)
    unmatched = separate_tensor(separator, x, RATE)[0].T.numpy()
    assert np.abs(read["off"] - unmatched).max() < 1e-6


def test_umx_separate_refuses_a_bad_level_before_any_work(tmp_path, wav_file):
    song = wav_file()
    done = run_cli(str(song), "--input-level", "+3", "--outdir", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2
    assert "--input-level: give auto, off or a level in dBFS RMS from -60 to 0" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_catalogue_redoes_tracks_only_when_the_level_matched_changes():
    from openunmix_like.cli.separate import build_parser

    args = build_parser().parse_args(["in.wav"])
    before = settings_of(args)  # a record from before level matching, or of a model without a level
    args.input_level = None
    assert settings_of(args) == before
    args.input_level = -16.5
    assert settings_of(args) == {**before, "input_level": -16.5}


def test_separate_and_separate_file_take_the_level_for_a_model_they_load(tmp_path, wav_file):
    from openunmix_like.stems import separate_file

    x = at_level(clip(2.0), -35.0)
    kwargs = dict(targets=["vocals"], precision="fp32")
    off = separate(x, RATE, input_level=None, **kwargs)["vocals"]
    assert torch.equal(separate(x, RATE, input_level=-16.5, **kwargs)["vocals"], separate(x, RATE, **kwargs)["vocals"])
    assert rel(separate(x, RATE, **kwargs)["vocals"], off) > 1e-3
    # Given a Separator, the keyword would be ignored: refused, saying where the level is set.
    with pytest.raises(ValueError, match=r"input_level=None \(set separator.input_level\) would not change"):
        separate(x, RATE, model=tiny_separator(), input_level=None)
    song = wav_file(seconds=2.0)
    written = separate_file(song, tmp_path / "out", input_level=None, bits=32, clip="none", **kwargs)
    stem = torch.from_numpy(sf.read(written["vocals"], dtype="float32")[0].T.copy())
    audio = torch.from_numpy(sf.read(song, dtype="float32")[0].T.copy())
    assert rel(stem, separate(audio, RATE, input_level=None, **kwargs)["vocals"]) < 1e-6


def test_rebundling_keeps_the_bundled_models_level_unless_told(tmp_path):
    from test_bundle_script import TARGETS, bundle, fake_run, valid_root

    run = fake_run(tmp_path / "run", valid_root(tmp_path / "root", ["a"]), dict.fromkeys(TARGETS, 1.0), seed=1)
    dest = tmp_path / "dest"
    done = bundle(run, dest)
    assert done.returncode == 0, done.stderr
    assert Separator.from_pretrained(dest, progress=False).input_level is None  # none recorded, none kept
    for option, expected in ((["--input-level", "-16.5"], -16.5), ([], -16.5), (["--input-level", "off"], None)):
        done = bundle(run, dest, *option)
        assert done.returncode == 0, done.stderr
        assert Separator.from_pretrained(dest, progress=False).input_level == expected
    done = bundle(run, dest, "--input-level", "loud")
    assert done.returncode == 2 and "--input-level: input_level must be a level in dBFS" in done.stderr
