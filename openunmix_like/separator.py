"""The end-to-end separator: STFT, per-target models, Wiener filter, inverse STFT."""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import numbers
import operator
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import filtering
from .architectures import COMPLEX, MAGNITUDE, domain_of
from .architectures.umx import OpenUnmix
from .lanes import run_in_lanes
from .level import check_input_level
from .naming import aggregate_estimates, check_aggregate  # noqa: F401 - part of this module's interface
from .settings import PRECISIONS, WienerSettings  # noqa: F401 - part of this module's interface
from .transforms import ISTFT, STFT, ComplexNorm

log = logging.getLogger(__name__)

# With one target, EM shares the input between the target and a hidden residual, so no output is louder
# than the input: above this share of the input's energy, the part of the estimate it drops is reported.
LOUDER_THAN_INPUT = 0.1
# What ``auto`` means on the CPU, overriding the processor check (``fp32`` or ``bf16``).
AUTO_PRECISION_ENV = "UMX_AUTO_PRECISION"


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this processor multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16,
    read from ``/proc/cpuinfo``); elsewhere bfloat16 arithmetic would be emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: Union[str, torch.device] = "cpu") -> str:
    """``precision`` with ``auto`` resolved for ``device``: ``bf16`` on a CPU with native
    bfloat16 arithmetic, where it separates faster for no measurable SDR (see
    docs/benchmarks.md), ``fp32`` elsewhere (GPUs included). The environment variable
    ``UMX_AUTO_PRECISION`` (``fp32`` or ``bf16``) overrides the processor check on CPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type != "cpu":
        return "fp32"
    chosen = os.environ.get(AUTO_PRECISION_ENV, "").strip()
    if chosen:
        if chosen not in ("fp32", "bf16"):
            raise ValueError(f"{AUTO_PRECISION_ENV}={chosen!r}: set it to fp32 or bf16, or unset it")
        return chosen
    return "bf16" if cpu_has_native_bf16() else "fp32"


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a :class:`torch.device` this machine has.

    Raises:
        ValueError: not a device name, or a CUDA/MPS device the machine lacks; one line saying what to use.
    """
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r}: not a torch device; use 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise ValueError(f"device {device!r}: this machine has {found}; use 'cpu' or an existing GPU")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use 'cpu'")
    return chosen


def wiener_settings(wiener: Optional[WienerSettings], options: Mapping) -> WienerSettings:
    """``wiener`` (default :class:`WienerSettings()`) with the keyword ``options`` applied over it.

    Raises:
        TypeError: ``wiener`` is not a :class:`WienerSettings`, or an option is not one of its fields.
    """
    if wiener is not None and not isinstance(wiener, WienerSettings):
        raise TypeError(f"wiener must be a WienerSettings, got {wiener!r}; pass niter, softmask, residual "
                        "and wiener_win_len as keywords")
    check_wiener_keywords(options)
    return (wiener or WienerSettings()).replace(**options)


def check_wiener_keywords(options: Mapping) -> None:
    """Refuse keywords that are not Wiener settings with a ``TypeError``, naming our spelling of the reference
    package's keywords (``rate``, ``model_str_or_path``, ``aggregate_dict``, ...)."""
    fields = [f.name for f in dataclasses.fields(WienerSettings)]
    unknown = next((name for name in options if name not in fields), None)
    if unknown is not None:
        ours = REFERENCE_KEYWORDS.get(unknown)
        raise TypeError(f"unexpected keyword argument {unknown!r}"
                        + (f" (the reference package's): {ours}" if ours else
                           f"; the Wiener settings are {', '.join(fields)}"))


# Keywords of the reference package's functions (openunmix.predict.separate, utils.load_separator) that
# reach the Wiener settings here, and what to write instead (docs/migrating.md).
REFERENCE_KEYWORDS = {
    "rate": "write sample_rate=",
    "model_str_or_path": "write model= (separate, separate_file) or the first argument (Separator.from_pretrained)",
    "aggregate_dict": "write aggregate=",
    "separator": "pass the Separator as model=",
    "filterbank": "leave it out: the STFT is torch.stft, the reference's 'torch' (umx-export writes ONNX)",
    "pretrained": "leave it out: models load with their weights (random weights: Separator(OpenUnmix(...)))",
}


class Separator(nn.Module):
    """Separates audio into targets with one spectrogram model per target.

    Args:
        target_models: target name -> model. A model maps magnitudes
            ``(nb_samples, nb_channels, nb_bins, nb_frames)`` to the same shape,
            unless its ``domain`` attribute says ``complex`` (STFT as real/imaginary
            pairs ``(..., nb_bins, nb_frames, 2)`` to the same) or ``waveform``
            (``(nb_samples, nb_channels, nb_timesteps)`` to the same); see
            :mod:`openunmix_like.architectures`. The Wiener filter always works on
            magnitude estimates: the magnitude of a complex estimate, or of the
            STFT of a waveform estimate, with the STFT of this separator.
        wiener: the Wiener filter's settings (default :class:`WienerSettings()`).
        sample_rate: rate the models were trained at, in Hz.
        n_fft: STFT length.
        n_hop: STFT hop.
        nb_channels: channels the models take (1 or 2).
        precision: ``fp32``, or ``bf16`` for the target models' matrix products
            (faster where bfloat16 units exist: recent CPUs and GPUs). Open-Unmix
            models are kept as converted copies (:meth:`OpenUnmix.cast_products`:
            dense and LSTM weights in bfloat16, normalisation and the mask float32);
            other architectures run under bfloat16 autocast. The STFT, the Wiener
            filter and the output stay float32. ``auto``: see
            :func:`resolve_precision`, for the device the models are on. Fixed at
            construction.
        input_level: the models' training level in dBFS RMS (:mod:`openunmix_like.level`): whole
            tracks further than 3 dB from it are turned to within 3 dB of it before separating, the
            stems turned back by the same gain (level matching); ``None`` (the default here)
            separates tracks at their own level, as the reference package does.
        **wiener_options: ``niter``, ``softmask``, ``residual`` or
            ``wiener_win_len``, overriding those of ``wiener`` (the reference
            package's keyword names).

    Audio with another channel count than ``nb_channels`` is adapted: stereo
    models see mono input's magnitude on both channels, and the mean of their
    two output channels filters the mono mixture; inputs with more than two
    channels are separated as independent pairs (1-2, 3-4, ...; a last odd
    channel as mono). Mono models see the mean magnitude of all channels and
    filter every channel.

    Example:
        >>> separator = Separator(models, niter=0, n_fft=4096, n_hop=1024)
        >>> separator.wiener
        WienerSettings(niter=0, softmask=False, residual=None, wiener_win_len=300)
    """

    def __init__(
        self,
        target_models: Mapping[str, nn.Module],
        wiener: Optional[WienerSettings] = None,
        *,
        sample_rate: float = 44100,
        n_fft: int = 4096,
        n_hop: int = 1024,
        nb_channels: int = 2,
        precision: str = "fp32",
        input_level: Optional[float] = None,
        **wiener_options,
    ):
        super().__init__()
        if not isinstance(target_models, Mapping):
            raise TypeError(f"target_models must map target names to models, e.g. {{'vocals': model}}, "
                            f"got {type(target_models).__name__}")
        device = next((p.device for m in target_models.values() for p in m.parameters()), "cpu")
        precision = resolve_precision(precision, device)
        wiener = wiener_settings(wiener, wiener_options)
        if not target_models:
            raise ValueError("a Separator needs at least one target model")
        if wiener.residual is not None and wiener.residual in target_models:
            raise ValueError(f"residual name {wiener.residual!r} is already a model target")
        _check_stft_settings(sample_rate, n_fft, n_hop, nb_channels)
        for name, model in target_models.items():
            bins = getattr(model, "nb_bins", n_fft // 2 + 1)
            if bins != n_fft // 2 + 1:
                raise ValueError(f"target {name!r} has {bins} bins but n_fft={n_fft} gives {n_fft // 2 + 1}")
            channels = getattr(model, "nb_channels", nb_channels)
            if channels != nb_channels:
                raise ValueError(f"target {name!r} takes {channels} channel(s) but nb_channels={nb_channels}; "
                                 f"pass nb_channels={channels}")
        self.target_models = nn.ModuleDict(dict(target_models))
        self.wiener = wiener
        # An int where the rate is a whole number of Hz (44100, not 44100.0).
        self.sample_rate = int(sample_rate) if float(sample_rate).is_integer() else float(sample_rate)
        self.n_fft = n_fft
        self.n_hop = n_hop
        self.nb_channels = nb_channels
        self._precision = precision
        self.input_level = input_level
        if precision == "bf16":
            for name, model in list(self.target_models.items()):
                if hasattr(model, "cast_products") and model.product_dtype != torch.bfloat16:
                    # A converted copy: the caller's model stays as it was.
                    self.target_models[name] = copy.deepcopy(model).cast_products(torch.bfloat16)
        self.stft = STFT(n_fft, n_hop)
        self.istft = ISTFT(n_fft, n_hop)
        self.complexnorm = ComplexNorm(mono=nb_channels == 1)
        self._reported_louder = False  # the hidden residual's loss is reported once per separator
        if wiener.softmask and len(target_models) == 1:
            log.warning(f"softmask with one target ({next(iter(target_models))!r}): the ratio mask of a single "
                        "source is 1 wherever its estimate is above 0, so the target comes out as the input (after EM, "
                        "close to it) whatever the model estimates; use softmask=False (umx-separate without "
                        "--softmask)")

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the target models' arithmetic, chosen at construction."""
        return self._precision

    @property
    def input_level(self) -> Optional[float]:
        """The level (dBFS RMS, :mod:`openunmix_like.level`) a track further than 3 dB from is turned to
        within 3 dB of before separating, the stems turned back by the same gain; ``None``: tracks are
        separated at their own level.

        Whole tracks are matched by :func:`~openunmix_like.inference.separate` and the functions that
        separate tracks; :meth:`forward` separates what it is given, as the reference package does.
        """
        return self._input_level

    @input_level.setter
    def input_level(self, value: Optional[float]) -> None:
        self._input_level = check_input_level(value)

    @property
    def niter(self) -> int:
        return self.wiener.niter

    @property
    def softmask(self) -> bool:
        return self.wiener.softmask

    @property
    def residual(self) -> Optional[str]:
        return self.wiener.residual

    @property
    def wiener_win_len(self) -> Optional[int]:
        return self.wiener.wiener_win_len

    @property
    def target_names(self) -> List[str]:
        """Names of the estimates, in the order of the targets axis of :meth:`forward`."""
        names = list(self.target_models)
        return names + [self.residual] if self.residual else names

    def freeze(self) -> "Separator":
        """Inference mode for every model: no gradients, eval batch norm."""
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def forward(self, audio: Tensor, frame_offset: Union[int, Sequence[int]] = 0) -> Tensor:
        """Separate a batch of signals at ``self.sample_rate``.

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` float tensor on the models'
                device; any channel count and length. Another float dtype is converted to the
                separator's (float32 unless it was converted with ``.to(dtype)``).
            frame_offset: when ``audio`` is a segment of a longer signal starting
                at sample ``frame_offset * n_hop``, its Wiener windows line up with
                those of the whole signal; one offset for all samples, or one per
                sample (a batch of segments from different places).

        Returns:
            ``(nb_samples, nb_targets, nb_channels, nb_timesteps)`` in the separator's
            dtype, targets in the order of :attr:`target_names`. Gradients flow back
            to ``audio`` and the models' parameters where autograd is on.

        Raises:
            TypeError: ``audio`` is not a float tensor.
            ValueError: a wrong shape, no channels, another device than the models',
                NaN or infinite samples, or frame offsets that do not fit the batch.
        """
        audio = self._checked_input(audio)
        nb_samples, nb_channels, nb_timesteps = audio.shape
        offsets = _frame_offsets(frame_offset, nb_samples)
        if nb_samples == 0:
            return audio.new_zeros((0, len(self.target_names), nb_channels, nb_timesteps))
        if self.nb_channels == 1 or nb_channels <= 2:
            return self._separate_padded(audio, offsets)
        # More than two channels: independent stereo pairs batched together, a last odd one as mono.
        even = nb_channels - nb_channels % 2
        pairs = audio[:, :even].reshape(nb_samples * even // 2, 2, nb_timesteps)
        est = self._separate_padded(pairs, [f for f in offsets for _ in range(even // 2)])
        est = est.reshape(nb_samples, even // 2, est.shape[1], 2, nb_timesteps)
        est = est.permute(0, 2, 1, 3, 4).reshape(nb_samples, est.shape[2], even, nb_timesteps)
        if even < nb_channels:
            est = torch.cat([est, self._separate_padded(audio[:, even:], offsets)], dim=2)
        return est

    def _checked_input(self, audio) -> Tensor:
        """``audio`` in the dtype the separator computes in (:attr:`stft`'s window), or a one-line
        ``TypeError``/``ValueError`` saying what cannot be separated and what to pass instead."""
        if not isinstance(audio, Tensor):
            raise TypeError(f"audio must be a torch.Tensor (nb_samples, nb_channels, nb_timesteps), got "
                            f"{type(audio).__name__}; convert it with torch.as_tensor, or use "
                            "openunmix_like.separate, which takes arrays at any rate")
        if audio.dim() != 3:
            raise ValueError(f"audio must be (nb_samples, nb_channels, nb_timesteps), got {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise TypeError(f"audio has dtype {audio.dtype}; pass float samples in [-1, 1] (integer PCM divided "
                            "by its full scale, e.g. audio.float() / 32768 for int16)")
        if audio.shape[1] == 0:
            raise ValueError(f"audio has shape {tuple(audio.shape)}: no channels to separate")
        # The models' device (the window buffer may stay behind: training validates models on a GPU
        # through a Separator built around them); models without parameters take any device.
        device = next((p.device for p in self.target_models.parameters()), audio.device)
        if audio.device != device:
            raise ValueError(f"audio is on {audio.device} but the separator's models are on {device}; "
                             f"move the audio with audio.to({str(device)!r})")
        dtype = self.stft.window.dtype
        if dtype not in (torch.float32, torch.float64) and device.type == "cpu":
            raise TypeError(f"this separator computes in {dtype}, which the CPU's FFT lacks; convert it back with "
                            "separator.float() (precision='bf16' runs the models' products in bfloat16)")
        if not bool(torch.isfinite(audio.detach().sum())) and not bool(torch.isfinite(audio).all()):
            raise ValueError("audio holds NaN or infinite samples, which would make every estimate NaN; replace "
                             "them first (e.g. torch.nan_to_num)")
        return audio.to(dtype)

    def _separate_padded(self, audio: Tensor, offsets: List[int]) -> Tensor:
        """Separate, zero-padding inputs too short for the reflect-padded STFT."""
        nb_timesteps = audio.shape[-1]
        if nb_timesteps >= self.n_fft:
            return self._separate(audio, offsets)
        padded = nn.functional.pad(audio, (0, self.n_fft - nb_timesteps))
        return self._separate(padded, offsets)[..., :nb_timesteps]

    def _separate(self, audio: Tensor, offsets: List[int]) -> Tensor:
        mix_stft = self.stft(audio)
        mag = self.complexnorm(mix_stft)
        mono_in_stereo_model = self.nb_channels == 2 and audio.shape[1] == 1
        if mono_in_stereo_model:
            mag = mag.expand(-1, 2, -1, -1)
        # Per target, frame-major (nb_frames, nb_samples, nb_channels, nb_bins), as the models
        # compute them, or the means to decode any run of those frames.
        frame_major = self._model_outputs(mag, mix_stft, audio)
        estimates = [self._filter_and_invert([out[:, i] for out in frame_major], mix_stft[i], offsets[i],
                                             audio.shape[-1], downmix=mono_in_stereo_model)
                     for i in range(audio.shape[0])]
        return estimates[0][None] if len(estimates) == 1 else torch.stack(estimates)

    def _model_outputs(self, mag: Tensor, mix_stft: Tensor, audio: Tensor) -> list:
        """Every target model's magnitude estimate, frame-major ``(nb_frames, nb_samples,
        nb_channels, nb_bins)``.

        On the CPU, Open-Unmix models run the whole signal only through the part that needs
        it (:meth:`OpenUnmix.encode`) and their frame-by-frame rest is decoded one Wiener window
        at a time (:class:`_DecodedOnDemand`): no spectrogram-sized output per target, which
        would be fresh, page-faulting memory on every call; the targets' encoders run side by
        side in lanes of one intra-op thread (:mod:`openunmix_like.lanes`). On CUDA each model runs on a stream
        of its own: a model's LSTM walks its frames one after the other, leaving most of the GPU
        idle, so the targets' models overlap instead of queueing. Same arithmetic either way."""
        models = list(self.target_models.values())
        if not mag.is_cuda or len(models) == 1:
            if all(self._decodes_windows(model, mag) for model in models):
                # Encoding is mostly an LSTM walking its frames, which a second intra-op thread
                # barely speeds up: the targets' models run side by side instead (same values).
                return run_in_lanes(lambda model: self._frame_major(model, mag, mix_stft, audio), models)
            return [self._frame_major(model, mag, mix_stft, audio) for model in models]
        main = torch.cuda.current_stream(mag.device)
        streams = side_streams(mag.device, len(models))
        outputs = []
        for model, stream in zip(models, streams):
            stream.wait_stream(main)  # the inputs are ready
            with torch.cuda.stream(stream):
                outputs.append(self._magnitude(model, mag, mix_stft, audio))
        for stream, out in zip(streams, outputs):
            main.wait_stream(stream)
            out.record_stream(main)  # made on a side stream, read on the main one: not reused before that
        return [out.permute(3, 0, 1, 2) for out in outputs]

    def _frame_major(self, model: nn.Module, mag: Tensor, mix_stft: Tensor, audio: Tensor):
        """A target model's estimate, frame-major, or the means to decode it (see :meth:`_model_outputs`)."""
        if not self._decodes_windows(model, mag):
            return self._magnitude(model, mag, mix_stft, audio).permute(3, 0, 1, 2)
        mix = mag.permute(3, 0, 1, 2)
        return _DecodedOnDemand(model, model.encode(mix), mix)

    def _decodes_windows(self, model: nn.Module, mag: Tensor) -> bool:
        return (isinstance(model, OpenUnmix) and mag.device.type == "cpu" and not torch.is_grad_enabled()
                and (self.precision == "fp32" or model.product_dtype == torch.bfloat16))

    def _magnitude(self, model: nn.Module, mag: Tensor, mix_stft: Tensor, audio: Tensor) -> Tensor:
        """A target model's magnitude estimate ``(nb_samples, nb_channels, nb_bins, nb_frames)``,
        float32 whatever :attr:`precision` the model ran in."""
        if self.precision == "fp32" or getattr(model, "product_dtype", None) == torch.bfloat16:
            return self._model_magnitude(model, mag, mix_stft, audio)
        with torch.autocast(device_type=mag.device.type, dtype=torch.bfloat16):
            return self._model_magnitude(model, mag, mix_stft, audio).float()

    def _model_magnitude(self, model: nn.Module, mag: Tensor, mix_stft: Tensor, audio: Tensor) -> Tensor:
        """A target model's magnitude estimate ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Magnitude models get the mixture magnitude; complex models the mixture STFT
        (as real/imaginary pairs), and their estimate's magnitude is used; waveform
        models the audio, and the magnitude of their output's STFT is used. Mono
        models of these two domains get the channels' mean (the downmix), stereo
        models get mono input on both channels.
        """
        domain = domain_of(model)
        if domain == MAGNITUDE:
            return model(mag)
        signal = mix_stft if domain == COMPLEX else audio
        if self.nb_channels == 1 and signal.shape[1] > 1:
            signal = signal.mean(dim=1, keepdim=True)
        elif self.nb_channels == 2 and signal.shape[1] == 1:
            signal = signal.expand(-1, 2, *signal.shape[2:])
        if domain == COMPLEX:
            est = torch.view_as_complex(model(torch.view_as_real(signal)).float().contiguous())
            return est.abs()
        return self.stft(model(signal).float()).abs()

    def _filter_and_invert(self, spectrograms: Sequence[Tensor], mix_stft: Tensor, frame_offset: int, length: int,
                           downmix: bool = False) -> Tensor:
        """Wiener filter and inverse STFT of one sample, one filter window at a time.

        Args:
            spectrograms: per target, frame-major magnitudes ``(nb_frames, {1, nb_channels}, nb_bins)``,
                or a :class:`_DecodedOnDemand` that decodes the frames asked for; the targets are
                stacked one window at a time, which copies (or decodes) a window rather than the
                whole signal.
            mix_stft: complex ``(nb_channels, nb_bins, nb_frames)``.
            downmix: filter with the mean of each target's channels (a stereo model's estimate
                of a mono mixture: a duplicated stereo pair would make the mixture covariance
                singular).

        Returns:
            ``(nb_targets [+ residual], nb_channels, length)``.
        """
        nb_targets = len(spectrograms)
        nb_channels, nb_bins, nb_frames = mix_stft.shape
        # EM needs two sources: with one target and no residual, use a hidden residual.
        residual = self.residual is not None or (self.niter > 0 and nb_targets == 1)
        keep = nb_targets + (self.residual is not None)
        win = self.wiener_win_len or nb_frames
        windows = filtering.window_bounds(nb_frames, win, frame_offset)
        dtype = spectrograms[0].dtype
        audio = self.istft.allocate((keep, nb_channels), nb_frames, dtype, mix_stft.device, length)
        scratch = None
        if nb_channels == 2:
            # One buffer for every window's estimates instead of fresh memory each time.
            longest = max(b - a for a, b in windows)
            scratch = torch.empty((nb_targets + residual, 2, longest, nb_bins, 2), dtype=dtype,
                                  device=mix_stft.device)
        # With a hidden residual, what of the estimate EM cannot keep: (energy above the input, input energy).
        louder = [0.0, 0.0] if (residual and self.residual is None and not self.softmask
                                  and not self._reported_louder) else None
        for a, b in windows:
            # (frames, targets, channels, bins), viewed as (targets, channels, bins, frames).
            spec = torch.stack([s[a:b] for s in spectrograms], dim=1)
            if downmix:
                spec = spec.mean(dim=2, keepdim=True)
            if louder is not None:
                _add_louder_than_input(louder, spec[:, 0], mix_stft[..., a:b])
            y = filtering.wiener_fast(spec.permute(1, 2, 3, 0), mix_stft[..., a:b], iterations=self.niter,
                                      softmask=self.softmask, residual=residual, out=scratch)
            self.istft.accumulate(y[:keep], audio, a)
        if louder is not None and louder[0] > LOUDER_THAN_INPUT * louder[1]:
            self._report_louder(louder[0] / max(louder[1], 1e-30))
        return self.istft.finish(audio, nb_frames, length)

    def _report_louder(self, share: float) -> None:
        """Say, once, that EM with a hidden residual dropped the part of a one-target estimate above the input."""
        self._reported_louder = True
        log.warning(f"target {next(iter(self.target_models))!r} estimates more than its input holds (by "
                    f"{100 * share:.0f}% of the input's energy), which the Wiener filter's EM (niter={self.niter}) "
                    "drops: with one target it shares the input with a hidden residual, so nothing comes out louder "
                    "than the input. For a model that processes its input (gain, EQ, a chain learnt from "
                    "raw/processed pairs), separate with niter=0 and no softmask (umx-separate --niter 0, or "
                    "\"niter\": 0 in the model folder's separator.json, as umx-train --dataset aligned writes it)")

    def to_dict(self, estimates: Tensor, aggregate: Optional[Mapping[str, Sequence[str]]] = None, *,
                aggregate_dict: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, Tensor]:
        """Name the estimates, optionally summing groups of targets.

        Args:
            estimates: ``(nb_samples, nb_targets, nb_channels, nb_timesteps)`` from :meth:`forward`.
            aggregate: new name -> list of target names to sum, e.g.
                ``{"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}``;
                when given, only these names are returned.
            aggregate_dict: the reference package's name for ``aggregate`` (give one of them).

        Returns:
            name -> ``(nb_samples, nb_channels, nb_timesteps)``.
        """
        names = self.target_names
        if not isinstance(estimates, Tensor) or estimates.dim() != 4 or estimates.shape[1] != len(names):
            shape = tuple(estimates.shape) if isinstance(estimates, Tensor) else type(estimates).__name__
            raise ValueError(f"estimates must be (nb_samples, {len(names)} targets, nb_channels, nb_timesteps) as "
                             f"forward returns them ({', '.join(names)}), got {shape}")
        if aggregate_dict is not None:
            if aggregate is not None:
                raise TypeError("to_dict takes aggregate or aggregate_dict (the reference's name), not both")
            aggregate = aggregate_dict
        named = {name: estimates[:, j] for j, name in enumerate(names)}
        return aggregate_estimates(named, aggregate)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Union[str, Path, None] = None,
        targets: Optional[Sequence[str]] = None,
        device: Union[str, torch.device] = "cpu",
        wiener: Optional[WienerSettings] = None,
        progress: bool = True,
        precision: str = "auto",
        input_level: Union[str, float, None] = "auto",
        **wiener_options,
    ) -> "Separator":
        """Load a separator by name, from a model folder, or the bundled default.

        Args:
            name_or_path: ``None`` for the bundled model (offline); ``umxhq``,
                ``umx``, ``umxl`` or ``umxse`` for published weights (downloaded
                once into the cache, see :mod:`openunmix_like.pretrained`); or a
                folder with ``separator.json`` and per-target weights.
            targets: subset of the model's targets (default: all), or one target's name.
            device: torch device; one the machine lacks is a ``ValueError``.
            wiener, **wiener_options: the Wiener filter's settings, see :class:`Separator`. Given neither
                ``niter`` (``None`` is the same) nor ``wiener``, ``niter`` is the model folder's own, its
                ``separator.json``'s (``umx-train --dataset aligned`` writes 0), else 1.
            progress: show download progress bars.
            precision: ``fp32`` or ``bf16`` for the target models, see :class:`Separator`;
                ``auto`` (the default) resolves for ``device`` (:func:`resolve_precision`):
                bfloat16 on CPUs with bfloat16 units, float32 elsewhere. Use ``fp32`` for
                results equal to the reference package's to float rounding.
            input_level: ``auto`` (the default): the level the model was trained at, where its folder
                records one (``input_level`` in ``separator.json``; the bundled model's is -16.5 dBFS), else
                none; a level in dBFS RMS; or ``None`` to separate tracks at their own level (with ``fp32``,
                results equal to the reference package's). See :attr:`input_level`.

        Example:
            >>> separator = Separator.from_pretrained()                      # bundled, offline
            >>> separator = Separator.from_pretrained("umxhq", niter=0)      # downloads once
        """
        from .pretrained import load_models, own_input_level, own_niter

        if "niter" in wiener_options and wiener_options["niter"] is None:  # the model's own, as if left out
            del wiener_options["niter"]
        asks_own_niter = wiener is None and "niter" not in wiener_options
        wiener = wiener_settings(wiener, wiener_options)
        device = check_device(device)  # these before loading, which may download
        precision = resolve_precision(precision, device)
        if not (isinstance(input_level, str) and input_level == "auto"):
            input_level = check_input_level(input_level)
        models, settings = load_models(name_or_path, targets=targets, progress=progress)
        own = own_niter(name_or_path) if asks_own_niter else None
        if own is not None:
            wiener = wiener.replace(niter=own)
        if precision == "bf16":  # these models are ours: convert them rather than copies
            models = {name: m.cast_products(torch.bfloat16) if hasattr(m, "cast_products") else m
                      for name, m in models.items()}
        if isinstance(input_level, str):
            input_level = own_input_level(name_or_path)
        separator = cls(models, wiener, sample_rate=settings.sample_rate, n_fft=settings.n_fft,
                        n_hop=settings.n_hop, nb_channels=settings.nb_channels, precision=precision,
                        input_level=input_level)
        return separator.freeze().to(device)


def _add_louder_than_input(totals: List[float], spec: Tensor, mix_stft: Tensor) -> None:
    """Add to ``totals`` the energy of a target's estimate above the input's magnitude (what a filter that
    cannot amplify drops) and the input's energy.

    Args:
        spec: frame-major magnitudes ``(nb_frames, {1, nb_channels}, nb_bins)``; one channel is compared
            with the channels' mean magnitude, which is what a mono model (or a downmix) estimated from.
        mix_stft: complex ``(nb_channels, nb_bins, nb_frames)``.
    """
    with torch.no_grad():
        mag = mix_stft.abs().transpose(0, 2).transpose(1, 2)  # (nb_frames, nb_channels, nb_bins)
        if spec.shape[1] == 1:
            mag = mag.mean(dim=1, keepdim=True)
        spec = spec.detach().to(mag.dtype)
        totals[0] += float((spec.square() - torch.minimum(spec, mag).square()).sum())
        totals[1] += float(mag.square().sum())


def _check_stft_settings(sample_rate: float, n_fft: int, n_hop: int, nb_channels: int) -> None:
    """Raise a one-line ``ValueError`` for settings no separator can work with."""
    def whole(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    try:
        rate = None if isinstance(sample_rate, bool) else float(sample_rate)
    except (TypeError, ValueError):
        rate = None
    if rate is None or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"sample_rate must be the models' rate in Hz, got {sample_rate!r}")
    if not whole(n_fft) or n_fft < 2:
        raise ValueError(f"n_fft must be a whole number of samples, at least 2, got {n_fft!r}")
    if not whole(n_hop) or not 0 < n_hop < n_fft:
        # A hop of n_fft or more leaves samples no window covers: the inverse STFT could not restore them.
        raise ValueError(f"n_hop must be a whole number of samples from 1 to n_fft - 1 ({n_fft - 1}), got {n_hop!r}")
    if nb_channels not in (1, 2) or isinstance(nb_channels, bool):
        raise ValueError(f"nb_channels must be 1 (mono models) or 2 (stereo models), got {nb_channels!r}")


def _frame_offsets(frame_offset, nb_samples: int) -> List[int]:
    """One frame offset per sample, from one offset or one per sample (see :meth:`Separator.forward`)."""
    try:
        offsets = [operator.index(frame_offset)] * nb_samples
    except TypeError:
        try:
            offsets = [operator.index(f) for f in frame_offset]
        except TypeError:
            raise TypeError(f"frame_offset must be a whole number of frames, or one per sample; got "
                            f"{frame_offset!r}") from None
    if len(offsets) != nb_samples:
        raise ValueError(f"{len(offsets)} frame offsets for {nb_samples} samples; give one, or one per sample")
    return offsets


@functools.lru_cache(maxsize=None)
def side_streams(device: torch.device, count: int) -> tuple:
    """``count`` CUDA streams on ``device`` for the target models, made once and reused by every call (and
    every separator and thread: each call orders its work on them with events, so sharing is safe).

    PyTorch's caching allocator gives a freed block back only to allocations on the stream that made it,
    and ``torch.cuda.Stream()`` takes the next of a pool of 32 streams in turn: new streams on every call
    would leave each call's model memory (gigabytes for a batch of long segments) unusable until the pool
    came round again, and the cache would grow until an allocation failed and emptied it."""
    return tuple(torch.cuda.Stream(device) for _ in range(count))


class _DecodedOnDemand:
    """An Open-Unmix model's frame-major estimate ``(nb_frames, nb_samples, nb_channels, nb_bins)``,
    held as the model's features. ``[:, i]`` selects sample ``i``, still held so; indexing that
    with a run of frames, ``[a:b]``, decodes just those frames: ``(b - a, nb_channels, nb_bins)``.

    Args:
        model: the model that encoded ``features``.
        features: from :meth:`OpenUnmix.encode`, ``(nb_frames, nb_samples, 2 * hidden_size)``.
        mix: the frame-major mixture magnitude the model saw.
        sample: the sample selected, if any.
    """

    def __init__(self, model: OpenUnmix, features: Tensor, mix: Tensor, sample: Optional[int] = None):
        self.model, self.features, self.mix, self.sample = model, features, mix, sample

    @property
    def dtype(self) -> torch.dtype:
        return self.mix.dtype  # what decoding gives, whatever the products' dtype

    def __getitem__(self, index) -> Union["_DecodedOnDemand", Tensor]:
        if self.sample is None:
            frames, sample = index
            if frames != slice(None) or not isinstance(sample, int):
                raise IndexError("select one sample first: [:, i]")
            return _DecodedOnDemand(self.model, self.features, self.mix, sample)
        i = self.sample
        return self.model.decode(self.features[index, i : i + 1], self.mix[index, i : i + 1])[:, 0]
