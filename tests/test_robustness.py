"""Bad input, untrusted files and faults: every case of docs/robustness.md."""
import errno
import os
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import openunmix_like.data as data_module
import openunmix_like.training.checkpoint as checkpoint_module
import openunmix_like.training.loop as loop_module
from helpers import make_models, music_like, track_folders
from openunmix_like import AudioError, Separator, separate
from openunmix_like.audio import load
from openunmix_like.cli.separate import main as separate_main
from openunmix_like.cli.train import main as train_main
from openunmix_like.modeldir import AudioSettings, save_target

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run_cli(*args):
    return separate_main([str(a) for a in args])


@pytest.fixture
def model(model_dir):
    return model_dir()


def stems(outdir, track):
    folder = outdir / track
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- bad audio files


def corrupt_files(tmp_path, wav_file):
    src = wav_file("src.wav", seconds=1.0)
    flac, mp3 = tmp_path / "src.flac", tmp_path / "src.mp3"
    sf.write(flac, sf.read(src)[0], 44100)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), str(mp3)], check=True)
    files = {}
    for path in (src, flac, mp3):
        data = path.read_bytes()
        kind = path.suffix[1:]
        files[f"truncated-{kind}{path.suffix}"] = data[: len(data) // 2]
        damaged = bytearray(data)
        for i in range(300, len(damaged), 97):
            damaged[i] ^= 0xFF
        files[f"corrupt-{kind}{path.suffix}"] = bytes(damaged)
    files["empty.wav"] = b""
    files["text.wav"] = b"this is not audio\n" * 20
    out = {}
    for name, data in files.items():
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(data)
        out[name] = tmp_path / "bad" / name
    return out


@pytest.mark.slow
def test_bad_files_one_line_each_and_the_batch_goes_on(model, tmp_path, wav_file, capsys):
    bad = corrupt_files(tmp_path, wav_file)
    good = wav_file("good.wav", seconds=0.5)
    out = tmp_path / "out"
    # A corrupt wav is still a valid PCM stream (bytes of samples flipped): it is audio, and is separated.
    expected_errors = [n for n in bad if n != "corrupt-wav.wav"]
    code = run_cli(*bad.values(), good, tmp_path / "missing.wav", "--model", model, "--outdir", out, "--quiet")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(lines) == len(expected_errors) + 1
    for name in expected_errors + ["missing.wav"]:
        line = next(line for line in lines if name in line)
        assert line.startswith("umx-separate: error: ")
        assert any(hint in line for hint in ("re-export", "re-download", "convert", "no such file"))
        assert "Traceback" not in line
        assert stems(out, name.rsplit(".", 1)[0]) == []  # no partial output
    assert stems(out, "good") == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert not list(out.rglob("*partial*"))


def test_load_raises_audio_error_naming_the_file(tmp_path, wav_file):
    for name, path in corrupt_files(tmp_path, wav_file).items():
        if name == "corrupt-wav.wav":
            continue
        with pytest.raises(AudioError, match=name):
            load(path)


def test_nan_and_inf_samples(model, tmp_path, capsys):
    path = tmp_path / "nan.wav"
    data = music_like(0.5).T.copy()
    data[100, 0], data[200, 1] = np.nan, np.inf
    sf.write(path, data, 44100, subtype="FLOAT")
    assert run_cli(path, "--model", model, "--outdir", tmp_path / "o", "--quiet") == 1
    assert "NaN or infinite" in capsys.readouterr().err
    with pytest.raises(AudioError, match="NaN or infinite"):
        separate(torch.tensor([0.0, float("nan")] * 3000), 44100, model=Separator.from_pretrained(model))


def test_shorter_than_a_frame_and_silence(model, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, music_like(0.002).T, 44100)  # 88 samples, n_fft is 512
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((44100, 2), dtype=np.float32), 44100)
    out = tmp_path / "o"
    assert run_cli(short, silent, "--model", model, "--outdir", out, "--quiet") == 0
    assert sf.info(str(out / "short" / "vocals.wav")).frames == 88
    for name in ("vocals", "drums", "bass", "other"):
        audio = sf.read(str(out / "silent" / f"{name}.wav"))[0]
        assert audio.shape == (44100, 2) and np.all(audio == 0)


@pytest.mark.parametrize("channels,rate,subtype", [(1, 8000, "PCM_U8"), (2, 96000, "PCM_24"), (8, 44100, "FLOAT"),
                                                   (2, 22050, "PCM_16")])
def test_channels_rates_and_sample_formats(model, tmp_path, channels, rate, subtype):
    path = tmp_path / "in.wav"
    sf.write(path, music_like(0.5, rate=rate, channels=channels).T, rate, subtype=subtype)
    out = tmp_path / "o"
    assert run_cli(path, "--model", model, "--outdir", out, "--quiet", "--targets", "vocals") == 0
    i = sf.info(str(out / "in" / "vocals.wav"))
    assert (i.channels, i.samplerate, i.frames) == (channels, rate, int(0.5 * rate))
    assert np.isfinite(sf.read(str(out / "in" / "vocals.wav"))[0]).all()


def test_disk_full_while_writing_leaves_nothing_and_batch_goes_on(model, tmp_path, wav_file, monkeypatch, capsys):
    first = wav_file("first.wav", seconds=0.5)
    second = wav_file("second.wav", seconds=0.5, seed=1)
    real_write = sf.SoundFile.write
    state = {"calls": 0}

    def failing_write(self, data):
        # The first file's encoding fails half way, as when the disk fills up.
        if "/first/" in os.fsdecode(self.name) and state["calls"] == 0:
            state["calls"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", failing_write)
    out = tmp_path / "o"
    assert run_cli(first, second, "--model", model, "--outdir", out, "--quiet") == 1
    err = capsys.readouterr().err
    assert "disk full while writing" in err and "/first/" in err
    assert stems(out, "first") == [] and not list(out.rglob("*partial*"))
    assert len(stems(out, "second")) == 4


def test_unwritable_folder_and_output_equal_to_input(model, tmp_path, wav_file, capsys):
    song = wav_file("song.wav", seconds=0.5)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if subprocess.run(["test", "-w", str(locked)]).returncode == 0:
            pytest.skip("running as a user that can write anywhere (root)")
        assert run_cli(song, "--model", model, "--outdir", locked, "--quiet") == 1
        assert "cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_hours_long_track_in_flat_memory(tmp_path):
    """Three hours at 8 kHz: same peak memory as ten minutes, output as long as the input."""
    folder = tmp_path / "m8k"
    for target, m in make_models(("vocals",), n_fft=256, hidden_size=4).items():
        save_target(folder, target, m, AudioSettings(8000, 256, 64, 2))
    peaks = {}
    for minutes in (10, 180):
        path = tmp_path / f"{minutes}.wav"
        rng = np.random.default_rng(0)
        with sf.SoundFile(path, "w", 8000, 1, subtype="PCM_16") as f:
            for _ in range(minutes):
                f.write((rng.standard_normal(8000 * 60) * 0.05).astype(np.float32))
        wrapper = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
                   "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
        cmd = [sys.executable, "-c", wrapper, sys.executable, "-m", "openunmix_like.cli.separate", str(path),
               "--model", str(folder), "--outdir", str(tmp_path / "o"), "--quiet", "--niter", "0"]
        code, kb = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        assert code == 0
        assert sf.info(str(tmp_path / "o" / str(minutes) / "vocals.wav")).frames == minutes * 60 * 8000
        peaks[minutes] = kb / 1024
        path.unlink()
    assert peaks[180] < peaks[10] + 64, peaks  # MB: no growth with length


# ---------------------------------------------------------------- the Python API


@pytest.mark.parametrize("audio,rate,message", [
    (torch.zeros(2, 0), 44100, "no samples"),
    (torch.zeros(1, 1, 1, 100), 44100, "shape"),
    (torch.zeros(2, 100, dtype=torch.complex64), 44100, "real-valued"),
    (torch.zeros(2, 100), 0, "sample_rate"),
    (torch.zeros(2, 100), float("nan"), "sample_rate"),
    ("not audio", 44100, "dtype|not an array"),
])
def test_separate_rejects_bad_arrays(audio, rate, message):
    sep = Separator(make_models(), n_fft=512, n_hop=128)
    with pytest.raises(AudioError, match=message):
        separate(audio, rate, model=sep)


def test_separate_accepts_integer_pcm():
    sep = Separator(make_models(), n_fft=512, n_hop=128).freeze()
    pcm = (music_like(0.2) * 32767).astype(np.int16)
    stems_ = separate(pcm, 44100, model=sep)
    assert stems_["vocals"].shape == pcm.shape and stems_["vocals"].dtype == torch.float32


# ---------------------------------------------------------------- training faults


def tiny_train_args(root, out, *extra):
    return ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.wav",
            "--interferer-files", "drums.wav", "--output", str(out), "--hidden-size", "8", "--nfft", "512",
            "--nhop", "128", "--batch-size", "1", "--seq-dur", "0.5", "--sample-rate", "22050", "--quiet", *extra]


def test_nan_in_data_is_skipped_and_nan_loss_policy(tmp_path, caplog, monkeypatch):
    root = track_folders(tmp_path / "d")
    data = sf.read(root / "train" / "t1" / "drums.wav", dtype="float32")[0]
    data[::1000] = np.nan  # everywhere, so every excerpt of the track hits one
    sf.write(root / "train" / "t1" / "drums.wav", data, 22050, subtype="FLOAT")
    out = tmp_path / "data"
    with caplog.at_level("WARNING"):
        assert train_main(tiny_train_args(root, out, "--epochs", "1")) == 0
    assert "t1/drums.wav: NaN or infinite samples" in caplog.text  # reported, sample skipped
    state = torch.load(out / "vocals.chkpnt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())

    # A loss that turns NaN in training (e.g. a diverging model): skipped by default, or stops the run.
    real_mse = torch.nn.functional.mse_loss
    calls = {"n": 0}

    def sometimes_nan(a, b):
        calls["n"] += 1
        loss = real_mse(a, b)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop_module.nn.functional, "mse_loss", sometimes_nan)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert train_main(tiny_train_args(root, tmp_path / "skip", "--epochs", "1")) == 0
    assert "epoch 1, batch 2: NaN or infinite loss or gradient; batch skipped" in caplog.text
    state = torch.load(tmp_path / "skip" / "vocals.chkpnt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    calls["n"] = 0
    assert train_main(tiny_train_args(root, tmp_path / "stop", "--epochs", "1", "--nonfinite-loss", "stop")) == 1
    assert not (tmp_path / "stop" / "vocals.chkpnt").exists()


def test_corrupt_file_during_training_is_reported_once_and_skipped(tmp_path, caplog):
    root = track_folders(tmp_path / "d", tracks=3)
    for t in range(3):  # flac, so damage shows up as decode errors rather than noise
        for name in ("vocals", "drums"):
            wav = root / "train" / f"t{t}" / f"{name}.wav"
            sf.write(wav.with_suffix(".flac"), sf.read(wav)[0], 22050)
    damaged = root / "train" / "t1" / "drums.flac"
    out = tmp_path / "m"
    args = ["--dataset", "trackfolder_fix", "--root", str(root), "--target-file", "vocals.flac",
            "--interferer-files", "drums.flac", "--output", str(out), "--hidden-size", "8", "--nfft", "512",
            "--nhop", "128", "--batch-size", "1", "--seq-dur", "0.5", "--sample-rate", "22050", "--quiet",
            "--epochs", "2"]
    for t in range(3):  # the validation split needs the flac files too
        for name in ("vocals", "drums"):
            wav = root / "valid" / f"t{t}" / f"{name}.wav"
            sf.write(wav.with_suffix(".flac"), sf.read(wav)[0], 22050)
    original_scan = data_module.scan

    def scan_then_damage(path, problems):
        result = original_scan(path, problems)
        if path == damaged:  # damaged after the data set checked it, as if the disk went bad mid-run
            data = bytearray(damaged.read_bytes())
            for i in range(200, len(data), 50):
                data[i] ^= 0xFF
            damaged.write_bytes(bytes(data))
        return result

    data_module.scan = scan_then_damage
    try:
        with caplog.at_level("WARNING"):
            assert train_main(args) == 0
    finally:
        data_module.scan = original_scan
    messages = [r.getMessage() for r in caplog.records if "skipping a sample" in r.getMessage()]
    assert messages and all("drums.flac" in m for m in messages)
    assert len(messages) == len(set(messages))  # each failure reported once
    assert json.loads((out / "vocals.json").read_text())["epochs_trained"] == 2


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    from openunmix_like.fileio import atomic_path

    root = track_folders(tmp_path / "d")
    out = tmp_path / "m"
    assert train_main(tiny_train_args(root, out, "--epochs", "1")) == 0
    before = (out / "vocals.chkpnt").read_bytes()

    def full_disk(path, data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "write_bytes_atomic", full_disk)
    assert train_main(tiny_train_args(root, out, "--epochs", "2", "--resume", "auto")) == 1
    err = capsys.readouterr().err
    assert "no space left" in err and "--resume auto" in err
    assert (out / "vocals.chkpnt").read_bytes() == before
    assert torch.load(out / "vocals.chkpnt", weights_only=True)["epoch"] == 1
    assert not list(out.glob("*partial*"))


# ---------------------------------------------------------------- bad model files


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_json(name, change):
    def edit(folder):
        path = folder / name
        meta = json.loads(path.read_text())
        path.write_text(json.dumps(change(meta)))
    return edit


def _set(key, value):
    return lambda meta: {**meta, key: value}


def _settings_in_target_json(edit):
    """Remove separator.json so the settings come from vocals.json (the reference layout), then edit that."""
    def apply(folder):
        (folder / "separator.json").unlink()
        edit(folder)
    return apply


BAD_MODEL_FILES = {
    "truncated safetensors": ("vocals.safetensors", lambda f: _truncate(f / "vocals.safetensors")),
    "empty safetensors": ("drums.safetensors", lambda f: (f / "drums.safetensors").write_bytes(b"")),
    "text as safetensors": ("bass.safetensors", lambda f: (f / "bass.safetensors").write_text("not weights\n")),
    "truncated pth": ("vocals.pth", lambda f: ((f / "vocals.safetensors").unlink(), _truncate(f / "vocals.pth"))),
    "nfft a string": ("separator.json", _edit_json("separator.json", _set("nfft", "x"))),
    "nhop a list": ("separator.json", _edit_json("separator.json", _set("nhop", [1024]))),
    "nb_channels null": ("separator.json", _edit_json("separator.json", _set("nb_channels", None))),
    "sample_rate true": ("separator.json", _edit_json("separator.json", _set("sample_rate", True))),
    "nfft negative": ("separator.json", _edit_json("separator.json", _set("nfft", -512))),
    "nfft fractional": ("separator.json", _edit_json("separator.json", _set("nfft", 512.5))),
    "targets a string": ("separator.json", _edit_json("separator.json", _set("targets", "vocals"))),
    "separator.json a list": ("separator.json", _edit_json("separator.json", lambda meta: [meta])),
    "model_args a list": ("vocals.json", _edit_json("vocals.json", _set("model_args", [1, 2]))),
    "architecture a number": ("drums.json", _edit_json("drums.json", _set("architecture", 5))),
    "target json a string": ("bass.json", _edit_json("bass.json", lambda meta: "umx")),
    "args a list": ("vocals.json", _settings_in_target_json(_edit_json("vocals.json", _set("args", [512])))),
    "args.nfft a string": ("vocals.json", _settings_in_target_json(
        _edit_json("vocals.json", lambda meta: {**meta, "args": {**meta["args"], "nfft": "512"}}))),
    "rate an object": ("vocals.json", _settings_in_target_json(_edit_json("vocals.json", _set("sample_rate", {})))),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_FILES))
def test_bad_model_file_is_one_model_error_naming_the_file(model_dir, case):
    from openunmix_like import ModelError

    name, damage = BAD_MODEL_FILES[case]
    folder = model_dir()
    damage(folder)
    with pytest.raises(ModelError) as info:
        Separator.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(folder / name) + ": ")
    assert any(hint in message for hint in ("fix or delete", "re-download or re-export"))


@pytest.mark.parametrize("case", ["truncated safetensors", "nfft a string", "nb_channels null", "model_args a list",
                                  "separator.json a list"])
def test_bad_model_file_cli_prints_one_line_and_fails(model_dir, tmp_path, wav_file, capsys, case):
    name, damage = BAD_MODEL_FILES[case]
    folder = model_dir()
    damage(folder)
    code = run_cli(wav_file(seconds=0.5), "--model", folder, "--outdir", tmp_path / "out", "--quiet")
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1 and len(lines) == 1, captured.err
    assert lines[0].startswith(f"umx-separate: error: {folder / name}: ") and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_settings_from_reference_args_still_load(model_dir):
    # Integral floats, as some writers store them, are accepted; the checks refuse only wrong types.
    folder = model_dir()
    _settings_in_target_json(_edit_json("vocals.json", lambda meta: {
        **meta, "sample_rate": 44100, "args": {**meta["args"], "nfft": 512.0, "nhop": 128}}))(folder)
    sep = Separator.from_pretrained(folder)
    assert (sep.sample_rate, sep.n_fft, sep.n_hop, sep.nb_channels) == (44100, 512, 128, 2)


# ---------------------------------------------------------------- partial files of killed runs


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the id now names no process
    return child.pid


def test_rerun_removes_partials_of_dead_writers_only(model, tmp_path, wav_file):
    import os

    from openunmix_like.fileio import HOST_TAG

    song = wav_file("song.wav", seconds=0.5)
    folder = tmp_path / "out" / "song"
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = folder / f".vocals.wav.{_dead_pid()}-{HOST_TAG}-abcd1234.partial.wav"
        dead_final = folder / f".bass.wav.{_dead_pid()}-{HOST_TAG}-efgh5678.partial.wav"  # the encoding pass's
        kept = [
            folder / f".vocals.wav.{sleeper.pid}-{HOST_TAG}-ijkl9012.partial.wav",  # another running writer
            folder / f".drums.wav.{os.getpid()}-{HOST_TAG}-mnop3456.partial.wav",  # this process
            folder / f".other.wav.{_dead_pid()}-00000000-qrst7890.partial.wav",  # a dead writer on another host
            folder / ".vocals.wav.uvwx1234.partial.wav",  # no process id: an older version's, cannot tell
            folder / f".vocals.wav.bak.{_dead_pid()}-{HOST_TAG}-yzab5678.partial.wav",  # another output's name
        ]
        for path in [dead, dead_final, *kept]:
            path.write_bytes(b"\0" * 1000)
        assert run_cli(song, "--model", model, "--outdir", tmp_path / "out", "--quiet") == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not dead.exists() and not dead_final.exists()
    assert all(path.exists() for path in kept)
    assert stems(tmp_path / "out", "song") == sorted(
        [p.name for p in kept] + ["bass.wav", "drums.wav", "other.wav", "vocals.wav"])


def test_rerun_after_sigkill_leaves_no_partial_files(model, tmp_path, wav_file):
    import signal

    song = wav_file("song.wav", seconds=2.0)
    out = tmp_path / "out"
    # umx-separate in a child process that pauses after writing its first chunk: killed mid-track, for sure.
    code = ("import sys, time\n"
            "from openunmix_like import writer\n"
            "from openunmix_like.cli.separate import main\n"
            "write = writer.StemWriter.write\n"
            "def slow(self, chunks):\n"
            "    write(self, chunks)\n"
            "    print('written', flush=True)\n"
            "    time.sleep(120)\n"
            "writer.StemWriter.write = slow\n"
            "sys.exit(main(sys.argv[1:]))\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(song), "--model", str(model), "--outdir", str(out),
                              "--quiet"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    left = sorted(p.name for p in (out / "song").glob(".*.partial.wav"))
    assert len(left) == 4 and all(f".{child.pid}-" in name for name in left)  # what the issue reported
    assert run_cli(song, "--model", model, "--outdir", out, "--quiet") == 0
    assert stems(out, "song") == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


# ---------------------------------------------------------------- command-line help


@pytest.mark.parametrize("command", ["separate", "evaluate", "train", "export", "synth", "compare"])
def test_every_command_line_option_has_help_text(command, capsys):
    import argparse
    import importlib

    cli = importlib.import_module(f"openunmix_like.cli.{command}")
    silent = [a.option_strings or [a.dest] for a in cli.build_parser()._actions
              if not a.help and not isinstance(a, argparse._HelpAction)]
    assert silent == []
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    if command == "evaluate":
        assert "--quiet no per-track lines" in " ".join(capsys.readouterr().out.split())
