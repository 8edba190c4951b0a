"""docs/migrating.md as written: its umx-separate commands, the options of the reference Open-Unmix CLI,
Demucs and Spleeter it says are accepted or refused, and its ported Python snippet.

A published model's name (``umxhq``, ``umxl``) is replaced by a tiny random-weight model folder of that
name, as in test_docs_as_written.py; commands without ``--model`` use the bundled model.
"""
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from helpers import music_like
from openunmix_like import Separator, separate, separate_file
from openunmix_like.cli.separate import main

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "migrating.md").read_text()
PUBLISHED = {"umxhq", "umxl", "umx", "umxse"}
TARGETS = ("vocals", "drums", "bass", "other")

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="the page's commands write mp3 stems (ffmpeg)")


def page_commands():
    """Every umx-separate command of the page: in backticks (the tables) or on an indented line of its own."""
    spans = re.findall(r"`(umx-separate [^`]+)`", DOC)
    lines = re.findall(r"^    (umx-separate .+)$", DOC, flags=re.M)
    return spans + lines


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny model folders named like the published models, and ``my-model`` in the reference's layout."""
    from helpers import make_models
    from openunmix_like.modeldir import AudioSettings, save_target

    root = tmp_path_factory.mktemp("models")
    for name in ("umxhq", "umxl"):
        for target, model in make_models(n_fft=512).items():
            save_target(root / name, target, model, AudioSettings(44100, 512, 128, 2))
    reference = root / "my-model"
    reference.mkdir()
    for target in TARGETS:  # <target>.pth, <target>.json {args: ...} and separator.json, as the reference writes
        shutil.copy(root / "umxl" / f"{target}.pth", reference / f"{target}.pth")
        args = json.loads((root / "umxl" / f"{target}.json").read_text())["args"]
        (reference / f"{target}.json").write_text(json.dumps({"args": args}))
    (reference / "separator.json").write_text(json.dumps({"sample_rate": 44100, "nfft": 512, "nhop": 128,
                                                          "nb_channels": 2}))
    return root


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    root = tmp_path_factory.mktemp("songs")
    sf.write(root / "song.wav", music_like(16.0, 44100, 2, seed=1).T, 44100)  # --start 10 --duration 5 fits
    sf.write(root / "other.wav", music_like(2.0, 44100, 2, seed=2).T, 44100)
    return root


def run_here(folder: Path, argv, models: Path, songs: Path, monkeypatch) -> int:
    """``umx-separate argv`` in a fresh ``folder`` holding the songs, published names replaced by the tiny folders."""
    folder.mkdir()
    for song in songs.iterdir():
        os.link(song, folder / song.name)
    (folder / "my-model").symlink_to(models / "my-model")
    argv = [str(models / a) if prev == "--model" and a in PUBLISHED else a for prev, a in zip([""] + argv, argv)]
    monkeypatch.chdir(folder)
    return main(argv + ["--quiet"])


def test_every_command_of_the_page_runs_as_written(tmp_path, models, songs, monkeypatch, capsys):
    commands = page_commands()
    assert len(commands) >= 35
    for i, command in enumerate(commands):
        argv = shlex.split(command)[1:]
        status = run_here(tmp_path / str(i), argv, models, songs, monkeypatch)
        assert status == 0, f"{command}: {capsys.readouterr().err}"
    # What the tables say comes out, for the rows that name files.
    table = {c: tmp_path / str(i) for i, c in enumerate(commands)}

    def out(fragment):
        return next(folder for command, folder in table.items() if fragment in command)

    folder = out("--filename \"{track}_{model}/{target}.{ext}\"")
    assert sorted(p.name for p in (folder / "song_umxl").iterdir()) == sorted(f"{t}.wav" for t in TARGETS)
    folder = out("--targets vocals --residual accompaniment --outdir out")
    assert sorted(p.name for p in (folder / "out" / "song").iterdir()) == ["accompaniment.wav", "vocals.wav"]
    folder = out("--filename \"{model}/{track}/{target}.{ext}\"")
    assert (folder / "separated" / "umxhq" / "song" / "vocals.wav").is_file()
    folder = out("--residual no_vocals")
    assert sorted(p.name for p in (folder / "separated" / "song").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    assert sf.info(out("--ext .flac") / "separated" / "song" / "vocals.flac").format == "FLAC"
    assert sf.info(out("--bits 24") / "separated" / "song" / "vocals.wav").subtype == "PCM_24"
    exact = out("--bits 32 --clip none --keep-model-rate") / "song_umxhq" / "vocals.wav"
    assert (sf.info(exact).subtype, sf.info(exact).samplerate) == ("FLOAT", 44100)
    assert sf.info(out("--start 10 --duration 5") / "separated" / "song" / "vocals.wav").frames == 5 * 44100
    folder = out("--model my-model/ --targets vocals")
    assert [p.name for p in (folder / "separated" / "song").iterdir()] == ["vocals.wav"]


def test_the_pages_refusal_example_is_what_umx_separate_prints(tmp_path, models, songs, monkeypatch, capsys):
    shown = re.search(r"^    \$ (umx-separate .+)\n    (umx-separate: error: .+)$", DOC, flags=re.M)
    status = run_here(tmp_path / "run", shlex.split(shown.group(1))[1:], models, songs, monkeypatch)
    assert status == 2
    assert capsys.readouterr().err.strip() == shown.group(2)
    assert not (tmp_path / "run" / "separated").exists()


@pytest.mark.parametrize("option, names", [
    (["--audio-backend", "soundfile"], "soundfile and the ffmpeg program"),   # the reference CLI's
    (["--filterbank", "asteroid"], "one STFT"),
    (["--shifts", "5"], "no averaging"),                                      # Demucs's
    (["--mp3"], "use --ext mp3"),                       # not taken for --mp3-bitrate, which it abbreviates
    (["-n", "htdemucs"], "use --model"),
    (["-d", "cpu"], "--device cpu|cuda|mps (Demucs's -d) or --duration SECONDS (Spleeter's -d)"),
    (["-o", "out"], "use --outdir"),
    (["--int24"], "use --bits 24"),
    (["-p", "spleeter:2stems"], "--targets vocals --residual accompaniment"),  # Spleeter's
    (["-b", "320k"], "use --mp3-bitrate KBPS"),
    (["-f", "{filename}/{instrument}.{codec}"], "use --filename"),
])
def test_other_tools_options_are_refused_naming_ours(tmp_path, models, songs, monkeypatch, capsys, option, names):
    status = run_here(tmp_path / "run", ["song.wav", "--model", "umxhq", *option], models, songs, monkeypatch)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"umx-separate: error: {option[0]}: ") and names in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "separated").exists()


def test_reference_cli_spellings_that_are_accepted(tmp_path, models, songs, monkeypatch, capsys):
    assert run_here(tmp_path / "a", ["song.wav", "--model", "umxl", "--ext", ".flac", "--no-cuda"],
                    models, songs, monkeypatch) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "separated" / "song").iterdir()) == sorted(
        f"{t}.flac" for t in TARGETS)
    # --no-cuda means the CPU: with another device it is a contradiction, refused before any work.
    assert run_here(tmp_path / "b", ["song.wav", "--model", "umxl", "--no-cuda", "--device", "cuda"],
                    models, songs, monkeypatch) == 1
    assert capsys.readouterr().err.strip() == (
        "umx-separate: error: --no-cuda and --device cuda contradict each other; give one")
    assert not (tmp_path / "b" / "separated").exists()


@pytest.mark.parametrize("template, hint", [
    ("{track}/{stem}.{ext}", "(write {target} for {stem})"),             # Demucs's
    ("{filename}/{instrument}.{codec}", "(write {track} for {filename})"),  # Spleeter's
])
def test_other_tools_template_fields_name_ours(tmp_path, models, songs, monkeypatch, capsys, template, hint):
    status = run_here(tmp_path / "run", ["song.wav", "--model", "umxhq", "--filename", template],
                      models, songs, monkeypatch)
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and err.rstrip().endswith(hint)


def test_the_ported_python_snippet_runs(tmp_path, models):
    block = re.search(r"^```python\n(.*?)^```", DOC, flags=re.S | re.M).group(1)
    assert "aggregate_dict=" in block
    ns = {}
    exec(compile(block.replace('"umxl"', repr(str(models / "umxl"))), "<migrating.md>", "exec"), ns)  # noqa: S102
    assert ns["separator"].target_names == ["vocals", "residual"]
    assert list(ns["stems"]) == ["karaoke"]
    assert torch.equal(ns["stems"]["karaoke"], ns["estimates"][:, 1])
    assert ns["vocals"].shape == ns["audio"][0].shape


@pytest.mark.parametrize("call, says", [
    (lambda m, a: separate(a, 44100, model_str_or_path=m), "write model="),
    (lambda m, a: separate(a, 44100, model=m, aggregate_dict={"all": ["vocals"]}), "write aggregate="),
    (lambda m, a: separate(a, 44100, separator=Separator.from_pretrained(m)), "pass the Separator as model="),
    (lambda m, a: separate(a, 44100, model=Separator.from_pretrained(m), aggregate_dict={}), "write aggregate="),
    (lambda m, a: Separator.from_pretrained(m, filterbank="torch"), "leave it out"),
    (lambda m, a: separate_file("song.wav", "out", m, aggregate_dict={}), "write aggregate="),
])
def test_reference_keywords_say_what_to_write(models, call, says):
    with pytest.raises(TypeError, match="the reference package's") as raised:
        call(str(models / "umxhq"), torch.zeros(2, 4410))
    assert says in str(raised.value)


def test_spleeter_python_replacement_writes_two_stems(tmp_path, models, songs):
    written = separate_file(songs / "other.wav", tmp_path, str(models / "umxhq"), targets=["vocals"],
                            residual="accompaniment")
    assert sorted(written) == ["accompaniment", "vocals"]
    assert written["accompaniment"] == tmp_path / "other" / "accompaniment.wav"
