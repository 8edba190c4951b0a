"""Constructor-argument dataclasses shared by the architectures.

A model on disk is a state dict plus the exact arguments of its constructor,
as JSON: :meth:`ArchConfig.to_dict` writes them, :meth:`ArchConfig.from_dict`
reads them back (JSON lists become the tuples the dataclass declares), and
:func:`parse_assignments` turns ``KEY=VALUE`` strings from the command line
into the same arguments, typed by the dataclass fields.

A config refuses values no model could be built or run with when it is made
(``ValueError`` naming the argument): each field's own range
(:attr:`ArchConfig.LIMITS`, also checked by :func:`parse_assignments` before any
data is read) and the rules that tie fields together (:meth:`ArchConfig.check`).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Type, TypeVar

C = TypeVar("C", bound="ArchConfig")
# A field's range: the value -> what is wrong with it, or None when it is fine.
Limit = Callable[[Any], Optional[str]]

# Constructor arguments that the shared training options set: --arch-args must not set them too,
# or the model would not match the data and STFT it is trained and separated with.
SET_BY_OPTIONS = {"nb_channels": "--nb-channels", "nb_bins": "--nfft (nb_bins is nfft // 2 + 1)"}


def at_least(low: float) -> Limit:
    """A limit: a number not below ``low`` (NaN fails)."""
    def check(value: Any) -> Optional[str]:
        return None if value >= low else f"must be at least {low:g}"
    return check


def each_at_least(low: int) -> Limit:
    """A limit for tuples: at least one entry, every entry not below ``low``."""
    def check(value: Any) -> Optional[str]:
        if not value:
            return "must have at least one value"
        return None if all(v >= low for v in value) else f"must all be at least {low}"
    return check


def one_of(*choices: Any) -> Limit:
    def check(value: Any) -> Optional[str]:
        return None if value in choices else f"must be {' or '.join(map(str, choices))}"
    return check


def probability(value: Any) -> Optional[str]:
    """A limit: a rate in ``[0, 1)``."""
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def positive_finite(value: Any) -> Optional[str]:
    return None if math.isfinite(value) and value > 0 else "must be a number above 0"


def optional(limit: Limit) -> Limit:
    """``limit`` for a value that may also be ``None``."""
    return lambda value: None if value is None else limit(value)


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Base of every architecture's constructor arguments.

    Subclasses list each field's range in ``LIMITS`` and the rules between fields in :meth:`check`;
    both run when a config is made, so a bad value fails in one line naming the argument rather than
    deep inside the model.
    """

    LIMITS: ClassVar[Dict[str, Limit]] = {}

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            problem = self.limit_problem(field.name, getattr(self, field.name))
            if problem:
                raise ValueError(f"{field.name}={argument_text(getattr(self, field.name))}: {problem}")
        self.check()

    @classmethod
    def limit_problem(cls, name: str, value: Any) -> Optional[str]:
        """What is wrong with ``value`` for the field ``name`` on its own, or ``None``."""
        limit = cls.LIMITS.get(name)
        return None if limit is None else limit(value)

    def check(self) -> None:
        """Raise ``ValueError`` (naming the arguments) when fields do not fit together."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: Type[C], data: Mapping) -> C:
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} arguments: {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(fields))}")
        return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def _coerce(kind: Any, value: Any) -> Any:
    """JSON value -> the field's type (lists to tuples, ints to floats where declared)."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value)
    if origin is tuple:
        return tuple(_coerce(args[0], v) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def argument_text(value: Any) -> str:
    """A value as it is written on the command line (tuples as comma lists)."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _parse_value(kind: Any, text: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union:
        if text.lower() in ("none", "null", ""):
            return None
        return _parse_value([a for a in args if a is not type(None)][0], text)
    if origin is tuple:
        return tuple(_parse_value(args[0], part) for part in text.split(",") if part.strip())
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false)")
    return kind(text)


def parse_assignments(config: Type[ArchConfig], assignments: Sequence[str]) -> Dict[str, Any]:
    """``["depths=2,2,6,2", "window_size=8"]`` -> ``{"depths": (2, 2, 6, 2), "window_size": 8}``.

    Raises:
        ValueError: a malformed assignment, an unknown name, a value of the wrong type or out of its
            field's range (:attr:`ArchConfig.LIMITS`), or an argument a training option sets
            (``nb_channels``, ``nb_bins``), naming the accepted fields.
    """
    hints = typing.get_type_hints(config)
    names = [f.name for f in dataclasses.fields(config)]
    out: Dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--arch-args {item!r}: write NAME=VALUE (names: {', '.join(names)})")
        if key not in hints or key not in names:
            raise ValueError(f"--arch-args {item!r}: {config.__name__} has no argument {key!r} "
                             f"(names: {', '.join(names)})")
        if key in SET_BY_OPTIONS:
            raise ValueError(f"--arch-args {item!r}: {key} is set by {SET_BY_OPTIONS[key]}; use that option")
        try:
            out[key] = _parse_value(hints[key], text.strip())
        except ValueError as exc:
            raise ValueError(f"--arch-args {item!r}: {exc}") from exc
        problem = config.limit_problem(key, out[key])
        if problem:
            raise ValueError(f"--arch-args {item!r}: {key} {problem}")
    return out
