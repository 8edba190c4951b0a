"""A time-frequency attention U-Net of TFSWA blocks, predicting complex masks.

The TFSWA block (time-frequency sequence and shifted window attention) is that
of Yao et al., "TFSWA-ResUNet: music source separation with time-frequency
sequence and shifted window attention-based ResUNet" (EURASIP Journal on
Advances in Signal Processing, 2025), which uses it as the bottleneck of a
ResUNet; here every encoder and decoder stage is made of such blocks.

The mixture STFT, real and imaginary parts of every channel as input planes,
scaled per bin by the training set's magnitude level, is cut into
``patch_size`` x ``patch_size`` patches (a strided convolution). Each stage is a
stack of TFSWA blocks, each with four residual sub-layers on layer-normalised
tokens:

1. time sequence attention: multi-head self-attention along time, per frequency row;
2. frequency sequence attention: the same along frequency, per time column;
3. window attention: within non-overlapping ``window_size`` x ``window_size``
   windows with a learned relative position bias, windows shifted by half a
   window in every second block (Swin transformer, with its attention mask at
   the wrapped-around borders);
4. a two-layer GELU MLP.

Between stages a 2x2 stride-2 convolution halves both axes and doubles the
width; the decoder mirrors it with 2x2 transposed convolutions, joins each
encoder stage's output (skip connection, a linear layer back to the stage
width) and runs ``decoder_depth`` blocks. A transposed convolution undoes the
patching, and a 3x3 convolution over its output and the input planes gives a
complex mask per channel and bin, which multiplies the mixture STFT.

Complex in, complex out, as real/imaginary pairs (ONNX has no complex type):
``(nb_samples, nb_channels, nb_bins, nb_frames, 2)``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .config import ArchConfig, argument_text, at_least, each_at_least, one_of, optional, positive_finite
from .unet2d import default_max_bin, pad_to_multiple


@dataclasses.dataclass(frozen=True)
class TFAttnConfig(ArchConfig):
    """Constructor arguments of :class:`TFAttnUNet`.

    Args:
        nb_bins: one-sided STFT bins, ``n_fft // 2 + 1``.
        nb_channels: audio channels (1 or 2).
        hidden_size: width of the first stage; stage ``i`` has ``hidden_size * 2**i``.
        depths: TFSWA blocks per encoder stage (the last stage is the bottleneck).
        num_heads: attention heads per stage (each must divide its stage's width).
        window_size: side of the attention windows, in tokens.
        patch_size: STFT bins and frames per token.
        mlp_ratio: hidden width of the MLPs relative to the stage width.
        decoder_depth: TFSWA blocks per decoder stage.
        max_bin: bins the network sees; the mask is 0 above. ``None``: the largest
            multiple of ``patch_size * 2**(stages - 1)`` not above ``nb_bins``.
    """

    nb_bins: int = 1025
    nb_channels: int = 2
    hidden_size: int = 32
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (1, 2, 4, 8)
    window_size: int = 8
    patch_size: int = 4
    mlp_ratio: float = 2.0
    decoder_depth: int = 1
    max_bin: Optional[int] = None

    LIMITS = {"nb_bins": at_least(1), "nb_channels": one_of(1, 2), "hidden_size": at_least(1),
              "depths": each_at_least(0), "num_heads": each_at_least(1), "window_size": at_least(1),
              "patch_size": at_least(1), "mlp_ratio": positive_finite, "decoder_depth": at_least(0),
              "max_bin": optional(at_least(1))}

    def check(self) -> None:
        depths, heads = tuple(self.depths), tuple(self.num_heads)
        if len(depths) != len(heads):
            raise ValueError(f"depths={argument_text(depths)} and num_heads={argument_text(heads)}: "
                             "give one value per stage in each (as many depths as num_heads)")
        for i, h in enumerate(heads):
            width = self.hidden_size * 2 ** i
            if width % h:
                raise ValueError(f"num_heads={argument_text(heads)}: {h} heads do not divide the width "
                                 f"{width} of stage {i + 1} (hidden_size {self.hidden_size} * 2**{i})")
        if int(self.hidden_size * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio:g}: the MLP of the first stage would have no units "
                             f"(hidden_size {self.hidden_size} * mlp_ratio below 1)")
        if self.max_bin is not None and self.max_bin > self.nb_bins:
            raise ValueError(f"max_bin={self.max_bin}: must be in 1..{self.nb_bins} (nb_bins)")


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Optional[Tensor] = None) -> Tensor:
    """Scaled dot-product attention ``(nb_sequences, heads, n, head_dim)``; ``bias`` is added to the scores.

    ``bias`` is ``(heads, n, n)``, shared by all sequences, or ``(nb_windows, heads, n, n)`` when the
    sequences are the windows of one sample after another (broadcast over the samples, not copied).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None and bias.dim() == 4:
        scores = (scores.unflatten(0, (-1, bias.shape[0])) + bias).flatten(0, 1)
    elif bias is not None:
        scores = scores + bias
    return torch.matmul(scores.softmax(dim=-1), v)


class MultiHead(nn.Module):
    """Projections of a multi-head self-attention over sequences ``(nb_sequences, n, dim)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide the width {dim}")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        n_seq, n, dim = x.shape
        qkv = self.qkv(x).reshape(n_seq, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = attend(qkv[0], qkv[1], qkv[2], self.scale, bias)  # (n_seq, heads, n, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n_seq, n, dim))


class AxisAttention(nn.Module):
    """Self-attention along one axis of ``(nb_samples, F, T, dim)`` tokens: 1 = frequency, 2 = time."""

    def __init__(self, dim: int, heads: int, axis: int):
        super().__init__()
        self.axis = axis
        self.attn = MultiHead(dim, heads)

    def forward(self, x: Tensor) -> Tensor:
        if self.axis == 2:
            b, f, t, d = x.shape
            return self.attn(x.reshape(b * f, t, d)).reshape(b, f, t, d)
        seq = x.transpose(1, 2)  # (B, T, F, dim)
        b, t, f, d = seq.shape
        return self.attn(seq.reshape(b * t, f, d)).reshape(b, t, f, d).transpose(1, 2)


class WindowAttention(nn.Module):
    """Self-attention within ``window`` x ``window`` token windows, optionally shifted by ``shift``."""

    def __init__(self, dim: int, heads: int, window: int, shift: int):
        super().__init__()
        self.window, self.shift, self.heads = window, shift, heads
        self.attn = MultiHead(dim, heads)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        pos = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        w, s = self.window, self.shift
        f, t = x.shape[1], x.shape[2]
        x = pad_to_multiple(x.permute(0, 3, 1, 2), w, w).permute(0, 2, 3, 1)
        b, fp, tp, d = x.shape
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = x.reshape(b, fp // w, w, tp // w, w, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, d)
        bias = self.bias_table[self.bias_index.reshape(-1)].reshape(w * w, w * w, self.heads).permute(2, 0, 1)
        if s:
            # (nb_windows, heads, w*w, w*w): the windows of one sample come first.
            out = self.attn(windows, bias[None] + self.shift_mask(fp, tp, x.device, x.dtype)[:, None])
        else:
            out = self.attn(windows, bias)
        out = out.reshape(b, fp // w, tp // w, w, w, d).permute(0, 1, 3, 2, 4, 5).reshape(b, fp, tp, d)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return out[:, :f, :t]

    def shift_mask(self, fp: int, tp: int, device, dtype) -> Tensor:
        """-100 between tokens that the cyclic shift brought together from opposite borders."""
        w, s = self.window, self.shift

        def region(n: int) -> Tensor:
            pos = torch.arange(n, device=device)
            return (pos >= n - w).long() + (pos >= n - s).long()

        ids = region(fp)[:, None] * 3 + region(tp)[None, :]
        ids = ids.reshape(fp // w, w, tp // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        differ = ids[:, :, None] != ids[:, None, :]
        return differ.to(dtype) * -100.0


class TFSWABlock(nn.Module):
    """Time sequence, frequency sequence and (shifted) window attention, then an MLP; all residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.time = AxisAttention(dim, heads, axis=2)
        self.freq = AxisAttention(dim, heads, axis=1)
        self.window = WindowAttention(dim, heads, window, shift)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.time(self.norms[0](x))
        x = x + self.freq(self.norms[1](x))
        x = x + self.window(self.norms[2](x))
        return x + self.mlp(self.norms[3](x))


def blocks(dim: int, heads: int, depth: int, window: int, mlp_ratio: float) -> nn.Sequential:
    return nn.Sequential(*(TFSWABlock(dim, heads, window, (window // 2) * (i % 2), mlp_ratio) for i in range(depth)))


def channels_last(fn: nn.Module, x: Tensor) -> Tensor:
    """Apply a channels-first 2-D layer to ``(B, F, T, dim)`` tokens."""
    return fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TFAttnUNet(nn.Module):
    """Estimates one target's complex STFT with a complex mask on the mixture's.

    Example:
        >>> model = TFAttnUNet(nb_bins=1025, nb_channels=2)
        >>> model(torch.randn(1, 2, 1025, 64, 2)).shape
        torch.Size([1, 2, 1025, 64, 2])
    """

    domain = "complex"

    def __init__(self, nb_bins: int = 1025, nb_channels: int = 2, hidden_size: int = 32,
                 depths: Tuple[int, ...] = (2, 2, 6, 2), num_heads: Tuple[int, ...] = (1, 2, 4, 8),
                 window_size: int = 8, patch_size: int = 4, mlp_ratio: float = 2.0, decoder_depth: int = 1,
                 max_bin: Optional[int] = None):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        config = TFAttnConfig(nb_bins, nb_channels, hidden_size, depths, num_heads, window_size, patch_size,
                              mlp_ratio, decoder_depth, max_bin)  # refuses values no model can use
        self.factor = patch_size * 2 ** (len(depths) - 1)
        max_bin = default_max_bin(nb_bins, self.factor) if max_bin is None else max_bin
        self.config = dataclasses.replace(config, max_bin=max_bin)
        self.nb_bins, self.nb_channels, self.max_bin = nb_bins, nb_channels, max_bin
        planes = 2 * nb_channels
        dims = [hidden_size * 2 ** i for i in range(len(depths))]
        self.embed = nn.Conv2d(planes, dims[0], patch_size, stride=patch_size)
        padded_bins = max_bin + (-max_bin) % self.factor
        self.freq_position = nn.Parameter(torch.zeros(padded_bins // patch_size, 1, dims[0]))
        nn.init.trunc_normal_(self.freq_position, std=0.02)
        self.encoder = nn.ModuleList(blocks(d, h, n, window_size, mlp_ratio)
                                     for d, h, n in zip(dims, num_heads, depths))
        self.down = nn.ModuleList(nn.Conv2d(dims[i], dims[i + 1], 2, stride=2) for i in range(len(dims) - 1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(dims[i + 1], dims[i], 2, stride=2) for i in range(len(dims) - 1))
        self.fuse = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in range(len(dims) - 1))
        self.decoder = nn.ModuleList(blocks(dims[i], num_heads[i], decoder_depth, window_size, mlp_ratio)
                                     for i in range(len(dims) - 1))
        self.unpatch = nn.ConvTranspose2d(dims[0], dims[0], patch_size, stride=patch_size)
        self.head = nn.Conv2d(dims[0] + planes, planes, 3, padding=1)
        self.input_scale = nn.Parameter(torch.ones(max_bin))

    def set_input_stats(self, mean: Tensor, std: Tensor) -> None:
        """Scale each bin by the inverse root mean square of the training magnitudes there."""
        with torch.no_grad():
            rms = (mean[: self.max_bin].square() + std[: self.max_bin].square()).sqrt()
            self.input_scale.copy_(1.0 / rms.clamp_min(1e-8))

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: mixture STFT as real/imaginary pairs ``(nb_samples, nb_channels, nb_bins, nb_frames, 2)``.

        Returns:
            target STFT, same layout and shape.
        """
        nb_samples, nb_channels, _, nb_frames, _ = x.shape
        mix = x[:, :, : self.max_bin]
        planes = (mix * self.input_scale[:, None, None]).permute(0, 1, 4, 2, 3)
        planes = planes.reshape(nb_samples, 2 * nb_channels, self.max_bin, nb_frames)
        padded = pad_to_multiple(planes, self.factor, self.factor)
        h = self.embed(padded).permute(0, 2, 3, 1) + self.freq_position
        skips = []
        for i, stage in enumerate(self.encoder):
            h = stage(h)
            if i < len(self.down):
                skips.append(h)
                h = channels_last(self.down[i], h)
        for i in reversed(range(len(self.up))):
            h = channels_last(self.up[i], h)
            h = self.decoder[i](self.fuse[i](torch.cat([h, skips.pop()], dim=-1)))
        h = nn.functional.gelu(self.unpatch(h.permute(0, 3, 1, 2)))
        mask = self.head(torch.cat([h, padded], dim=1))[..., : self.max_bin, :nb_frames]
        mask = mask.reshape(nb_samples, nb_channels, 2, self.max_bin, nb_frames).permute(0, 1, 3, 4, 2)
        real = mask[..., 0] * mix[..., 0] - mask[..., 1] * mix[..., 1]
        imag = mask[..., 0] * mix[..., 1] + mask[..., 1] * mix[..., 0]
        est = torch.stack([real, imag], dim=-1)
        if self.max_bin < self.nb_bins:
            est = nn.functional.pad(est, (0, 0, 0, 0, 0, self.nb_bins - self.max_bin))
        return est
