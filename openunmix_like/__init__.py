"""openunmix-like: Open-Unmix-compatible music source separation.

>>> from openunmix_like import Separator, separate
>>> separator = Separator.from_pretrained()          # bundled model, offline
>>> stems = separate(audio, 44100, model=separator)  # {"vocals": ..., ...}
>>> separate_file("song.mp3", "separated", separator)  # stem files, as umx-separate writes them
"""
__version__ = "0.1.0"

import importlib
import os
from typing import TYPE_CHECKING

from .errors import AudioError, DownloadError, ModelError, OpenUnmixLikeError

# oneDNN, which runs torch's CPU LSTMs and matrix products, keeps the kernels it builds for each input shape:
# up to 1024 in each of two caches (about 5 MB a song's length for umxhq). Songs differ in length, and so
# does each one's last segment: a process separating a catalogue, or an umx-web worker, grew by that much
# per song. One song takes about 40 kernels (the bundled model, segments of two lengths): 64 keep them, so a
# second call builds none (16 made it rebuild 66 of its 360). torch reads these when it first runs oneDNN
# (so from here on, in a process that has not yet); a value set in the environment is kept.
KERNEL_CACHE_ENVS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
KERNEL_CACHE_SHAPES = 64
for _name in KERNEL_CACHE_ENVS:
    os.environ.setdefault(_name, str(KERNEL_CACHE_SHAPES))
del _name

# Names whose modules import torch, loaded on first use: a command-line tool imports this package first, and
# its entry point (openunmix_like.cli) must be running before torch is imported, to take a Ctrl+C then.
_LAZY = {
    "OpenUnmix": "model",
    "OpenUnmixConfig": "model",
    "Separator": "separator",
    "StreamingSeparator": "streaming",
    "WienerSettings": "settings",
    "separate": "inference",
    "separate_file": "stems",
}

if TYPE_CHECKING:
    from .inference import separate
    from .model import OpenUnmix, OpenUnmixConfig
    from .separator import Separator
    from .settings import WienerSettings
    from .stems import separate_file
    from .streaming import StreamingSeparator
else:
    # Out of a type checker's sight: a module __getattr__ makes it take any name (a misspelt import too) for Any.
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
