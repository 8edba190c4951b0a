"""openunmix-like: Open-Unmix-compatible music source separation.

>>> from openunmix_like import Separator, separate
>>> separator = Separator.from_pretrained()          # bundled model, offline
>>> stems = separate(audio, 44100, model=separator)  # {"vocals": ..., ...}
"""
__version__ = "0.1.0"

from .errors import AudioError, DownloadError, ModelError, OpenUnmixLikeError
from .inference import separate
from .model import OpenUnmix, OpenUnmixConfig
from .separator import Separator, WienerSettings

__all__ = [
    "__version__",
    "AudioError",
    "DownloadError",
    "ModelError",
    "OpenUnmix",
    "OpenUnmixConfig",
    "OpenUnmixLikeError",
    "Separator",
    "WienerSettings",
    "separate",
]
