"""openunmix-like: Open-Unmix-compatible music source separation.

>>> from openunmix_like import Separator, separate
>>> separator = Separator.from_pretrained()          # bundled model, offline
>>> stems = separate(audio, 44100, model=separator)  # {"vocals": ..., ...}
>>> separate_file("song.mp3", "separated", separator)  # stem files, as umx-separate writes them
"""
__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING

from .errors import AudioError, DownloadError, ModelError, OpenUnmixLikeError

# Names whose modules import torch, loaded on first use: a command-line tool imports this package first, and
# its entry point (openunmix_like.cli) must be running before torch is imported, to take a Ctrl+C then.
_LAZY = {
    "OpenUnmix": "model",
    "OpenUnmixConfig": "model",
    "Separator": "separator",
    "StreamingSeparator": "streaming",
    "WienerSettings": "separator",
    "separate": "inference",
    "separate_file": "stems",
}

if TYPE_CHECKING:
    from .inference import separate
    from .model import OpenUnmix, OpenUnmixConfig
    from .separator import Separator, WienerSettings
    from .stems import separate_file
    from .streaming import StreamingSeparator


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})


__all__ = [
    "__version__",
    "AudioError",
    "DownloadError",
    "ModelError",
    "OpenUnmix",
    "OpenUnmixConfig",
    "OpenUnmixLikeError",
    "Separator",
    "StreamingSeparator",
    "WienerSettings",
    "separate",
    "separate_file",
]
