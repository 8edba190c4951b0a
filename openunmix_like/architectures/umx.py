"""Open-Unmix (``umx``): dense layers around a 3-layer BLSTM that mask the mixture magnitude.

Stöter et al., "Open-Unmix - A Reference Implementation for Music Source
Separation", JOSS 2019. The parameter names and shapes equal those of the
published Open-Unmix weights, so their state dicts load unchanged, and every
constructor argument can be read back from a state dict
(:func:`config_from_state_dict`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from ..transforms import frames_per_chunk

# Entries found in weights published with Open-Unmix 1.0 that hold no parameter.
LEGACY_KEYS = ("stft.window", "transform.0.window", "sample_rate")


@dataclasses.dataclass(frozen=True)
class OpenUnmixConfig:
    """Everything needed to rebuild an :class:`OpenUnmix` model.

    Args:
        nb_bins: one-sided STFT bins, ``n_fft // 2 + 1``.
        nb_channels: audio channels the model sees (1 or 2).
        hidden_size: width of the dense bottleneck and of the LSTM output.
        nb_layers: LSTM layers.
        unidirectional: causal LSTM (for real-time use) instead of bidirectional.
        max_bin: bins below the bandwidth limit fed to the network; ``None``
            means all bins.
    """

    nb_bins: int = 2049
    nb_channels: int = 2
    hidden_size: int = 512
    nb_layers: int = 3
    unidirectional: bool = False
    max_bin: Optional[int] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "OpenUnmixConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown OpenUnmix arguments: {', '.join(unknown)}")
        return cls(**data)


class OpenUnmix(nn.Module):
    """Estimates one target's magnitude spectrogram from the mixture's.

    Args:
        nb_bins: one-sided STFT bins, ``n_fft // 2 + 1``.
        nb_channels: audio channels (1 or 2).
        hidden_size: width of the bottleneck.
        nb_layers: LSTM layers.
        unidirectional: use a causal LSTM.
        max_bin: bins fed to the network (bandwidth limit); defaults to all.

    Example:
        >>> model = OpenUnmix(nb_bins=2049, max_bin=1487)
        >>> model(torch.rand(1, 2, 2049, 10)).shape
        torch.Size([1, 2, 2049, 10])
    """

    domain = "magnitude"  # maps magnitudes to magnitudes (see openunmix_like.architectures)

    def __init__(
        self,
        nb_bins: int = 2049,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        max_bin: Optional[int] = None,
    ):
        super().__init__()
        max_bin = nb_bins if max_bin is None else max_bin
        if not 0 < max_bin <= nb_bins:
            raise ValueError(f"max_bin must be in 1..{nb_bins}, got {max_bin}")
        self.config = OpenUnmixConfig(
            nb_bins, nb_channels, hidden_size, nb_layers, unidirectional, max_bin
        )
        self.nb_bins = nb_bins
        self.nb_channels = nb_channels
        self.max_bin = max_bin
        self.hidden_size = hidden_size

        self.fc1 = nn.Linear(max_bin * nb_channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        lstm_hidden = hidden_size if unidirectional else hidden_size // 2
        self.lstm = nn.LSTM(
            input_size=hidden_size,
            hidden_size=lstm_hidden,
            num_layers=nb_layers,
            bidirectional=not unidirectional,
            batch_first=False,
            dropout=0.4 if nb_layers > 1 else 0.0,
        )
        self.fc2 = nn.Linear(hidden_size * 2, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, nb_bins * nb_channels, bias=False)
        self.bn3 = nn.BatchNorm1d(nb_bins * nb_channels)

        self.input_mean = nn.Parameter(torch.zeros(max_bin))
        self.input_scale = nn.Parameter(torch.ones(max_bin))
        self.output_scale = nn.Parameter(torch.ones(nb_bins))
        self.output_mean = nn.Parameter(torch.ones(nb_bins))

    @classmethod
    def from_config(cls, config: OpenUnmixConfig) -> "OpenUnmix":
        return cls(**config.to_dict())

    def set_input_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store the training set's magnitude statistics, per bin up to ``max_bin``."""
        with torch.no_grad():
            self.input_mean.copy_(-mean[: self.max_bin])
            self.input_scale.copy_(1.0 / std[: self.max_bin].clamp_min(1e-8))

    def freeze(self) -> "OpenUnmix":
        """Switch to inference: no gradients, batch norm and dropout in eval mode."""
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    @property
    def product_dtype(self) -> torch.dtype:
        """The dtype of the dense layers' and the LSTM's weights (see :meth:`cast_products`)."""
        return self.fc1.weight.dtype

    def cast_products(self, dtype: torch.dtype) -> "OpenUnmix":
        """Store the dense layers' and the LSTM's weights in ``dtype``, in place.

        With ``torch.bfloat16`` the matrix products, nearly all of the model's
        arithmetic, run in bfloat16, while the input scaling, batch norm, the
        activations and the mask stay float32: the input and output are float32
        whatever ``dtype`` is. For inference; training uses autocast instead.
        """
        for layer in (self.fc1, self.lstm, self.fc2, self.fc3):
            layer.to(dtype)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: mixture magnitude, ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Returns:
            target magnitude, same shape as ``x``.
        """
        # (nb_frames, nb_samples, nb_channels, nb_bins)
        mix = x.permute(3, 0, 1, 2)
        # The mask multiplies a detached mixture, as in the reference: gradients reach the
        # input through the network only.
        return self.decode(self.encode(mix), mix.detach()).permute(1, 2, 3, 0)

    def encode(self, mix: Tensor) -> Tensor:
        """The part of the model that needs the whole signal: input scaling, the first dense
        layer and the LSTM.

        Args:
            mix: mixture magnitude, frame-major ``(nb_frames, nb_samples, nb_channels, nb_bins)``.

        Returns:
            features ``(nb_frames, nb_samples, 2 * hidden_size)`` (the bottleneck beside the LSTM's
            output) for :meth:`decode`, in the dtype of the products (see :meth:`cast_products`).
        """
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        low, wide = self._dtypes()
        # Without autograd on the CPU, the input layer runs a few megabytes of frames at a time
        # into one output: spectrogram-sized temporaries would be fresh, page-faulting memory
        # on every call. Frames are independent here, so the values are the same.
        step = nb_frames
        if mix.device.type == "cpu" and not torch.is_grad_enabled():
            step = frames_per_chunk(nb_samples * nb_channels * self.max_bin * mix.element_size())
        if step >= nb_frames:
            x = self._input_layer(mix, low, wide)
        else:
            x = torch.empty((nb_frames, nb_samples, self.hidden_size), dtype=low or mix.dtype, device=mix.device)
            for t in range(0, nb_frames, step):
                x[t : t + step] = self._input_layer(mix[t : t + step], low, wide)
        lstm_out, _ = self.lstm(x)
        return torch.cat([x, lstm_out], -1)

    def input_layer(self, mix: Tensor) -> Tensor:
        """Input scaling, the first dense layer and its batch norm, frame by frame: what the LSTM reads.

        Args:
            mix: mixture magnitude, frame-major ``(nb_frames, nb_samples, nb_channels, nb_bins)``.

        Returns:
            ``(nb_frames, nb_samples, hidden_size)`` in the dtype of the products.
        """
        return self._input_layer(mix, *self._dtypes())

    def _input_layer(self, mix: Tensor, low, wide) -> Tensor:
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        x = mix[..., : self.max_bin] + self.input_mean
        x = x.mul_(self.input_scale) if not torch.is_grad_enabled() else x * self.input_scale
        x = self.fc1(_cast(x.reshape(-1, nb_channels * self.max_bin), low))
        x = torch.tanh(self.bn1(_cast(x, wide)))
        return _cast(x.reshape(nb_frames, nb_samples, self.hidden_size), low)

    def decode(self, features: Tensor, mix: Tensor) -> Tensor:
        """The frame-by-frame rest of the model: dense layers and the mask. Any run of frames
        can be decoded on its own (with the features :meth:`encode` gave for those frames).

        Args:
            features: ``(nb_frames, nb_samples, 2 * hidden_size)`` from :meth:`encode`.
            mix: the mixture magnitude of the same frames ``(nb_frames, nb_samples, nb_channels, nb_bins)``,
                which the mask multiplies (detach it for training, as :meth:`forward` does).

        Returns:
            target magnitude ``(nb_frames, nb_samples, nb_channels, nb_bins)``, float32 (the
            dtype of the normalisation parameters) whatever the products' dtype.
        """
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        low, wide = self._dtypes()
        x = self.fc2(features.reshape(-1, features.shape[-1]))
        x = torch.relu(self.bn2(_cast(x, wide)))
        x = _cast(self.fc3(_cast(x, low)), wide)
        if not torch.is_grad_enabled() and not self.training:
            # Without autograd, batch norm with running statistics and the output scaling are
            # one affine map: one pass over the largest tensor of the model, in place.
            scale, shift = self._output_affine()
            x = x.mul_(scale).add_(shift).reshape(nb_frames, nb_samples, nb_channels, self.nb_bins)
            return x.relu_().mul_(mix)
        x = self.bn3(x).reshape(nb_frames, nb_samples, nb_channels, self.nb_bins)
        return torch.relu(x * self.output_scale + self.output_mean) * mix

    def _dtypes(self):
        """``(products, the rest)`` after :meth:`cast_products`: matrix products in its dtype,
        everything between them in the dtype of the other parameters. ``(None, None)`` without
        it: no cast at all, which leaves autocast alone."""
        low, wide = self.product_dtype, self.input_scale.dtype
        return (None, None) if low == wide else (low, wide)

    def _output_affine(self):
        """``(scale, shift)`` per output feature such that ``fc3_out * scale + shift`` equals
        ``bn3`` in eval mode followed by the output scale and mean."""
        bn = self.bn3
        bn_scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bn_shift = bn.bias - bn.running_mean * bn_scale
        out_scale = self.output_scale.repeat(self.nb_channels)
        out_mean = self.output_mean.repeat(self.nb_channels)
        return bn_scale * out_scale, bn_shift * out_scale + out_mean


def _cast(x: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    """``x`` in ``dtype``; ``x`` itself for ``None``."""
    return x if dtype is None else x.to(dtype)


def widen(model: OpenUnmix, hidden_size: int, generator: Optional[torch.Generator] = None) -> OpenUnmix:
    """A copy of ``model`` with a wider bottleneck and LSTM that computes the same output at first.

    Every unit of ``model`` keeps its weights and reads no new unit (the weights
    from new units into old ones are zero), so in eval mode the copy's output
    equals the model's; the new units start with random input weights, like a
    fresh layer's, and batch norm at its identity, and training then puts them
    to use. For fine-tuning a trained model at a larger width (``umx-train
    --model M --hidden-size N``).

    Raises:
        ValueError: ``hidden_size`` below the model's, or odd for a bidirectional model.
    """
    cfg = model.config
    if hidden_size < cfg.hidden_size:
        raise ValueError(f"cannot narrow a hidden-{cfg.hidden_size} model to {hidden_size}; widening only")
    if not cfg.unidirectional and hidden_size % 2:
        raise ValueError(f"hidden size {hidden_size}: a bidirectional model needs an even width")
    wide = OpenUnmix.from_config(dataclasses.replace(cfg, hidden_size=hidden_size))
    old, new = model.state_dict(), wide.state_dict()
    h0, h1 = cfg.hidden_size, hidden_size
    directions = 1 if cfg.unidirectional else 2
    u0, u1 = h0 // directions, h1 // directions  # LSTM units per direction
    # Positions of the old units inside the wider vectors they belong to.
    bottleneck = torch.arange(h0)
    lstm_out = torch.cat([torch.arange(u0) + d * u1 for d in range(directions)])
    gates = torch.cat([torch.arange(u0) + g * u1 for g in range(4)])
    fc2_in = torch.cat([bottleneck, h1 + lstm_out])

    def fresh(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound

    out = {}
    for name, value in new.items():
        before = old[name]
        if name in ("fc1.weight", "fc2.weight"):
            cols = torch.arange(before.shape[1]) if name == "fc1.weight" else fc2_in
            t = fresh(value.shape, value.shape[1])  # new rows: random inputs
            t[:h0] = 0.0
            t[bottleneck[:, None], cols[None, :]] = before
        elif name == "fc3.weight":
            t = torch.zeros_like(value)
            t[:, :h0] = before
        elif name.startswith(("bn1.", "bn2.")):
            t = value.clone()  # identity for new units: weight 1, bias 0, mean 0, variance 1
            if before.dim():
                t[:h0] = before
            else:
                t = before.clone()
        elif name.startswith("lstm."):
            t = fresh(value.shape, u1)  # new units: random inputs and biases
            t[gates] = 0.0
            if name.startswith("lstm.weight_hh"):  # old units read their own direction's old units
                t[gates[:, None], torch.arange(u0)[None, :]] = before
            elif name.startswith("lstm.weight_ih"):  # the bottleneck (layer 0) or the layer below's output
                cols = bottleneck if name.startswith("lstm.weight_ih_l0") else lstm_out
                t[gates[:, None], cols[None, :]] = before
            else:  # biases
                t[gates] = before
        else:  # bn3, input and output scaling: unchanged shapes
            t = before.clone()
        out[name] = t.to(value.dtype)
    wide.load_state_dict(out)
    return wide.train(model.training)


def strip_legacy_keys(state: Mapping[str, Tensor]) -> dict:
    """Drop the non-parameter entries some published weights carry."""
    return {k: v for k, v in state.items() if k not in LEGACY_KEYS}


def config_from_state_dict(state: Mapping[str, Tensor]) -> OpenUnmixConfig:
    """Read the architecture of an Open-Unmix model off its state dict.

    Raises:
        KeyError: a key the architecture needs is missing.
        ValueError: the shapes contradict each other.
    """
    max_bin = int(state["input_mean"].shape[0])
    nb_bins = int(state["output_mean"].shape[0])
    hidden_size, fc1_in = (int(n) for n in state["fc1.weight"].shape)
    if fc1_in % max_bin:
        raise ValueError(
            f"fc1.weight has {fc1_in} inputs, not a multiple of max_bin={max_bin}"
        )
    layers = [int(m.group(1)) for k in state if (m := re.fullmatch(r"lstm\.weight_ih_l(\d+)", k))]
    if not layers:
        raise KeyError("lstm.weight_ih_l0")
    unidirectional = "lstm.weight_ih_l0_reverse" not in state
    return OpenUnmixConfig(
        nb_bins=nb_bins,
        nb_channels=fc1_in // max_bin,
        hidden_size=hidden_size,
        nb_layers=max(layers) + 1,
        unidirectional=unidirectional,
        max_bin=max_bin,
    )


def bin_frequencies(sample_rate: float, n_fft: int) -> Tensor:
    """Centre frequencies (Hz) of the one-sided STFT bins, in float64."""
    return torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)


def bandwidth_to_max_bin(sample_rate: float, n_fft: int, bandwidth: float) -> int:
    """Number of one-sided STFT bins whose centre frequency is at most ``bandwidth`` Hz."""
    return int((bin_frequencies(sample_rate, n_fft) <= bandwidth).sum())
