"""``umx-separate --engine ray`` on a Ray cluster of several nodes, all on this machine.

Each test starts its own cluster (``ray.cluster_utils.Cluster``, a head node without CPUs, so that every
task and actor runs on the worker nodes the test adds) and stops it.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import ray_head, wait_for_port, write
from openunmix_like.catalogue import engine, records
from openunmix_like.cli.separate import main

NAMES = ("vocals", "drums", "bass", "other")
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """A head node with no CPUs, this process connected to it as the driver; yields the ``Cluster``."""
    ray = pytest.importorskip("ray")

    with ray_head(num_cpus=0) as head:
        try:
            ray.init(address=head.address, log_to_driver=False, logging_level=logging.WARNING)
            yield head
        finally:
            ray.shutdown()


def make_inputs(folder: Path, n: int, seconds: float, corrupt: bool = False) -> Path:
    for k in range(n):
        write(folder / f"t{k}.wav", seconds, seed=k)
    if corrupt:
            (folder / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all" * 8)
    return folder


def done_tracks(out: Path) -> set:
    return {p.parent.name for p in out.glob(f"*/{records.DONE_NAME}")}


def in_thread(argv: list) -> tuple:
    """``main(argv)`` in a daemon thread (one that hangs does not hold up the tests' end); its result dict."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(rc=main(argv)), daemon=True)
    thread.start()
    return thread, result


def test_a_lost_nodes_share_of_the_run_is_redone_on_the_nodes_left(tmp_path, model_dir, cluster, capsys,
                                                                     monkeypatch):
    """A node holding an actor and tracks is lost mid-run: the placement group cannot be placed again on the
    node left (it needs the whole cluster), so the run reserves anew there and finishes every track, with
    stems equal to ``--engine local``'s. It used to wait forever, without a word."""
    import ray

    monkeypatch.setattr(engine, "LOST_NODE_WAIT_S", 2.0, raising=False)  # the run gives up on it sooner
    kept = cluster.add_node(num_cpus=2)
    lost = cluster.add_node(num_cpus=1)  # 3 CPUs: 2 actors and 2 decode/write slots, over both nodes
    cluster.wait_for_nodes()
    inputs = make_inputs(tmp_path / "in", 8, seconds=6.0, corrupt=True)
    common = [str(inputs), "--model", str(model_dir()), "--bits", "32", "--quiet"]
    thread, result = in_thread(common + ["--engine", "ray", "--outdir", str(tmp_path / "ray")])
    deadline = time.monotonic() + 120
    while not done_tracks(tmp_path / "ray"):
        assert thread.is_alive() and time.monotonic() < deadline, "no track finished"
        time.sleep(0.02)
    (group,) = [g for g in ray.util.placement_group_table().values() if g["state"] == "CREATED"]
    assert set(group["bundles_to_node_id"].values()) == {kept.node_id, lost.node_id}
    finished_before = done_tracks(tmp_path / "ray")
    cluster.remove_node(lost)
    thread.join(timeout=150)
    assert not thread.is_alive(), "the run waits forever for the lost node's part of its placement group"
    assert len(finished_before) < 8 and result == {"rc": 1}
    err = capsys.readouterr().err
    assert "umx-separate: a Ray node holding part of this run was lost" in err and "1 track failed" in err
    assert done_tracks(tmp_path / "ray") == {f"t{k}" for k in range(8)}
    failures = records.read_failures((tmp_path / "ray" / records.FAILURES_NAME).read_bytes())
    assert [(Path(f["path"]).name, f["stage"]) for f in failures] == [("bad.wav", "decode")]
    assert main(common + ["--outdir", str(tmp_path / "local")]) == 1
    for k in range(8):
        theirs = {name: sf.read(tmp_path / "local" / f"t{k}" / f"{name}.wav")[0] for name in NAMES}
        peak = max(np.abs(s).max() for s in theirs.values())
        record = json.loads((tmp_path / "ray" / f"t{k}" / records.DONE_NAME).read_text())
        for name in NAMES:
            ours = tmp_path / "ray" / f"t{k}" / f"{name}.wav"
            assert np.abs(sf.read(ours)[0] - theirs[name]).max() <= 1e-6 * peak, (k, name)
            assert record["stems"][name]["sha256"] == records.file_sha256(ours)
    # The last node with CPUs lost: the nodes left (the head) cannot hold the run, which says so and stops.
    thread, result = in_thread(common + ["--engine", "ray", "--outdir", str(tmp_path / "again")])
    while not done_tracks(tmp_path / "again"):
        assert thread.is_alive() and time.monotonic() < deadline + 120, "no track finished"
        time.sleep(0.02)
    cluster.remove_node(kept)
    thread.join(timeout=150)
    assert not thread.is_alive() and result == {"rc": 1}
    assert ("umx-separate: error: a Ray node holding part of this run was lost and the nodes left cannot hold the "
            "run (1 actors x --actor-cpus 1 leave no room") in capsys.readouterr().err


def test_folders_a_node_does_not_share_are_named_in_one_line(tmp_path, model_dir):
    """A cluster set up as docs/catalogue.md says (``ray start --head``, ``ray start --address``, then
    ``umx-separate --address``) whose worker node has folders of its own (tmpfs mounted over them in the
    node's own mount namespace, as local disks on another machine). An ``--outdir`` of its own: it used to
    write every stem there while the driver said "3 done" and found none; now the run stops at once. Inputs
    it does not see: each track's failure says so."""
    ray = pytest.importorskip("ray")
    import socket

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to give a node a folder of its own")
    inputs = make_inputs(tmp_path / "in", 3, seconds=1.0)
    hidden = make_inputs(tmp_path / "hidden", 2, seconds=1.0)  # inputs the node does not see
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "home").mkdir()  # no stored token: the head runs without authentication
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path / "home")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    folder = tempfile.mkdtemp(prefix="umx-ray-")  # Ray's socket paths must stay short
    start = [ray_cli, "start", "--disable-usage-stats", "--block"]
    # The head runs nothing (no CPUs): every task and actor runs on the node with a folder of its own.
    nodes = [subprocess.Popen(start + ["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                                       f"--temp-dir={folder}"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for_port(port, nodes[0])
        # As root, a mount namespace; otherwise in a user namespace too, where this user may mount.
        private = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
        node = " ".join(f"'{arg}'" for arg in start + [f"--address=127.0.0.1:{port}", "--num-cpus=2"])
        nodes.append(subprocess.Popen(private + ["sh", "-c", f"mount -t tmpfs tmpfs '{out}' && mount -t tmpfs tmpfs "
                                                         f"'{hidden}' && exec {node}"],
                                      env=env, start_new_session=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False, logging_level=logging.WARNING)
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert nodes[1].poll() is None, nodes[1].stdout.read()
            assert time.monotonic() < deadline, "the node did not join"
            time.sleep(0.1)
        ray.shutdown()
        # The driver as a user runs it, in a process of its own: everything it prints is seen here.
        def separate(source: Path, outdir: Path):
            return subprocess.run([sys.executable, "-m", "openunmix_like.cli.separate", str(source), "--engine", "ray",
                                   "--address", f"127.0.0.1:{port}", "--model", model, "--niter", "0", "--quiet",
                                   "--outdir", str(outdir)], env=env, capture_output=True, text=True, timeout=240)

        model = str(model_dir())
        driver = separate(inputs, out)
        unseen = separate(hidden, tmp_path / "shared")
    finally:
        ray.shutdown()
        for process in reversed(nodes):
            os.killpg(process.pid, signal.SIGKILL)  # each node's processes share its session
            process.communicate(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
    assert driver.returncode == 1, driver.stderr[-3000:]
    # The writes that failed after the first are not shown as Ray's "Unhandled error" tracebacks.
    assert "Unhandled error" not in driver.stderr and "Traceback" not in driver.stderr, driver.stderr[-3000:]
    assert [line for line in driver.stderr.splitlines() if line.startswith("umx-separate:")] == [
        f"umx-separate: error: --outdir {out} is not shared with node {socket.gethostname()}: its stems would land "
        "on that node's own disk; use a folder every node mounts, or an s3:// URL"]
    assert list(out.iterdir()) == []  # nothing half-done, no marker left behind
    assert unseen.returncode == 1, unseen.stderr[-3000:]
    failures = records.read_failures((tmp_path / "shared" / records.FAILURES_NAME).read_bytes())
    assert sorted((Path(f["path"]).name, f["stage"]) for f in failures) == [("t0.wav", "decode"), ("t1.wav", "decode")]
    for failure in failures:
        assert failure["reason"] == (
            f"{failure['path']}: decode failed: not found on node {socket.gethostname()}, though the driver found it "
            "when the run started: moved since, or not shared with that node (inputs must be reachable from every "
            "node: use a folder every node mounts, or an s3:// URL)")
