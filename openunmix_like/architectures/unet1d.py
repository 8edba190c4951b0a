"""A waveform U-Net, a simplified variant of the Wave-U-Net.

After Stoller, Ewert and Dixon, "Wave-U-Net: A Multi-Scale Neural Network for
End-to-End Audio Source Separation" (ISMIR 2018); where the Wave-U-Net
decimates and interpolates and outputs the sources, this one uses strided and
transposed convolutions and outputs masks.

1-D convolutions (kernel 8, stride 4, ReLU) go down, 1-D transposed
convolutions (kernel 8, stride 4, ReLU) come back up; each decoder output is
cropped to the length of the encoder output it is joined with (the two differ
by a few samples after down- and upsampling), and a 1x1 convolution with a
sigmoid gives one time-domain mask per channel, which multiplies the mixture.

Waveform in, waveform out, mono or stereo. The input is divided by its
standard deviation (per example) before the network, so the masks do not
depend on the level; the mask multiplies the input as given.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from .config import ArchConfig, at_least, one_of


@dataclasses.dataclass(frozen=True)
class UNet1dConfig(ArchConfig):
    """Constructor arguments of :class:`UNet1d`.

    Args:
        nb_channels: audio channels (1 or 2).
        hidden_size: channels of the first encoder layer; layer ``i`` has ``hidden_size * 2**i``.
        nb_layers: encoder (and decoder) layers; the deepest runs at ``1 / stride**nb_layers`` of the rate.
        kernel_size: convolution length in samples, at least the stride (twice the stride keeps every
            sample covered twice).
        stride: down- and upsampling factor of each layer.
    """

    nb_channels: int = 2
    hidden_size: int = 32
    nb_layers: int = 5
    kernel_size: int = 8
    stride: int = 4

    LIMITS = {"nb_channels": one_of(1, 2), "hidden_size": at_least(1), "nb_layers": at_least(1),
              "kernel_size": at_least(1), "stride": at_least(1)}

    def check(self) -> None:
        if self.kernel_size < self.stride:
            raise ValueError(f"kernel_size={self.kernel_size}: must be at least the stride ({self.stride})")

    def min_length(self) -> int:
        """Fewest samples every encoder layer can take (1 unless ``kernel_size`` exceeds twice the stride):
        a layer gives ``(n + 2 * stride - kernel_size) // stride + 1`` samples from ``n``."""
        n = 1
        for _ in range(self.nb_layers):
            n = max(1, (n - 1) * self.stride + self.kernel_size - 2 * self.stride)
        return n


class UNet1d(nn.Module):
    """Estimates one target's waveform by masking the mixture's samples.

    Example:
        >>> model = UNet1d(nb_channels=1)
        >>> model(torch.rand(1, 1, 44100)).shape
        torch.Size([1, 1, 44100])
    """

    domain = "waveform"

    def __init__(self, nb_channels: int = 2, hidden_size: int = 32, nb_layers: int = 5, kernel_size: int = 8,
                 stride: int = 4):
        super().__init__()
        self.config = UNet1dConfig(nb_channels, hidden_size, nb_layers, kernel_size, stride)
        self.nb_channels = nb_channels
        widths = [nb_channels] + [hidden_size * 2 ** i for i in range(nb_layers)]
        # Padding by the stride makes every encoder output at least ceil(length / stride) long,
        # and the matching transposed convolution (no padding) then covers the whole input.
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv1d(widths[i], widths[i + 1], kernel_size, stride, padding=stride), nn.ReLU())
            for i in range(nb_layers)
        )
        self.decoder = nn.ModuleList()
        for i in range(nb_layers, 0, -1):
            c_in = widths[i] if i == nb_layers else 2 * widths[i]
            c_out = widths[i - 1] if i > 1 else hidden_size
            self.decoder.append(nn.Sequential(nn.ConvTranspose1d(c_in, c_out, kernel_size, stride), nn.ReLU()))
        self.output = nn.Conv1d(hidden_size + nb_channels, nb_channels, 1)
        self.offset = stride  # the encoder's left padding, undone when cropping the decoder outputs
        self.min_length = self.config.min_length()

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: mixture ``(nb_samples, nb_channels, nb_timesteps)``.

        Returns:
            target ``(nb_samples, nb_channels, nb_timesteps)``.
        """
        length = x.shape[-1]
        # The population deviation: defined for a single sample too (mono, one sample).
        scale = x.flatten(1).std(dim=1, correction=0).clamp_min(1e-5)[:, None, None]
        h = x / scale
        padded = length < self.min_length
        if padded:  # kernels longer than twice the stride need a few samples: zeros after the end
            h = nn.functional.pad(h, (0, self.min_length - length))
        skips = [h]
        for layer in self.encoder:
            h = layer(h)
            skips.append(h)
        skips.pop()
        for layer in self.decoder:
            skip = skips.pop()
            h = layer(h)[..., self.offset : self.offset + skip.shape[-1]]
            h = torch.cat([h, skip], dim=1)
        mask = torch.sigmoid(self.output(h[..., :length] if padded else h))
        return mask * x
