"""Typed fields of the adaptation's settings dataclasses (`LossWeights`, `TransformConfig`).

A field's annotation is its contract: `convert` turns a value, or the text of a CLI `KEY=VALUE`,
into that type, or raises ValueError. The dataclasses check every field on construction, so a wrong
setting is refused before any footage is decoded instead of failing inside a loss mid-run.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import fields

from flowcli.validation import matches_type

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@functools.cache
def field_types(cls: type) -> dict[str, object]:
    """{field name: annotated type} of a dataclass (its string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def convert(value, kind):
    """`value` as `kind` (bool, int, float, str or a tuple of them); text is parsed, e.g. '0,2,3' for a tuple."""
    if isinstance(value, str) and kind is not str:
        value = _parse(value.strip(), kind)
    if not matches_type(value, kind) or (typing.get_origin(kind) is tuple and not value):
        raise ValueError(value)
    return _as(value, kind)


def _parse(text: str, kind):
    """CLI text as a value of `kind`; what does not parse is returned as it is, for `matches_type` to refuse."""
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [_parse(item, args[0] if args[-1] is Ellipsis else arg) for item, arg in zip(items, args * len(items))]
    if kind is bool:
        lowered = text.lower()
        return lowered in _TRUE if lowered in _TRUE + _FALSE else text
    try:
        return kind(text)  # int('1.5') and float('abc') raise ValueError
    except ValueError:
        return text


def _as(value, kind):
    """A value that matches `kind` in exactly that type: ints become floats where floats are declared, lists tuples."""
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        item_kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_as(item, item_kind) for item, item_kind in zip(value, item_kinds, strict=True))
    return float(value) if kind is float else value


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
