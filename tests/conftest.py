"""Shared fixtures: tiny random-weight model folders, generated audio, a temporary package cache, a local
Ray and an S3 server for the catalogue tests.

Plain helpers (paths, audio, tiny models) are in ``helpers.py``.
"""
import logging
import re
import signal

import pytest
import soundfile as sf

from helpers import SHARED, SHARED_ENV, make_models, music_like, ray_head, wait_until_ray_tasks_ended
from openunmix_like.modeldir import AudioSettings, save_target
from openunmix_like.pretrained import CACHE_ENV
from openunmix_like.separator import AUTO_PRECISION_ENV


@pytest.fixture
def model_dir(tmp_path):
    """Factory writing a tiny model folder in our layout; returns its path."""

    def make(name="model", sample_rate=44100, n_fft=512, nb_channels=2, **kw):
        folder = tmp_path / name
        for target, m in make_models(n_fft=n_fft, nb_channels=nb_channels, **kw).items():
            save_target(folder, target, m, AudioSettings(sample_rate, n_fft, n_fft // 4, nb_channels))
        return folder

    return make


@pytest.fixture
def wav_file(tmp_path):
    def make(name="song.wav", seconds=3.0, rate=44100, channels=2, subtype=None, seed=0):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, music_like(seconds, rate, channels, seed).T, rate, subtype=subtype)
        return path

    return make


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Point the package cache (and library caches) at session temporary folders, never ``~/.cache``.

    One folder for the whole session, so MUSDB excerpts are decoded at most once;
    command-line tools run in subprocesses inherit it through the environment.
    """
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(path))
        # Libraries' own caches too (matplotlib's font list, onnxruntime's device id).
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))
        # precision="auto" means float32 here whatever the processor, so results compared
        # to the reference or across runs do not depend on the machine (tests of bf16 say so).
        mp.setenv(AUTO_PRECISION_ENV, "fp32")
        yield path


def pytest_configure(config):
    """Ctrl+C back to Python's default when the run was started with it ignored.

    A shell without job control starts background commands (``nohup ... &``, some CI runners) with
    SIGINT ignored, and every command a test starts inherits that: the tests that press Ctrl+C in
    one would wait for an interruption that never comes. The commands themselves rightly keep an
    ignored SIGINT (a background job is not stopped by the terminal's Ctrl+C)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# require() skips with "<path> not available" when shared data is missing.
MISSING = re.compile(r"Skipped: (?P<path>.+) not available$")


def pytest_terminal_summary(terminalreporter):
    """Say in one line per missing path which tests were skipped for want of shared data."""
    counts = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        match = MISSING.match(reason)
        if match and match["path"].startswith(str(SHARED)):
            counts[match["path"]] = counts.get(match["path"], 0) + 1
    for path, n in counts.items():
        tests = f"{n} tests needing {path} were" if n > 1 else f"1 test needing {path} was"
        terminalreporter.write_line(f"{tests} skipped: {path} not found (set {SHARED_ENV} to the shared folder)",
                                    yellow=True)


@pytest.fixture(scope="module")
def _local_ray_nodes():
    """A local Ray head with 2 CPUs, started once for the test file that asks for it; yields its address.

    Only its processes live that long: each test connects a driver of its own (:func:`ray_cluster`), so
    the file's other tests find no Ray connected. Starting Ray took about 5 s a test; a driver takes 0.5 s.
    """
    pytest.importorskip("ray")
    with ray_head(num_cpus=2) as head:
        yield head.address


@pytest.fixture
def ray_cluster(_local_ray_nodes):
    """This process connected as a driver to a local Ray with 2 CPUs, for one test; yields its address (for
    drivers in other processes). No task or actor of an earlier test is left when it starts, nor of this
    one when it ends (drivers this test killed included)."""
    import ray

    wait_until_ray_tasks_ended()
    ray.init(address=_local_ray_nodes, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield _local_ray_nodes
    finally:
        ray.shutdown()
        wait_until_ray_tasks_ended()


@pytest.fixture
def s3_server():
    """moto's S3 server on 127.0.0.1 with an empty bucket; yields fsspec storage options for it."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://{host}:{port}",
                   "client_kwargs": {"region_name": "us-east-1"}}
        import boto3
        import requests

        # moto keeps its buckets for the whole process: start empty, whatever other tests stored.
        requests.post(f"{options['endpoint_url']}/moto-api/reset", timeout=10).raise_for_status()
        boto3.client("s3", endpoint_url=options["endpoint_url"], region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="catalogue")
        yield options
    finally:
        server.stop()
