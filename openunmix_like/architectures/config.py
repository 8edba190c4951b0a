"""Constructor-argument dataclasses shared by the architectures.

A model on disk is a state dict plus the exact arguments of its constructor,
as JSON: :meth:`ArchConfig.to_dict` writes them, :meth:`ArchConfig.from_dict`
reads them back (JSON lists become the tuples the dataclass declares), and
:func:`parse_assignments` turns ``KEY=VALUE`` strings from the command line
into the same arguments, typed by the dataclass fields.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Mapping, Sequence, Type, TypeVar

C = TypeVar("C", bound="ArchConfig")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Base of every architecture's constructor arguments."""

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
        ValueError: a malformed assignment, an unknown name or a value of the wrong type,
            naming the accepted fields.
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
        try:
            out[key] = _parse_value(hints[key], text.strip())
        except ValueError as exc:
            raise ValueError(f"--arch-args {item!r}: {exc}") from exc
    return out
