"""Temporary files: where they go (TMPDIR), that every one is removed after a failure, an interrupt or (at the next
run) a SIGKILL, and that a temporary folder too full or unusable is one line naming it and saying to set TMPDIR.

A full folder is a real one: a tmpfs of 1 MB mounted for the test (root only; skipped, saying so, elsewhere).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import soundfile as sf
import torch

from helpers import music_like
from openunmix_like import audio, storage
from openunmix_like.audio import AudioSource
from openunmix_like.catalogue.stages import Options, Track, store
from openunmix_like.cli import separate as separate_cli
from openunmix_like.errors import AudioError, OpenUnmixLikeError
from openunmix_like.fileio import HOST_TAG

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")


def leftovers(folder):
    return sorted(os.listdir(folder))


def write_song(path, seconds, rate=44100):
    sf.write(path, music_like(seconds, rate).T, rate)
    return path


def mp3_of(tmp_path, name, seconds):
    """An mp3 of ``seconds`` of stereo at 44.1 kHz (decoded to 353 kB a second of float32)."""
    wav = write_song(tmp_path / f"{name}.source.wav", seconds)
    mp3 = tmp_path / f"{name}.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), str(mp3)], check=True)
    wav.unlink()
    return mp3


@pytest.fixture
def tmpdir_here(tmp_path, monkeypatch):
    """A fresh, empty temporary folder (``tempfile.tempdir``, as ``TMPDIR`` makes it) for the test."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of 1 MB mounted for the test; skipped where mounting is not allowed (not root, no mount)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a 1 MB tmpfs needs root (CI runs as root)")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# ---------------------------------------------------------------- removed after interrupts and kills


@needs_ffmpeg
@pytest.mark.parametrize("at", ["ffmpeg", "_frames_of", "opening the copy", "reading its header"])
def test_an_interrupt_while_ffmpeg_decodes_leaves_no_decoded_copy(tmp_path, tmpdir_here, monkeypatch, at):
    """Was: Ctrl+C (or SIGTERM as KeyboardInterrupt) in the main thread while ffmpeg decoded, as ``separate_file``
    and training do, left the decoded copy in TMPDIR (212 MB for a 10-minute mp3)."""
    song = mp3_of(tmp_path, "song", 1.0)
    if at == "ffmpeg":  # ffmpeg is the second program run, after ffprobe; stopped once it has written the copy
        run, calls = subprocess.run, []

        def interrupted(cmd, *args, **kwargs):
            calls.append(cmd)
            result = run(cmd, *args, **kwargs)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(audio.subprocess, "run", interrupted)
    elif at == "opening the copy":
        opened, copies = sf.SoundFile, []

        def interrupted(file, *args, **kwargs):  # the copy is opened by sf.info (its length), then to be read
            if os.fsdecode(file).startswith(str(tmpdir_here)):
                copies.append(file)
                if len(copies) == 2:
                    raise KeyboardInterrupt
            return opened(file, *args, **kwargs)

        monkeypatch.setattr(sf, "SoundFile", interrupted)
    else:
        def interrupted(*args):
            assert leftovers(tmpdir_here)  # the copy is there
            raise KeyboardInterrupt

        monkeypatch.setattr(audio, "_frames_of" if at == "_frames_of" else "channel_map", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AudioSource(song)
    assert leftovers(tmpdir_here) == []


@needs_ffmpeg
def test_a_killed_runs_decoded_copy_is_removed_by_the_next_decode(tmp_path, tmpdir_here):
    """A SIGKILL (the out-of-memory killer) cannot clean up; the copy it leaves is removed at the next decode
    on this host, and only a dead process's: a running one's copy and another host's are kept."""
    song = mp3_of(tmp_path, "song", 1.0)
    code = f"import os, signal\nfrom openunmix_like.audio import AudioSource\nAudioSource({str(song)!r})\n" \
           "os.kill(os.getpid(), signal.SIGKILL)\n"
    killed = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, TMPDIR=str(tmpdir_here)))
    assert killed.wait(120) == -signal.SIGKILL
    left = leftovers(tmpdir_here)
    assert len(left) == 1 and left[0].startswith(f"openunmix-like-{killed.pid}-{HOST_TAG}-"), left
    running = tmpdir_here / f"openunmix-like-{os.getpid()}-{HOST_TAG}-abc.wav"
    elsewhere = tmpdir_here / "openunmix-like-1-00000000-abc.wav"
    running.touch()
    elsewhere.touch()
    with AudioSource(song) as source:
        assert source.nb_frames == 44100
    assert leftovers(tmpdir_here) == sorted([running.name, elsewhere.name])


# ---------------------------------------------------------------- full or unusable temporary folder


@needs_ffmpeg
def test_a_full_temporary_folder_is_one_line_naming_it_and_the_batch_goes_on(tmp_path, model_dir, small_tmpfs,
                                                                            monkeypatch, capsys):
    """Was: `long.mp3: cannot decode it, the file is corrupt or not audio (Error writing trailer of
    /tmp/...wav: No space left on device); re-export or re-download it`."""
    monkeypatch.setattr(tempfile, "tempdir", str(small_tmpfs))
    long_mp3 = mp3_of(tmp_path, "long", 6.0)  # 2 MB decoded
    short = write_song(tmp_path / "short.wav", 0.5)
    out = tmp_path / "out"
    code = separate_cli.main([str(long_mp3), str(short), "--model", str(model_dir()), "--outdir", str(out),
                              "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [f"umx-separate: error: {long_mp3}: cannot decode it: no room for its decoded copy "
                                f"(about 2 MB) in the temporary folder {small_tmpfs}; free space there or set "
                                "TMPDIR to a folder with more room"]
    assert sorted(p.name for p in (out / "short").iterdir()) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert not (out / "long").exists()
    assert leftovers(small_tmpfs) == []


def test_a_full_output_folder_is_disk_full_not_a_system_error(tmp_path, model_dir, small_tmpfs, capsys):
    """libsndfile says only "System error." when the disk fills: was `vocals.wav: cannot write (System error.);
    check the output folder is writable`, not the documented line."""
    song = write_song(tmp_path / "song.wav", 2.0)  # 700 kB a stem as float32 partials: more than 1 MB together
    code = separate_cli.main([str(song), "--model", str(model_dir()), "--outdir", str(small_tmpfs / "out"),
                              "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1 and "song/" in err
    assert ": disk full while writing; free space and run again" in err
    assert leftovers(small_tmpfs) == []


@pytest.fixture
def no_temporary_folder(tmp_path, monkeypatch):
    """No usable temporary folder, as in a container with a read-only root and no TMPDIR: every candidate
    Python tries is a file, not a folder."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(blocked)])
    with pytest.raises(FileNotFoundError):
        tempfile.gettempdir()


@needs_ffmpeg
def test_no_usable_temporary_folder_is_one_line_and_mp3_stems_need_none(tmp_path, model_dir, no_temporary_folder,
                                                                       capsys):
    """Was: `song.mp3: unexpected FileNotFoundError: [Errno 2] No usable temporary directory found in [...]`; and
    mp3 stems of a wav failed with `vocals.mp3: cannot write (...); check the output folder is writable`, since the
    encoder's messages went to a file in the temporary folder."""
    song = mp3_of(tmp_path, "song", 0.5)
    with pytest.raises(AudioError, match=r"song\.mp3: cannot decode it: no writable temporary folder \(.*\); set "
                                         r"TMPDIR to a folder with room$"):
        AudioSource(song)
    wav = write_song(tmp_path / "plain.wav", 0.5)
    out = tmp_path / "out"
    assert separate_cli.main([str(wav), "--model", str(model_dir()), "--outdir", str(out), "--ext", "mp3",
                              "--quiet"]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(out / "plain")) == ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]


def test_a_download_into_a_full_temporary_folder_names_it(tmp_path, small_tmpfs, monkeypatch):
    """Was (--engine ray, a URL input): `cannot download ([Errno 28] No space left on device); check the URL and
    credentials`."""
    pytest.importorskip("fsspec")
    monkeypatch.setattr(tempfile, "tempdir", str(small_tmpfs))
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 << 20))
    with pytest.raises(OpenUnmixLikeError, match=rf"^file://{big}: cannot download it: no room for its copy in the "
                                                 rf"temporary folder {small_tmpfs}; free space there or set TMPDIR"):
        with storage.local_copy(f"file://{big}"):
            pass
    assert leftovers(small_tmpfs) == []


def test_stems_for_object_storage_with_a_full_temporary_folder_name_it(tmp_path, small_tmpfs, monkeypatch):
    """Stems bound for a URL are written in the temporary folder first. Was (--engine ray, --outdir s3://...):
    `/tmp/umx-stems-x/drums.wav: cannot write (System error.); check the output folder is writable`."""
    pytest.importorskip("fsspec")
    monkeypatch.setattr(tempfile, "tempdir", str(small_tmpfs))
    track = Track("song.wav", "song", 0, {"vocals": "memory://out/song/vocals.wav"}, "memory://out/song/_done.json")
    options = Options(0.0, None, None, 0.0, None, False, None, "wav", 16, "rescale", "model", "0" * 64, {})
    chunks = [torch.zeros(1, 2, 44100) for _ in range(4)]  # 1.4 MB of float32 before encoding
    with pytest.raises(OpenUnmixLikeError, match=rf"^no room for the stems before their upload in the temporary "
                                                 rf"folder {small_tmpfs}; free space there or set TMPDIR"):
        store(track, iter(chunks), 44100, 2, ["vocals"], options)
    assert leftovers(small_tmpfs) == []


def test_onnx_export_without_a_usable_temporary_folder_is_one_line(tmp_path, model_dir, no_temporary_folder,
                                                                   capsys):
    """Was: a FileNotFoundError traceback (the exporter's log is held in a temporary file while it runs)."""
    pytest.importorskip("onnx")
    from openunmix_like.cli import export as export_cli

    out = tmp_path / "exported"
    assert export_cli.main([str(model_dir()), "--format", "onnx", "--outdir", str(out), "--no-check"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"umx-export: error: no writable temporary folder (No usable temporary directory "
                                f"found in ['{tmp_path / 'not-a-folder'}']); set TMPDIR to a folder with room"]
    assert not out.exists()
