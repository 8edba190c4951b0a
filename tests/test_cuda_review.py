"""CUDA-only failures caught on the CPU.

PyTorch's ``meta`` device stands in for a GPU: like a CUDA tensor, a meta tensor refuses
to be combined with a CPU tensor that is not a scalar, so code that creates a helper
tensor without ``device=`` fails here as it would on the GPU.
"""
from __future__ import annotations

import random
import types

import pytest
import torch

from openunmix_like import augment
from openunmix_like.training import checkpoint, distributed
from openunmix_like.training.context import EpochProgress


def test_meta_stands_in_for_another_device():
    with pytest.raises(RuntimeError):
        torch.ones(3, device="meta") * torch.ones(3)


@pytest.fixture
def istft_on_meta(monkeypatch):
    """torch.istft has no meta kernel: a stand-in of the right shape on the input's device."""
    def istft(spec, n_fft, hop_length, window=None, center=True, length=None):
        return torch.zeros(spec.shape[0], length, dtype=spec.real.dtype, device=spec.device)

    monkeypatch.setattr(torch, "istft", istft)


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_phase_vocoder_keeps_a_gpu_source_on_its_device(istft_on_meta, rate):
    # --preload on holds the sources on the GPU, where the source augmentations run: the
    # interpolation weights and bin frequencies must be made there too.
    audio = torch.zeros(2, 44100, device="meta")
    out = augment.phase_vocoder(audio, rate)
    assert out.device == audio.device
    assert out.shape == (2, round(44100 / rate))


def test_timestretch_and_pitchshift_keep_the_device(istft_on_meta, monkeypatch):
    import openunmix_like.audio as audio_module

    def resample(audio, orig_rate, new_rate):  # as the real one: NumPy inside, a CPU tensor out
        return torch.zeros(audio.shape[:-1] + (int(round(audio.shape[-1] * new_rate / orig_rate)),))

    monkeypatch.setattr(audio_module, "resample", resample)
    source = torch.zeros(2, 22050, device="meta")
    for name in ("timestretch", "pitchshift"):
        out = augment.AUGMENTATIONS[name](source, random.Random(0))
        assert out.device == source.device, name
        assert out.shape == source.shape, name


def test_device_rng_state_only_on_cuda(monkeypatch):
    assert checkpoint.device_rng_state(torch.device("cpu")) == {}
    saved = torch.arange(16, dtype=torch.uint8)
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device, state)))
    cuda = torch.device("cuda", 0)
    state = checkpoint.device_rng_state(cuda)
    assert state == {"cuda_rng_state": saved}
    progress = EpochProgress(rng_state=torch.get_rng_state(), **state)
    checkpoint.restore_device_rng_state(progress, cuda)
    assert calls[-1][:2] == ("set", cuda) and torch.equal(calls[-1][2], saved)
    # A step checkpoint of a CPU run, or of a version that did not save it: nothing to restore.
    calls.clear()
    checkpoint.restore_device_rng_state(EpochProgress(), cuda)
    checkpoint.restore_device_rng_state(progress, torch.device("cpu"))
    assert calls == []


def test_setup_distributed_selects_the_rank_gpu_before_nccl(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout: calls.append(("init", backend)))
    distributed.setup_distributed(torch.device("cuda", 1))
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]
    calls.clear()
    distributed.setup_distributed(torch.device("cpu"))
    assert calls == [("init", "gloo")]


@pytest.mark.parametrize("precision, device, scaled", [
    ("fp16", "cuda", True), ("bf16", "cuda", True), ("bf16", "cpu", False), ("fp32", "cuda", False),
    ("fp32", "cpu", False),
])
def test_bf16_on_cuda_scales_the_loss_as_its_lstms_run_in_float16(precision, device, scaled):
    import warnings

    from openunmix_like.training.factory import loss_scaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the scaler is made all the same
        scaler = loss_scaler(precision, torch.device(device))
    assert (scaler is not None) == scaled


def test_automatic_segment_batches_count_the_allocators_unused_memory_as_free(monkeypatch):
    """After a large forward, torch keeps its memory reserved; mem_get_info does not count it as free,
    so a warm-up and the call after it picked different batch sizes."""
    from openunmix_like.inference import auto_batch_segments

    class OnCuda:
        def parameters(self):
            yield types.SimpleNamespace(device=torch.device("cuda"))

    gb = 1e9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    fresh = auto_batch_segments(OnCuda(), 30.0)
    # The same device after a forward that left 20 GB reserved but unused (and 1 GB of models allocated).
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 21 * gb)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gb)
    assert fresh == auto_batch_segments(OnCuda(), 30.0) == int(0.25 * 40 * gb // 0.76e9)


def test_the_target_models_cuda_streams_are_made_once_and_reused(monkeypatch):
    """PyTorch's allocator reuses a freed block only on the stream that made it, and each new
    ``torch.cuda.Stream()`` is the next of a pool of 32: streams made on every call stranded each
    call's model memory (the three actors sharing a GPU in the catalogue benchmark ran out of it)."""
    import contextlib

    from helpers import make_models
    from openunmix_like import separator as separator_module

    made = []

    class Stream:  # what the separator uses of torch.cuda.Stream
        def __init__(self, device=None):
            made.append(self)

        def wait_stream(self, other):
            pass

    class OnGpu(torch.Tensor):  # takes the separator's CUDA branch, computes on the CPU
        @property
        def is_cuda(self):
            return True

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    main = types.SimpleNamespace(wait_stream=lambda stream: None)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    separator_module.side_streams.cache_clear()
    try:
        sep = separator_module.Separator(make_models(("vocals", "drums", "bass")), n_fft=512, n_hop=128).freeze()
        mag = torch.rand(1, 2, 257, 20).as_subclass(OnGpu)
        for _ in range(3):
            with torch.no_grad():
                outputs = sep._model_outputs(mag, None, None)
            assert [tuple(o.shape) for o in outputs] == [(20, 1, 2, 257)] * 3
        assert len(made) == 3  # one per target, for every call
    finally:
        separator_module.side_streams.cache_clear()


def test_the_weight_average_packs_its_lstm_weights_for_cudnn(monkeypatch):
    """``copy.deepcopy`` gives every LSTM weight its own memory; cuDNN wants them in one block and
    otherwise repacks them on every call of the average model (each validation with --ema)."""
    from helpers import make_models
    from openunmix_like.training.context import WeightAverage

    flattened = []
    real = torch.nn.LSTM.flatten_parameters
    monkeypatch.setattr(torch.nn.LSTM, "flatten_parameters", lambda self: flattened.append(self) or real(self))
    model = make_models(("vocals",))["vocals"]
    flattened.clear()  # moving a model packs its weights too
    average = WeightAverage(model, 0.99)
    assert average.model.lstm in flattened and model.lstm not in flattened
