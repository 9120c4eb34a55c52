"""Typed fields of the adaptation's settings dataclasses (`LossWeights`, `TransformConfig`).

A field's annotation is its contract: `convert` turns a value, or the text of a CLI `KEY=VALUE`,
into that type, or raises ValueError. The dataclasses check every field on construction, so a wrong
setting is refused before any footage is decoded instead of failing inside a loss mid-run.
"""

from __future__ import annotations

import functools
import math
import numbers
import typing
from dataclasses import fields

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@functools.cache
def field_types(cls: type) -> dict[str, object]:
    """{field name: annotated type} of a dataclass (its string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def convert(value, kind):
    """`value` as `kind` (bool, int, float, str or a tuple of them); text is parsed, e.g. '0,2,3' for a tuple."""
    if typing.get_origin(kind) is tuple:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError(value)
        args = typing.get_args(kind)
        if args[-1] is Ellipsis:
            args = (args[0],) * len(items)
        elif len(items) != len(args):
            raise ValueError(value)
        return tuple(convert(item, item_kind) for item, item_kind in zip(items, args, strict=True))
    if isinstance(value, str):
        return _parse(value.strip(), kind)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(value)


def _parse(text: str, kind):
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(text)
    number = kind(text)  # int('1.5') and float('abc') raise ValueError
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def expected(kind) -> str:
    """What a value of `kind` looks like, for error messages."""
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if typing.get_origin(kind) is not tuple:
        return names[kind]
    args = typing.get_args(kind)
    item = "whole numbers" if args[0] is int else "numbers"
    if args[-1] is Ellipsis:
        return f"{item} separated by commas"
    return f"{len(args)} {item} separated by commas"


def as_text(value) -> str:
    """A field value as a CLI would write it: 0,2,3 for a tuple, true/false for a bool."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def check_fields(instance) -> None:
    """Convert every field of a settings dataclass to its annotated type, in place."""
    for name, kind in field_types(type(instance)).items():
        value = getattr(instance, name)
        try:
            setattr(instance, name, convert(value, kind))
        except ValueError:
            raise ValueError(f"{name} must be {expected(kind)}, got {value!r}") from None
