"""Checks of settings against a dataclass's type hints: each problem is one line that names the key.

A problem is returned as text (or None) so the caller can say where the setting came from: a config
file and its key (`flowcli train -c`), or a command-line flag (`flowcli adapt --loss KEY=VALUE`).
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from dataclasses import fields
from typing import Any, Callable

# What a well-typed value must also satisfy, and the whole expectation in words.
Rule = tuple[Callable[[Any], bool] | None, str]
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def matches_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (lists stand for tuples; ints for floats; NaN fits nothing)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches_type, value, args))
        return not args or all(matches_type(item, args[0]) for item in value)
    return True  # a type JSON cannot spell is left to the dataclass


def describe_type(hint: Any) -> str:
    """A type hint in words, as the value a JSON file must hold: "an integer", "a list of strings"..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arm) for arm in args)
    if origin in (list, tuple) and args:
        if origin is tuple and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_PLURALS.get(args[0], 'values')}"
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    return "a JSON object" if hint is dict or origin is dict else "a list" if hint in (list, tuple) else str(hint)


def unknown_key_problem(keys: list[str], known: list[str]) -> str | None:
    """'unknown key "x"' with the closest known key, or all of them; None when every key is known."""
    unknown = [key for key in keys if key not in known]
    if not unknown:
        return None
    closest = difflib.get_close_matches(unknown[0], known, n=1)
    if closest:
        return f'unknown key "{unknown[0]}"; did you mean "{closest[0]}"?'
    return f'unknown key "{unknown[0]}"; known keys: {", ".join(known)}'


def value_problem(value: Any, hint: Any, rule: Rule | None = None) -> str | None:
    """The problem as 'must be <expected>, got <value>' when `value` breaks the type hint or the rule, else None."""
    test, expected = rule or (None, describe_type(hint))
    if matches_type(value, hint) and (test is None or test(value)):
        return None
    return f"must be {expected}, got {json.dumps(value, default=repr)}"


def dataclass_problem(
    config_class: type,
    data: dict,
    prefix: str = "",
    exclude: tuple[str, ...] = (),
    rules: dict[str, Rule] | None = None,
) -> str | None:
    """The first problem of `data` as keyword arguments of `config_class` (an unknown key, a wrong type,
    or a broken rule of `rules`, by field), or None.

    `prefix` names the enclosing key ("model.") and `exclude` the fields a file may not set.
    """
    known = [f.name for f in fields(config_class) if f.name not in exclude]
    problem = unknown_key_problem(list(data), known)
    if problem:
        return f'"{prefix.rstrip(".")}": {problem}' if prefix else problem
    hints = typing.get_type_hints(config_class)
    for key, value in data.items():
        problem = value_problem(value, hints[key], (rules or {}).get(key))
        if problem:
            return f'"{prefix}{key}" {problem}'
    return None
