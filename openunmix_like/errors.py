"""Exception types raised by the library.

Every error a user can cause (a bad file, a missing model, no network) is an
``OpenUnmixLikeError``; command-line entry points turn these into one line on
stderr and a non-zero exit status.
"""


class OpenUnmixLikeError(Exception):
    """Base class of all errors this package raises on purpose."""


class AudioError(OpenUnmixLikeError):
    """An audio file cannot be read or written, or holds unusable audio."""


class ModelError(OpenUnmixLikeError):
    """A model cannot be found, loaded, or does not match its description."""


class DownloadError(ModelError):
    """Pretrained weights could not be fetched or failed their hash check."""
