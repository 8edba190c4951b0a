"""The spectrogram U-Net of Jansson et al., "Singing Voice Separation with Deep U-Net
Convolutional Networks" (ISMIR 2017).

Six strided 5x5 convolutions with batch norm and LeakyReLU(0.2) halve both
axes of the normalised magnitude spectrogram; six strided 5x5 transposed
convolutions with batch norm, ReLU and 50 % dropout on the first three double
them back, each fed the matching encoder output (skip connection); a sigmoid
turns the last one into a mask that multiplies the mixture magnitude.

Magnitude in, magnitude out, like Open-Unmix, so the separator's Wiener filter
uses it unchanged. The paper's settings (8192 Hz, STFT 1024 / 768, 512 bins,
128-frame excerpts) are the ``unet2d-8k`` training preset.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from .config import ArchConfig, at_least, one_of, optional, probability


@dataclasses.dataclass(frozen=True)
class UNet2dConfig(ArchConfig):
    """Constructor arguments of :class:`UNet2d`.

    Args:
        nb_bins: one-sided STFT bins of the input, ``n_fft // 2 + 1``.
        nb_channels: audio channels (1 or 2); each is an input plane and gets its own mask.
        hidden_size: channels of the first encoder layer; layer ``i`` has ``hidden_size * 2**i``.
        nb_layers: encoder (and decoder) layers; both axes are divided by ``2**nb_layers``.
        max_bin: bins the network sees; the mask is 0 above. ``None``: the largest
            multiple of ``2**nb_layers`` not above ``nb_bins`` (512 of 513: the
            Nyquist bin is dropped, as in the seed).
        dropout: dropout rate of the first three decoder layers.
    """

    nb_bins: int = 2049
    nb_channels: int = 2
    hidden_size: int = 16
    nb_layers: int = 6
    max_bin: Optional[int] = None
    dropout: float = 0.5

    LIMITS = {"nb_bins": at_least(1), "nb_channels": one_of(1, 2), "hidden_size": at_least(1),
              "nb_layers": at_least(1), "max_bin": optional(at_least(1)), "dropout": probability}

    def check(self) -> None:
        if self.max_bin is not None and self.max_bin > self.nb_bins:
            raise ValueError(f"max_bin={self.max_bin}: must be in 1..{self.nb_bins} (nb_bins)")


def default_max_bin(nb_bins: int, factor: int) -> int:
    """Largest multiple of ``factor`` not above ``nb_bins`` (or ``nb_bins`` when there is none)."""
    return (nb_bins // factor) * factor or nb_bins


def pad_to_multiple(x: Tensor, bins: int, frames: int) -> Tensor:
    """Zero-pad ``(..., nb_bins, nb_frames)`` at the end up to multiples of ``bins`` and ``frames``."""
    return nn.functional.pad(x, (0, (-x.shape[-1]) % frames, 0, (-x.shape[-2]) % bins))


class UNet2d(nn.Module):
    """Estimates one target's magnitude spectrogram by masking the mixture's.

    Example:
        >>> model = UNet2d(nb_bins=513, nb_channels=1)
        >>> model(torch.rand(1, 1, 513, 128)).shape
        torch.Size([1, 1, 513, 128])
    """

    domain = "magnitude"

    def __init__(self, nb_bins: int = 2049, nb_channels: int = 2, hidden_size: int = 16, nb_layers: int = 6,
                 max_bin: Optional[int] = None, dropout: float = 0.5):
        super().__init__()
        config = UNet2dConfig(nb_bins, nb_channels, hidden_size, nb_layers, max_bin, dropout)  # refuses bad values
        factor = 2 ** nb_layers
        max_bin = default_max_bin(nb_bins, factor) if max_bin is None else max_bin
        self.config = dataclasses.replace(config, max_bin=max_bin)
        self.nb_bins, self.nb_channels, self.max_bin, self.factor = nb_bins, nb_channels, max_bin, factor
        widths = [nb_channels] + [hidden_size * 2 ** i for i in range(nb_layers)]
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 5, stride=2, padding=2),
                          nn.BatchNorm2d(widths[i + 1]), nn.LeakyReLU(0.2))
            for i in range(nb_layers)
        )
        self.decoder = nn.ModuleList()
        for i in range(nb_layers, 0, -1):
            # The deepest layer starts from the bottleneck alone; the others also get the skip.
            c_in = widths[i] if i == nb_layers else 2 * widths[i]
            up = nn.ConvTranspose2d(c_in, widths[i - 1], 5, stride=2, padding=2, output_padding=1)
            if i == 1:
                self.decoder.append(up)  # the mask layer: sigmoid in forward
                continue
            block = [up, nn.BatchNorm2d(widths[i - 1]), nn.ReLU()]
            if nb_layers - i < 3 and dropout > 0:
                block.append(nn.Dropout(dropout))
            self.decoder.append(nn.Sequential(*block))
        self.input_mean = nn.Parameter(torch.zeros(max_bin))
        self.input_scale = nn.Parameter(torch.ones(max_bin))

    def set_input_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store the training set's per-bin magnitude mean and standard deviation."""
        with torch.no_grad():
            self.input_mean.copy_(mean[: self.max_bin])
            self.input_scale.copy_(1.0 / std[: self.max_bin].clamp_min(1e-8))

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Returns:
            target magnitude, same shape.
        """
        nb_frames = x.shape[-1]
        mag = x[..., : self.max_bin, :]
        h = (mag - self.input_mean[:, None]) * self.input_scale[:, None]
        h = pad_to_multiple(h, self.factor, self.factor)
        skips = []
        for layer in self.encoder:
            h = layer(h)
            skips.append(h)
        skips.pop()  # the bottleneck is the decoder's input, not a skip
        for k, layer in enumerate(self.decoder):
            if k > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h)
        mask = torch.sigmoid(h[..., : self.max_bin, :nb_frames])
        est = mask * mag
        if self.max_bin < self.nb_bins:
            est = nn.functional.pad(est, (0, 0, 0, self.nb_bins - self.max_bin))
        return est
