"""The prepared GPU-machine run, checked on the CPU: time limits, rates, the watcher, the tables.

scripts/device_session.py runs on a lent machine whose minutes are few; what can
go wrong without a GPU (a limit that leaves processes behind, a rate computed
over the wrong window, a table that drops a figure) is caught here.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import device_like_site  # noqa: E402
import gpu_benchmark  # noqa: E402
import gpu_catalogue  # noqa: E402
import processes  # noqa: E402

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")


def gone(pid: int, seconds: float = 5.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@needs_proc
def test_a_command_stopped_at_its_limit_takes_its_children_along():
    done = processes.run_bounded(["sh", "-c", "sleep 60 & echo $!; wait"], timeout=1.0)
    assert done.rc == "timeout" and done.timed_out and done.seconds < 10
    assert gone(int(done.tail.split()[0]))
    assert processes.session_members(done.pid) == []


@needs_proc
def test_what_a_finished_command_leaves_running_is_ended():
    lines = []
    done = processes.run_bounded(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], timeout=30, on_line=lines.append)
    assert done.rc == 0 and not done.timed_out
    assert gone(int(lines[0]))


def test_rates_are_read_between_the_first_and_the_last_track():
    row = gpu_catalogue.rates([16.0, 10.0, 12.0, 14.0], started=0.0, track_seconds=180.0)
    assert row["tracks_done"] == 4 and row["audio_h"] == 0.2
    assert row["first_done_after_s"] == 10.0
    assert row["h_per_h_steady"] == 90.0  # 3 tracks of 180 s in the 6 s after the first
    assert row["h_per_h_from_start"] == 45.0  # 4 tracks in 16 s
    assert row["window"] == [10.0, 16.0]
    assert "h_per_h_steady" not in gpu_catalogue.rates([5.0, 6.0], 0.0, 180.0)


def test_the_watcher_notes_finished_tracks_and_frees_their_stems(tmp_path):
    for name in ("track0000", "track0001", "track0002"):
        for stem in gpu_catalogue.STEMS[: 3 if name == "track0002" else 4]:
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{stem}.wav").write_bytes(b"x")
    watcher = gpu_catalogue.Finished(tmp_path, ray=False)
    watcher.scan()
    assert set(watcher.times) == {"track0000", "track0001"}  # track0002 lacks a stem: not finished
    assert (tmp_path / "track0000" / "vocals.wav").is_file()  # kept, to compare the engines' stems
    assert not any((tmp_path / "track0001").iterdir())
    ray = gpu_catalogue.Finished(tmp_path, ray=True)
    ray.scan()
    assert ray.times == {}  # Ray's engine: finished only once _done.json is written
    (tmp_path / "track0002" / "_done.json").write_text("{}")
    ray.scan()
    assert set(ray.times) == {"track0002"}


def test_run_options_by_name_or_spelled_out():
    assert gpu_catalogue.run_options(None, {"ray": "--engine ray"}) == {"ray": "--engine ray"}
    assert gpu_catalogue.run_options(["ray", "two=--engine ray --actors 2"], {"ray": "--engine ray"}) == {
        "ray": "--engine ray", "two": "--engine ray --actors 2"}
    with pytest.raises(SystemExit, match="unknown"):
        gpu_catalogue.run_options(["unknown"], {"ray": "--engine ray"})


def test_the_gpu_section_shows_both_goals():
    results = {
        "device": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0",
        "separate_60s": {"ours_whole": {"s": 0.9}, "ours_batched": {"s": 0.2, "peak_gb": 1.5},
                         "ours_one_segment_at_a_time": {"s": 0.5}, "reference": {"s": 1.0, "peak_gb": 2.0},
                         "batched_vs_one_at_a_time_over_peak": 2e-7, "ours_whole_vs_reference_over_peak": 3e-7,
                         "ours_batched_bf16": {"s": 0.125}, "bf16_vs_fp32_over_peak": 4e-3},
        "separate_3600s_batched": {"s": 9.0, "peak_gb": 1.6},
        "cli_start": {"audio_s": 1.0, "s": 4.0},
        "cli_600s": {"audio_s": 600, "s": 6.0, "x_real_time": 100.0, "gpu_busy_share": 0.5,
                     "gpu_memory_peak_mib": 3000, "rc": 0, "x_real_time_after_start": 300.0},
        "train_ours_preload_b256_bf16": {"options": "--batch-size 256", "samples_per_s": 1500.0,
                                         "data_loading_share_history": [0.1, 0.02], "train_time_history": [1, 1]},
        "train_ours_preload_b16_fp32": {"options": "--batch-size 16", "samples_per_s": 250.0, "steps_per_epoch": 16,
                                        "train_loss_history": [2.0, 1.5], "valid_loss_history": [1.9, 1.4],
                                        "train_time_history": [1, 1]},
        "train_reference_b16": {"options": "--batch-size 16", "samples_per_s": 150.0, "steps_per_epoch": 16,
                                "train_loss_history": [2.1, 1.6], "valid_loss_history": [2.0, 1.5],
                                "train_time_history": [1, 1]},
        "train_ours_files_b16": {"options": "--preload off", "skipped": "3 s left of the time allowed"},
    }
    text = gpu_benchmark.markdown(results, "python3 scripts/device_session.py")
    assert "`python3 scripts/device_session.py`" in text
    assert "| 60s | 0.9 | 0.2 | 0.5 | 1.0 | 5.0x | 1.5 / 2.0 | 2.0e-07 | 3.0e-07 | 0.125 | 8.0x | 4.0e-03 |" in text
    assert "60 s: 1.5 GB, 3600 s: 1.6 GB" in text
    assert "after that fixed cost: 300.0x real time" in text
    assert "| ours_preload_b256_bf16 | `--batch-size 256` | 1500.0 | 10.0x | 2 % | 2 |" in text
    assert "n/a (3 s left of the time allowed)" in text
    assert "| 2 | 32 | 1.5000 | 1.6000 | 1.4000 | 1.5000 |" in text


def test_the_catalogue_table_names_a_failed_run():
    results = {"environment": {"cpus": 16}, "setup": {"track_s": 180.0}, "runs": {
        "ray": {"options": "--engine ray", "error": "RuntimeError: no Ray"},
        "local_jobs_4": {"options": "--engine local --jobs 4", "rc": "timeout", "tracks_done": 90,
                         "h_per_h_steady": 1200.0, "gpu_busy_share": 0.8}},
        "io_alone": {"decode_s": 0.05, "write_s": 0.4}, "separator_alone": {"s_per_track": 0.1, "h_per_h": 1800.0}}
    text = gpu_catalogue.markdown(results)
    assert "| ray | `--engine ray` | failed: RuntimeError: no Ray |" in text
    assert "| local_jobs_4 | `--engine local --jobs 4` | 90 (stopped at the cap) | 1200.0 | n/a | n/a | 0.8 |" in text
    assert "write 6400 h of audio per hour" in text  # 16 cores x 180 s / 0.45 s


def test_the_device_like_site_hides_a_module_as_if_absent(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(device_like_site.sitecustomize(["numpy"]))
    code = ("import importlib.util, json\n"
            "assert importlib.util.find_spec('numpy') is None\n"
            "try:\n    import numpy.linalg\nexcept ModuleNotFoundError:\n    print('hidden')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hidden"
