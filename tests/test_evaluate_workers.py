"""umx-evaluate --cores N: memory bounded by the jobs in flight, and a scoring process that dies costs one track.

The scheduling is tested with a pool this file controls (a job finishes only when the scheduler waits for it, as
when scoring is much slower than estimating), and once end to end with real processes, one killed by SIGKILL.
"""
import argparse
import os
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch

from helpers import fake_scoring, make_tracks
from openunmix_like.cli import evaluate as cli
from openunmix_like.evaluate import Track

pytest.importorskip("museval")
DIED = "the process scoring it died, twice (likely out of memory); give fewer --cores or score shorter excerpts"


class Job(Future):
    """A scoring job of :class:`SlowPool`: it runs when the scheduler waits for it, or asks for its result."""

    def __init__(self, pool, fn, args):
        super().__init__()
        self.pool, self.fn, self.args = pool, fn, args

    def result(self, timeout=None):
        if not self.done():
            self.pool.run(self)
        return super().result(timeout)


class SlowPool:
    """A pool of two scoring processes whose jobs finish only when waited for, dying (as a ProcessPoolExecutor's
    do: every job in flight fails, and every submit until it is started again) on the tracks named in ``kills``
    (name -> how many times)."""

    slots = 3

    def __init__(self, kills=None):
        self.kills = dict(kills or {})
        self.generation = 0
        self.broken = False
        self.jobs = []
        self.runs = []  # (track, jobs in flight as it started, itself included)
        self.most = 0

    def in_flight(self):
        return [job for job in self.jobs if not job.done()]

    def submit(self, fn, *args):
        if self.broken:
            raise BrokenProcessPool("A child process terminated abruptly, the process pool is not usable anymore")
        job = Job(self, fn, args)
        self.jobs.append(job)
        self.most = max(self.most, len(self.in_flight()))
        return job

    def wait(self, futures):
        self.run(next(job for job in self.jobs if job in futures and not job.done()))

    def restart(self, generation):
        if generation == self.generation:
            self.generation += 1
            self.broken = False

    def run(self, job):
        name = job.args[0]
        self.runs.append((name, len(self.in_flight())))
        if self.kills.get(name):
            self.kills[name] -= 1
            self.broken = True
            for lost in self.in_flight():
                lost.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
            return
        job.set_result(job.fn(*job.args))


def tracks(n, in_flight, batch, pool):
    """``n`` silent one-second tracks; ``in_flight`` gets the jobs submitted and not written at each estimate."""
    def estimate(track):
        submitted = {job.args[0] for job in pool.jobs}  # a track submitted again counts once
        in_flight.append(len(submitted) - batch.written - len(batch.failed))
        return {"vocals": torch.zeros(2, 100)}

    method = cli.Method(estimate, {"model_sha256": None, "settings": {}}, ["vocals"])
    return [Track(f"t{k}", 100, torch.zeros(2, 100), {"vocals": torch.zeros(2, 100)}) for k in range(n)], method


def batch_in(tmp_path, quiet=False):
    args = argparse.Namespace(outdir=None, quiet=quiet, verbose=False)
    return cli.Batch(args, tmp_path / "eval", {"M": {}})


def test_the_next_track_is_estimated_only_once_a_scoring_slot_is_free(tmp_path, monkeypatch, capsys):
    """Was: every track was estimated and queued at once, its references and estimates held until scored."""
    fake_scoring(monkeypatch)
    pool, in_flight, batch = SlowPool(), [], batch_in(tmp_path)
    songs, method = tracks(8, in_flight, batch, pool)
    cli.score_tracks(songs, {"M": method}, batch, pool)
    assert len(in_flight) == 8 and max(in_flight) == pool.slots - 1, in_flight
    assert pool.most == pool.slots  # and the processes are kept busy
    assert sorted(batch.done["M"]) == [f"t{k}" for k in range(8)] and not batch.failed
    assert sorted(p.name for p in (tmp_path / "eval" / "M").iterdir()) == [f"t{k}.json" for k in range(8)]
    assert capsys.readouterr().err.splitlines() == [f"M: t{k}" for k in range(8)]


def test_jobs_lost_with_a_dead_process_are_scored_again_alone_and_a_track_killing_it_twice_fails(tmp_path,
                                                                                                monkeypatch, capsys):
    """Was: one process dying failed every track after it (BrokenProcessPool on each job and each submit)."""
    fake_scoring(monkeypatch)
    pool, in_flight, batch = SlowPool(kills={"t1": 1, "t4": 2}), [], batch_in(tmp_path, quiet=True)
    songs, method = tracks(7, in_flight, batch, pool)
    cli.score_tracks(songs, {"M": method}, batch, pool)
    assert sorted(batch.done["M"]) == ["t0", "t1", "t2", "t3", "t5", "t6"] and batch.failed == ["t4 (M)"]
    assert max(in_flight) <= pool.slots - 1
    runs = {}
    for name, together in pool.runs:
        runs.setdefault(name, []).append(together)
    assert runs["t1"][1:] == [1] and runs["t4"][1:] == [1]  # the second try of a track runs alone
    assert all(len(r) <= 2 for r in runs.values()), runs
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("umx-evaluate: error: ")]
    assert errors == ["umx-evaluate: error: t4 (M): " + DIED], err


KILLER = '''
import os
import signal
import sys

from openunmix_like import evaluate as ev
from openunmix_like.cli import evaluate as cli


def score_track(name, refs, ests, rate):
    """BSSEval, but the process dies of SIGKILL (as of the OOM killer) on song2 always and on song1 once."""
    if name in ("song1", "song2"):
        try:
            os.close(os.open(os.path.join(os.environ["KILLED"], name), os.O_CREAT | os.O_EXCL))
            first = True
        except FileExistsError:
            first = False
        if first or name == "song2":
            os.kill(os.getpid(), signal.SIGKILL)
    return ev.score_track(name, refs, ests, rate)


if __name__ == "__main__":  # the spawned processes load this file too, for score_track, but do not run this
    cli.score_track = score_track
    sys.exit(cli.main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_a_scoring_process_killed_mid_run_costs_its_own_track_only(tmp_path):
    root = make_tracks(tmp_path / "data", n=4, seconds=1.0)
    script, killed, evaldir = tmp_path / "killer.py", tmp_path / "killed", tmp_path / "eval"
    script.write_text(textwrap.dedent(KILLER))
    killed.mkdir()
    result = subprocess.run([sys.executable, str(script), "--root", str(root), "--layout", "folder", "--oracle",
                             "irm2", "--nfft", "512", "--nhop", "128", "--evaldir", str(evaldir), "--cores", "2",
                             "--quiet"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KILLED": str(killed)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (evaldir / "IRM2").iterdir()) == ["song0.json", "song1.json", "song3.json"]
    assert (evaldir / "results.md").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("umx-evaluate: error: ")]
    assert errors == [f"umx-evaluate: error: {root / 'song2'} (IRM2): " + DIED], result.stderr


def test_scoring_processes_run_without_torch():
    # Each --cores process scores NumPy arrays: torch there would cost seconds to import and about 180 MB of the
    # memory the track's arrays need.
    import numpy as np

    from openunmix_like.evaluate import score_track

    rng = np.random.default_rng(0)
    refs = {name: rng.standard_normal((3 * 8000, 2)).astype(np.float32) for name in ("vocals", "drums")}
    ests = {name: ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32) for name, ref in refs.items()}
    pool = cli.Workers(1)
    try:
        record = pool.submit(score_track, "t", refs, ests, 8000).result(timeout=120)
        assert pool.submit(eval, "'torch' in __import__('sys').modules").result(timeout=60) is False
    finally:
        pool.executor.shutdown()
    assert record == score_track("t", refs, ests, 8000)  # what the scoring in this process gives
