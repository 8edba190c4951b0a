"""The separation's settings and their defaults, checked without torch.

``umx-separate`` builds its options from these and refuses bad values before it imports torch (seconds) or
loads a model, so that ``--help``, a typo or an impossible value answers at once.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

PRECISIONS = ("auto", "fp32", "bf16")
# Seconds separated at once, and of cross-fade between consecutive segments (openunmix_like.inference).
DEFAULT_SEGMENT = 30.0
DEFAULT_OVERLAP = 2.0


def check_segmenting(segment: Optional[float], overlap: float) -> None:
    """Raise a one-line ``ValueError`` for a ``segment`` or ``overlap`` no track can be cut with
    (an infinite ``segment`` is the whole track, like ``None`` and 0)."""
    for name, value in (("segment", 0.0 if segment is None else segment), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0 \
                or (name == "overlap" and math.isinf(value)):
            whole = " (None or 0: the whole track at once)" if name == "segment" else ""
            raise ValueError(f"{name} must be a number of seconds, 0 or more{whole}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class WienerSettings:
    """How the multichannel Wiener filter combines the targets' estimates.

    Args:
        niter: EM iterations; 0 keeps the initial estimates (no EM).
        softmask: start the filter from ratio masks instead of the estimated
            magnitudes with the mixture phase.
        residual: name of an extra target, the mixture minus the other targets
            (e.g. ``"accompaniment"``); ``None`` for none. The reference package's
            spelling is taken too: ``True`` names it ``"residual"``, ``False`` is ``None``.
        wiener_win_len: frames filtered together (a time-varying spatial model,
            bounded memory); ``None`` filters the whole input (each segment) at
            once. ``0`` means the same and is stored as ``None``.

    Example:
        >>> WienerSettings(niter=0, residual="accompaniment").wiener_win_len
        300
    """

    niter: int = 1
    softmask: bool = False
    residual: Optional[str] = None
    wiener_win_len: Optional[int] = 300

    def __post_init__(self):
        if isinstance(self.niter, bool) or not isinstance(self.niter, int) or self.niter < 0:
            raise ValueError(f"niter must be a whole number of EM iterations (0: none), got {self.niter!r}")
        win = self.wiener_win_len
        if win is not None and (isinstance(win, bool) or not isinstance(win, int) or win < 0):
            raise ValueError(f"wiener_win_len must be a number of frames (None or 0: all at once), got {win!r}")
        if win == 0:
            object.__setattr__(self, "wiener_win_len", None)
        if isinstance(self.residual, bool):  # the reference's residual=True adds a target named "residual"
            object.__setattr__(self, "residual", "residual" if self.residual else None)
        if self.residual is not None and (not isinstance(self.residual, str) or not self.residual):
            raise ValueError(f"residual must be a target name or None, got {self.residual!r}")

    def replace(self, **changes) -> "WienerSettings":
        """A copy with some settings changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes) if changes else self
