"""Per-target model architectures, by the name a model folder's JSON gives them.

Every target model declares the domain it works in (its ``domain`` attribute):

- ``magnitude``: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``
  -> target magnitude, same shape (``umx``, ``unet2d``);
- ``complex``: mixture STFT as real/imaginary pairs
  ``(nb_samples, nb_channels, nb_bins, nb_frames, 2)`` -> target STFT, same layout (``tfattn``);
- ``waveform``: mixture ``(nb_samples, nb_channels, nb_timesteps)`` -> target, same shape (``unet1d``).

The :class:`~openunmix_like.separator.Separator` turns each output into the
magnitude its Wiener filter needs; training turns it into what the loss needs.

>>> model = get("unet2d").build(nb_bins=513, nb_channels=1)
>>> model.config.max_bin
512
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Sequence

from torch import nn

from ..model import OpenUnmix, OpenUnmixConfig
from .config import ArchConfig, parse_assignments
from .tfattn import TFAttnConfig, TFAttnUNet
from .unet1d import UNet1d, UNet1dConfig
from .unet2d import UNet2d, UNet2dConfig

MAGNITUDE, COMPLEX, WAVEFORM = "magnitude", "complex", "waveform"


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture: its model class and constructor-argument dataclass.

    Attributes:
        name: the ``architecture`` value in ``<target>.json`` and of ``umx-train --arch``.
        model: the ``nn.Module`` class; ``model(**config.to_dict())`` builds it. Its
            ``domain`` attribute says what it maps (see the module docstring).
        config: the dataclass of its constructor arguments.
        default_loss: the ``umx-train --loss`` used when none is given.
        summary: one line for help texts and docs.
    """

    name: str
    model: type
    config: type
    default_loss: str
    summary: str

    @property
    def domain(self) -> str:
        """``magnitude``, ``complex`` or ``waveform``, as the model class declares."""
        return self.model.domain

    @property
    def input_stats(self) -> bool:
        """Whether the model stores the training set's per-bin magnitude statistics
        (``set_input_stats``), so that training computes them first."""
        return hasattr(self.model, "set_input_stats")

    def build(self, **kwargs) -> nn.Module:
        return self.model(**kwargs)

    def from_dict(self, data: Mapping) -> nn.Module:
        """Rebuild a model from its ``model_args`` (raises ``ValueError`` on unknown arguments)."""
        return self.model(**self.config.from_dict(data).to_dict())

    def parse_args(self, assignments: Sequence[str]) -> dict:
        """``KEY=VALUE`` strings (``umx-train --arch-args``) -> typed constructor arguments."""
        return parse_assignments(self.config, assignments)

    def spectral(self) -> bool:
        """Whether the model has STFT bins (``nb_bins``) that must match the separator's STFT."""
        return self.domain != WAVEFORM


ARCHITECTURES: Dict[str, Architecture] = {
    "umx": Architecture("umx", OpenUnmix, OpenUnmixConfig, "mse",
                        "Open-Unmix: dense layers and a 3-layer BLSTM masking the magnitude"),
    "unet2d": Architecture("unet2d", UNet2d, UNet2dConfig, "l1",
                           "spectrogram U-Net (seed 001): strided 5x5 convolutions, sigmoid magnitude mask"),
    "unet1d": Architecture("unet1d", UNet1d, UNet1dConfig, "wavl1",
                           "waveform U-Net (seed 000): strided 1-D convolutions, sigmoid time-domain mask"),
    "tfattn": Architecture("tfattn", TFAttnUNet, TFAttnConfig, "l1+0.5*mrstft",
                           "time-frequency attention U-Net (seed 002): TFSWA blocks, complex mask"),
}

# Training settings that belong together (umx-train --preset); explicit flags win over them.
PRESETS: Dict[str, dict] = {
    # Seed 001: mono 8192 Hz, STFT 1024 / hop 768, excerpts of 128 frames ((128 - 1) * 768 samples).
    "unet2d-8k": {"arch": "unet2d", "sample_rate": 8192, "nb_channels": 1, "nfft": 1024, "nhop": 768,
                  "seq_dur": 127 * 768 / 8192, "loss": "l1"},
    # Seed 000: 44.1 kHz mono waveform U-Net, L1 on the waveform.
    "unet1d-mono": {"arch": "unet1d", "sample_rate": 44100, "nb_channels": 1, "loss": "wavl1"},
    # Seed 002: STFT 2048 / 512, L1 magnitude plus half the multi-resolution STFT loss, clipping at 1.
    "tfattn-2048": {"arch": "tfattn", "nfft": 2048, "nhop": 512, "loss": "l1+0.5*mrstft", "clip_grad": 1.0,
                    "lr_scheduler": "cosine"},
}


def get(name: str) -> Architecture:
    """The architecture called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def architecture_of(model: nn.Module) -> Architecture:
    """The registered architecture of a model instance (by class)."""
    for arch in ARCHITECTURES.values():
        if type(model) is arch.model:
            return arch
    raise ValueError(f"{type(model).__name__} is not a registered architecture")


def domain_of(model: nn.Module) -> str:
    """A model's domain; models that declare none are taken to map magnitudes to magnitudes."""
    return getattr(model, "domain", MAGNITUDE)


__all__ = ["ARCHITECTURES", "Architecture", "ArchConfig", "COMPLEX", "MAGNITUDE", "PRESETS",
           "WAVEFORM", "architecture_of", "domain_of", "get"]
