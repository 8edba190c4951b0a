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
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from torch import Tensor, nn

from ..choices import DEFAULT_ARCHITECTURE, PRESETS
from .config import ArchConfig, parse_assignments
from .tfattn import TFAttnConfig, TFAttnUNet
from .umx import OpenUnmix, OpenUnmixConfig, bandwidth_to_max_bin, config_from_state_dict, strip_legacy_keys, widen
from .unet1d import UNet1d, UNet1dConfig
from .unet2d import UNet2d, UNet2dConfig

MAGNITUDE, COMPLEX, WAVEFORM = "magnitude", "complex", "waveform"
# What a <target>.json without an "architecture" key holds: the reference package's files.


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The training options every architecture may draw its constructor arguments from."""

    sample_rate: float = 44100
    n_fft: int = 4096
    nb_channels: int = 2
    bandwidth: float = 16000
    unidirectional: bool = False


def _shared_args(arch: "Architecture", options: ModelOptions) -> dict:
    args = {"nb_channels": options.nb_channels}
    if arch.spectral():
        args["nb_bins"] = options.n_fft // 2 + 1
    return args


def _umx_args(arch: "Architecture", options: ModelOptions) -> dict:
    return dict(_shared_args(arch, options), unidirectional=options.unidirectional,
                max_bin=bandwidth_to_max_bin(options.sample_rate, options.n_fft, options.bandwidth))


def _identity(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    return dict(state)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture: its model class, constructor-argument dataclass and hooks.

    Attributes:
        name: the ``architecture`` value in ``<target>.json`` and of ``umx-train --arch``.
        title: its name in messages.
        model: the ``nn.Module`` class; ``model(**config.to_dict())`` builds it. Its
            ``domain`` attribute says what it maps (see the module docstring).
        config: the dataclass of its constructor arguments.
        default_loss: the ``umx-train --loss`` used when none is given.
        summary: one line for help texts and docs.
        options_to_args: the constructor arguments the shared training options give
            (channels, bins; Open-Unmix also its bandwidth limit and direction).
        config_from_state: reads the constructor arguments off a state dict, for
            architectures whose files may come without them (the reference's
            Open-Unmix weights); ``None``: files must carry ``model_args``.
        clean_state: drops entries of published state dicts that hold no parameter.
        widen: a copy of a model at a larger width computing the same output at first
            (``umx-train --model M --hidden-size N``); ``None``: not supported.
        reference_format: the reference package can load its ``.pth`` files and reads
            ``hidden_size`` and ``unidirectional`` from ``args`` in ``<target>.json``.
    """

    name: str
    title: str
    model: type
    config: type
    default_loss: str
    summary: str
    options_to_args: Callable[["Architecture", ModelOptions], dict] = _shared_args
    config_from_state: Optional[Callable[[Mapping[str, Tensor]], Any]] = None
    clean_state: Callable[[Mapping[str, Tensor]], Dict[str, Tensor]] = _identity
    widen: Optional[Callable[..., nn.Module]] = None
    reference_format: bool = False

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

    def args_from_options(self, options: ModelOptions) -> dict:
        """Constructor arguments the shared training options determine."""
        return self.options_to_args(self, options)

    def spectral(self) -> bool:
        """Whether the model has STFT bins (``nb_bins``) that must match the separator's STFT."""
        return self.domain != WAVEFORM


ARCHITECTURES: Dict[str, Architecture] = {
    "umx": Architecture("umx", "Open-Unmix", OpenUnmix, OpenUnmixConfig, "mse",
                        "Open-Unmix (Stoter et al. 2019): dense layers and a 3-layer BLSTM masking the magnitude",
                        options_to_args=_umx_args, config_from_state=config_from_state_dict,
                        clean_state=strip_legacy_keys, widen=widen, reference_format=True),
    "unet2d": Architecture("unet2d", "spectrogram U-Net", UNet2d, UNet2dConfig, "l1",
                           "spectrogram U-Net (Jansson et al. 2017): strided 5x5 convolutions, sigmoid magnitude "
                           "mask"),
    "unet1d": Architecture("unet1d", "Wave-U-Net", UNet1d, UNet1dConfig, "wavl1",
                           "waveform U-Net (after Stoller et al. 2018): strided 1-D convolutions, sigmoid "
                           "time-domain mask"),
    "tfattn": Architecture("tfattn", "time-frequency attention U-Net", TFAttnUNet, TFAttnConfig, "l1+0.5*mrstft",
                           "time-frequency shifted-window attention U-Net: TFSWA blocks, complex mask"),
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


__all__ = ["ARCHITECTURES", "Architecture", "ArchConfig", "COMPLEX", "DEFAULT_ARCHITECTURE", "MAGNITUDE",
           "ModelOptions", "PRESETS", "WAVEFORM", "architecture_of", "domain_of", "get"]
