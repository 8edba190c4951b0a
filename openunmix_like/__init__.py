"""openunmix-like: Open-Unmix-compatible music source separation.

>>> from openunmix_like import Separator, separate
>>> separator = Separator.from_pretrained()          # bundled model, offline
>>> stems = separate(audio, 44100, model=separator)  # {"vocals": ..., ...}
>>> separate_file("song.mp3", "separated", separator)  # stem files, as umx-separate writes them
"""
__version__ = "0.1.0"

from .errors import AudioError, DownloadError, ModelError, OpenUnmixLikeError
from .inference import separate
from .model import OpenUnmix, OpenUnmixConfig
from .separator import Separator, WienerSettings
from .stems import separate_file
from .streaming import StreamingSeparator

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
