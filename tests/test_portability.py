"""Windows and macOS, simulated on Linux: what the package meets there that Linux never shows it.

Each test sets up the platform's condition (Windows' path syntax and device names, a code page on redirected
output, a file system that ignores case, POSIX-only modules missing) and checks what a user there would see.
"""
import json
import ntpath
import os
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest

from helpers import make_tracks, tiny_folder, write
from openunmix_like import stems
from openunmix_like.cli import separate
from openunmix_like.web.jobs import track_name

REPO = Path(__file__).resolve().parents[1]


def test_a_windows_drive_is_left_out_of_folder_as_a_leading_slash_is(monkeypatch):
    # umx-separate C:\Music\Album\song.mp3 --filename "{folder}/{track}/{target}.{ext}" was refused on Windows:
    # {folder} kept "C:", so the stem path "C:/Music/..." was absolute there ("outside the output folder").
    monkeypatch.setattr(os, "sep", "\\")
    monkeypatch.setattr(os, "path", ntpath)
    assert stems.folder_name(r"C:\Music\Album\song.mp3") == "Music/Album"
    assert stems.folder_name(r"C:\Music\Album\A\song.mp3", root=r"C:\Music\Album") == "A"
    assert stems.folder_name(r"\\nas\share\Album\song.mp3") == "nas/share/Album"  # as //nas/share is on Linux
    relative = stems.stem_names("{folder}/{track}/{target}.{ext}", "song", ["vocals"], "wav", "m",
                                stems.folder_name(r"C:\Music\Album\song.mp3"))
    assert relative == {"vocals": "Music/Album/song/vocals.wav"}


def test_a_folder_named_like_a_drive_stays_on_linux():
    assert stems.folder_name("C:/Album/song.mp3") == "C:/Album"  # a plain folder name there


@pytest.mark.parametrize("filename", ["CON.mp3", "aux.wav", "Nul.live.flac", "com1.wav", "LPT9 .wav", "con .x.wav",
                                      "COM\u00b9.wav"])
def test_web_downloads_never_carry_a_windows_device_name(filename):
    # The zip's folder and the downloads are named after the upload: a folder "aux" in the zip does not extract
    # on Windows.
    name = track_name(filename)
    assert not PureWindowsPath(name).is_reserved(), name
    assert not PureWindowsPath(f"{name}-vocals.wav").is_reserved()
    assert name.lower().startswith(filename.split(".")[0].strip().lower())


@pytest.mark.parametrize("filename", ["console.wav", "my aux.wav", "conan.mp3", "com10.wav", "auxiliary.wav"])
def test_names_that_only_start_like_a_device_are_kept(filename):
    assert track_name(filename) == Path(filename).stem


@pytest.mark.slow
def test_a_song_named_in_japanese_does_not_stop_a_batch_printing_to_a_code_page(tmp_path):
    # Windows writes redirected output in the system's code page (cp1252 in much of the world): the line naming a
    # Japanese song's stems raised UnicodeEncodeError, a traceback, and the songs after it were never separated.
    model = tiny_folder(tmp_path, "umx")
    for k, name in enumerate(("\u65e5\u672c\u306e\u6b4c.wav", "zz song.wav")):
        write(tmp_path / "songs" / name, 0.5, seed=k)
    code = ("import sys\nfrom openunmix_like.cli import umx_separate\n"
            "sys.argv = ['umx-separate', *sys.argv[1:]]\nsys.exit(umx_separate())")
    env = dict(os.environ, PYTHONIOENCODING="cp1252", PYTHONUTF8="0")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "songs"), "--model", str(model),
                           "--outdir", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["zz song", "\u65e5\u672c\u306e\u6b4c"]
    assert b"\\u65e5\\u672c\\u306e\\u6b4c.wav -> " in done.stdout


def test_outputs_that_differ_in_case_only_are_one_file_on_macos_and_windows(tmp_path, monkeypatch, capsys):
    # A/Intro.wav and B/intro.wav have the stems Intro/ and intro/: two folders on Linux, one on macOS and
    # Windows, where the second track then replaced the first's stems with --force (each reported written).
    model = tiny_folder(tmp_path, "umx")
    write(tmp_path / "A" / "Intro.wav", 0.5, seed=1)
    write(tmp_path / "B" / "intro.wav", 0.5, seed=2)
    argv = [str(tmp_path / "A"), str(tmp_path / "B"), "--model", str(model), "--outdir", str(tmp_path / "out"),
            "--device", "cpu", "--force", "--quiet"]
    monkeypatch.setattr(separate, "ignores_case", lambda folder: True)
    assert separate.main(argv) == 1
    error = capsys.readouterr().err
    assert (f"{tmp_path / 'B' / 'intro.wav'}: its output {tmp_path / 'out' / 'intro' / 'vocals.wav'} and "
            f"{tmp_path / 'out' / 'Intro' / 'vocals.wav'} of {tmp_path / 'A' / 'Intro.wav'} are one file") in error
    assert "does not tell names apart by case" in error and error.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Intro"]


def test_names_that_differ_in_case_are_two_files_on_linux(tmp_path):
    assert not separate.ignores_case(tmp_path / "not yet" / "out")
    model = tiny_folder(tmp_path, "umx")
    write(tmp_path / "A" / "Intro.wav", 0.5, seed=1)
    write(tmp_path / "B" / "intro.wav", 0.5, seed=2)
    assert separate.main([str(tmp_path / "A"), str(tmp_path / "B"), "--model", str(model), "--outdir",
                          str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Intro", "intro"]


WITHOUT_POSIX = """
import importlib, os, pkgutil, signal, sys
for name in ("fcntl", "resource", "pwd", "grp", "termios", "tty", "pty"):
    sys.modules[name] = None
for name in ("SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE"):
    delattr(signal, name)
for name in ("killpg", "getpgid", "setsid", "sched_getaffinity", "statvfs", "sync", "fork", "getuid", "getloadavg"):
    delattr(os, name)
import openunmix_like
from openunmix_like import cli
for found in pkgutil.walk_packages(openunmix_like.__path__, "openunmix_like."):
    importlib.import_module(found.name)
for command in cli.__all__[1:]:
    sys.argv = [command, "--help"]
    try:
        getattr(cli, command)()
    except SystemExit as exc:
        assert exc.code == 0, (command, exc.code)
"""


@pytest.mark.slow
def test_every_module_and_help_without_posix_only_modules_and_signals():
    # Windows has no fcntl, pwd, resource or termios, no SIGKILL/SIGHUP/SIGUSR1, no os.killpg or os.fork.
    done = subprocess.run([sys.executable, "-c", WITHOUT_POSIX], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("usage: umx-") == 7


def held_open(monkeypatch, suffix: str) -> None:
    """Replacing an existing file ending in ``suffix`` fails, as on Windows while a spreadsheet has it open."""
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(suffix) and os.path.exists(dst):
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_evaluation_results_open_in_a_spreadsheet_are_one_line(tmp_path, monkeypatch, capsys):
    # The second run over an evaluation folder whose results.csv is open in Excel ended in a traceback.
    from openunmix_like.cli.evaluate import main as evaluate_main

    make_tracks(tmp_path / "tracks", n=2, seconds=1.0)
    argv = ["--root", str(tmp_path / "tracks"), "--layout", "folder", "--oracle", "irm2", "--evaldir",
            str(tmp_path / "eval"), "--quiet"]
    assert evaluate_main(argv) == 0
    before = (tmp_path / "eval" / "results.csv").read_bytes()
    held_open(monkeypatch, "results.csv")
    capsys.readouterr()
    assert evaluate_main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"umx-evaluate: error: {tmp_path / 'eval' / 'results.csv'}: cannot be replaced (")
    assert "close it and run the same command again" in error.lower() and error.count("\n") == 1
    assert (tmp_path / "eval" / "results.csv").read_bytes() == before
    assert not [p.name for p in (tmp_path / "eval").iterdir() if ".partial" in p.name]


@pytest.mark.slow
def test_a_training_log_open_in_a_spreadsheet_does_not_stop_training(tmp_path, monkeypatch, caplog):
    # Excel on Windows holds an open CSV so that it cannot be replaced: at the next epoch the run stopped with
    # "cannot write ... free space or fix permissions", hours of training cut short by a log being looked at.
    from openunmix_like.cli.train import main as train_main

    root = tmp_path / "data"
    for split in ("train", "valid"):
        for name in ("vocals", "drums"):
            write(root / split / "t0" / f"{name}.wav", 1.0, seed=len(name) + (5 if split == "valid" else 0))
    held_open(monkeypatch, ".csv")
    out = tmp_path / "model"
    code = train_main(["--dataset", "trackfolder_fix", "--root", str(root), "--target", "vocals", "--target-file",
                       "vocals.wav", "--interferer-files", "drums.wav", "--output", str(out), "--epochs", "2",
                       "--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--batch-size", "2", "--seq-dur",
                       "0.5", "--sample-rate", "22050", "--quiet"])
    assert code == 0
    assert json.loads((out / "vocals.json").read_text())["epochs_trained"] == 2
    assert (out / "vocals.csv").read_text().count("\n") == 2  # the header and epoch 1, as the spreadsheet shows
    assert f"{out / 'vocals.csv'}: not updated after epoch 2" in caplog.text
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
