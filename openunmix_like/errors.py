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


def shown(text: str) -> str:
    """``text`` as one printable line for messages: a file name's bytes that are not UTF-8 (which Python holds as
    surrogates) as ``\\xff``, its line breaks, tabs and other control characters as ``\\n``, ``\\t``, ``\\x1b``.

    A name that could not be printed would stop a batch that prints it, and one with a line break would split
    a one-line message in two.

    >>> shown("bad\\udcff.wav"), shown("two\\nlines.wav")
    ('bad\\\\xff.wav', 'two\\\\nlines.wav')
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(_shown_char(c) for c in text)


def _shown_char(c: str) -> str:
    if "\udc80" <= c <= "\udcff":  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{ord(c) - 0xdc00:02x}"
    if c.isprintable() or c == " ":
        return c
    return c.encode("unicode_escape").decode("ascii")
