"""Child processes started by the package leave Ctrl+C to the process that started them, from their first
instruction: a worker still importing its modules must not die of a Ctrl+C on the user's terminal."""
import signal
import subprocess
import sys
import threading
import time

from openunmix_like.processes import children_ignore_ctrl_c

SHOW = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"


def test_a_child_started_in_the_block_ignores_ctrl_c_from_its_start_and_the_parent_gets_it_back():
    before = signal.getsignal(signal.SIGINT)
    with children_ignore_ctrl_c():
        inside = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, check=True).stdout
    after = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, check=True).stdout
    assert (inside.strip(), after.strip()) == ("True", "False")
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_changes_nothing():
    seen = []

    def run():
        with children_ignore_ctrl_c():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)] and seen[0] is not signal.SIG_IGN


def test_ctrl_c_on_umx_web_is_one_line_not_its_workers_tracebacks(tmp_path):
    import os

    import psutil

    server = subprocess.Popen([sys.executable, "-m", "openunmix_like.cli.web", "--port", "0", "--jobs-dir",
                               str(tmp_path / "jobs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # a terminal's process group: Ctrl+C reaches every process
    try:
        parent = psutil.Process(server.pid)
        for _ in range(600):  # the separation worker started (at most a minute)
            commands = [" ".join(c.cmdline()) for c in parent.children(recursive=True)]
            if any("spawn_main" in c and "resource_tracker" not in c for c in commands) or server.poll() is not None:
                break
            time.sleep(0.1)
        assert server.poll() is None
        os.killpg(server.pid, signal.SIGINT)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_pools_of_umx_synth_and_umx_evaluate_start_their_workers_with_ctrl_c_ignored(monkeypatch, tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    from openunmix_like.cli import evaluate as evaluate_cli
    from openunmix_like.synth import corpus

    seen = []

    def submit(self, fn, *args, **kwargs):  # where a pool starts its workers
        seen.append(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        raise RuntimeError("not run")

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    jobs = corpus.plan_jobs(str(tmp_path / "corpus"), {"train": 2}, seed=0, duration=1.0)
    try:
        list(corpus.generate(jobs, workers=2))
    except RuntimeError:
        pass
    pool = ProcessPoolExecutor(1)
    track = type("Track", (), {"name": "t", "path": None})()
    batch = type("Batch", (), {"done": {"m": set()}, "args": None, "fail": lambda self, where, exc: None})()
    monkeypatch.setattr(evaluate_cli, "scoring_job", lambda *a: ())
    evaluate_cli.score_tracks([track], {"m": None}, batch, pool)
    pool.shutdown()
    assert seen == [True, True] and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def test_a_web_worker_stopped_in_a_job_leaves_no_leaked_semaphore_warning(tmp_path, model_dir):
    import soundfile as sf

    from helpers import music_like, post_web_job, web_server

    song = tmp_path / "song.wav"
    sf.write(song, music_like(70.0, 44100, 2).T, 44100)  # three segments: progress shows between them
    with web_server(tmp_path / "jobs", model_dir()) as (process, url):
        session, job = post_web_job(url, song, targets="vocals")
        for _ in range(1200):  # polling the job: its progress bar (and the bar's lock) exists once it moved
            state = session.get(f"{url}/api/jobs/{job}").json()
            if state["progress"] > 0 or state["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert state["status"] in ("running", "done"), state
        process.send_signal(signal.SIGINT)  # the server stops its worker, in the job or idle after it
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    assert "leaked" not in out and "Traceback" not in out, out
