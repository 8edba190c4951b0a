"""The package used as a library by someone else's program (a notebook, a web service, a plug-in host): its calls
leave the process's global state as they found it. Checks of global state run in a subprocess of their own."""
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf
import torch

from helpers import music_like, tiny_folder, track_folders
from openunmix_like import Separator, separate

TESTS = Path(__file__).parent


def run_script(code: str, *args) -> dict:
    """Run ``code`` after :data:`SNAPSHOT` in a fresh interpreter (the tests folder importable); returns the JSON
    it prints last."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + SNAPSHOT
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def folder(tmp_path):
    return tiny_folder(tmp_path, "umx")


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, music_like(2.0, 22050).T, 22050)
    return path


# What the calls below must leave alone, read without changing it.
SNAPSHOT = """
import json, logging, multiprocessing, os, signal, sys, threading, warnings
import torch

def snapshot():
    return {
        "start_method": multiprocessing.get_start_method(allow_none=True),
        "threads": sorted(t.name for t in threading.enumerate()),
        "root_logger": [logging.getLogger().level, len(logging.getLogger().handlers)],
        "warnings": len(warnings.filters),
        "signals": {s.name: repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)},
        "sys_path": list(sys.path), "cwd": os.getcwd(),
        "torch": [torch.get_num_threads(), str(torch.get_default_dtype()), torch.is_grad_enabled()],
        "rng": torch.random.get_rng_state().tolist(),
    }
"""


def test_import_changes_no_global_state():
    state = run_script("""
        import importlib, os
        before, env = snapshot(), dict(os.environ)
        for name in ("openunmix_like", "openunmix_like.separator", "openunmix_like.inference", "openunmix_like.stems",
                     "openunmix_like.streaming", "openunmix_like.training"):
            importlib.import_module(name)
        from openunmix_like import KERNEL_CACHE_ENVS  # documented in docs/performance.md
        changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
        print(json.dumps({"before": before, "after": snapshot(), "env": changed, "documented": KERNEL_CACHE_ENVS}))
    """)
    assert state["after"] == state["before"]
    assert set(state["env"]) <= set(state["documented"])


def test_separating_without_a_bar_leaves_multiprocessing_and_threads_alone(folder, song, tmp_path):
    # tqdm makes a multiprocessing lock even for a disabled bar, which fixed the caller's start method:
    # multiprocessing.set_start_method("spawn") after a separate() call failed with "context has already been set".
    state = run_script("""
        from openunmix_like import Separator, separate, separate_file
        separator = Separator.from_pretrained(sys.argv[1])
        audio = 0.1 * torch.randn(2, 22050)
        before = snapshot()
        separate(audio, 22050, model=separator, segment=0.5, overlap=0.1)
        separate_file(sys.argv[2], sys.argv[3], separator)
        after = snapshot()
        multiprocessing.set_start_method("spawn")  # what the caller's own code may do next
        print(json.dumps({"before": before, "after": after}))
    """, folder, song, tmp_path / "out")
    before, after = state["before"], state["after"]
    assert after["start_method"] is None
    assert not [name for name in after["threads"] if name.startswith("tqdm")]
    after["threads"] = [name for name in after["threads"] if not name.startswith("umx-lane")]  # idle, reused
    assert after == before


def test_loading_a_model_leaves_the_callers_random_draws(folder):
    # Building each target model drew its random initial weights (replaced at once by the file's) from torch's
    # global generator: a seeded notebook drew other numbers after loading a model than without.
    state = run_script("""
        import json, torch
        from openunmix_like import Separator, separate
        torch.manual_seed(0)
        alone = torch.rand(4).tolist()
        torch.manual_seed(0)
        Separator.from_pretrained(sys.argv[1])
        separate(0.1 * torch.ones(2, 4410), 22050, model=sys.argv[1])
        print(json.dumps({"alone": alone, "after_loading": torch.rand(4).tolist()}))
    """, folder)
    assert state["after_loading"] == state["alone"]


@pytest.mark.slow
def test_training_leaves_the_callers_state_and_closes_its_logs(tmp_path):
    # A run seeds torch's generator (weights, dropout): the caller's draws after run() were the run's. Its
    # TensorBoard writer stayed open (a thread and an event file) after each run() of a notebook or a sweep.
    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    state = run_script("""
        from openunmix_like.training import TrainConfig, run
        cfg = TrainConfig(dataset="trackfolder_fix", root=sys.argv[1], target_file="vocals.wav",
                          interferer_files=["drums.wav"], output=sys.argv[2], epochs=1, batch_size=2, seq_dur=0.5,
                          hidden_size=8, nfft=512, nhop=128, sample_rate=22050, quiet=True, seed=3)
        torch.manual_seed(0)
        alone = torch.rand(4).tolist()
        torch.manual_seed(0)
        before = snapshot()
        run(cfg)
        after = snapshot()
        print(json.dumps({"before": before, "after": after, "alone": alone, "after_run": torch.rand(4).tolist()}))
    """, root, tmp_path / "model")
    assert state["after_run"] == state["alone"]
    before, after = state["before"], state["after"]
    assert after["start_method"] is None  # quiet: no tqdm bar
    assert after["threads"] == before["threads"]  # TensorBoard's writer thread ended (where it is installed)
    assert {k: after[k] for k in ("root_logger", "signals", "sys_path", "cwd", "torch")} == \
        {k: before[k] for k in ("root_logger", "signals", "sys_path", "cwd", "torch")}


def test_one_separator_from_several_threads_equals_one_call_at_a_time(folder):
    # A web service shares one loaded separator between its request threads.
    separator = Separator.from_pretrained(folder, precision="fp32")
    generator = torch.Generator().manual_seed(1)
    inputs = [0.1 * torch.randn(2, n, generator=generator) for n in (11025, 22050, 33075, 44100)]
    alone = [separate(x, 22050, model=separator, segment=0.5, overlap=0.1) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: separate(x, 22050, model=separator, segment=0.5, overlap=0.1),
                                 inputs * 2))
    for k, stems in enumerate(together):
        for name, expected in alone[k % len(inputs)].items():
            assert torch.equal(stems[name], expected), (k, name)


def test_a_dataset_folder_that_cannot_be_used_is_the_packages_error(tmp_path):
    # errors.py: every error a user's files cause is an OpenUnmixLikeError; a program training through the Python
    # API that caught those let a missing or empty dataset folder through (DatasetError was a ValueError only).
    from openunmix_like.errors import OpenUnmixLikeError
    from openunmix_like.training import TrainConfig, run

    cfg = TrainConfig(dataset="trackfolder_fix", root=str(tmp_path / "nowhere"), target_file="vocals.wav",
                      output=str(tmp_path / "model"), quiet=True)
    with pytest.raises(OpenUnmixLikeError, match="nowhere/train: missing") as caught:
        run(cfg)
    assert isinstance(caught.value, ValueError)  # as before, for code written against it
