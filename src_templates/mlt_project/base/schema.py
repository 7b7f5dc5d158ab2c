"""The one type checker: a mapping of options against a signature, with one-line errors.

params.yaml's sections are read into the dataclasses of config.py through it, and the options of
what the code builds from params (a network's `model.<name>:` section, `augment:`, the
optimizer's keys of `training:`) are checked through it against the `__init__` that takes them.
The signature is the schema: an option is added by adding a parameter (and its value in
params.yaml); an unknown key, a missing one without a default or a value of the wrong type is a
ConfigError naming the key, and a ValueError the constructor raises becomes one too.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError


def parameters(target: Callable[..., Any], skip: int = 0) -> dict[str, inspect.Parameter]:
    """The keyword options of `target` (a class: its __init__), after `skip` positional ones
    that the code passes itself (self aside)."""
    found = list(inspect.signature(target).parameters.values())[skip:]
    return {p.name: p for p in found if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def hints(target: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(target.__init__ if isinstance(target, type) else target)


def check(
    where: str,
    options: Mapping[str, Any],
    target: Callable[..., Any],
    skip: int = 0,
    also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`options` checked against `target`'s parameters after `skip`; return them as keyword
    arguments (an integer given for a float becomes a float). `where` names the section in the
    messages ('augment', 'model.cnn'); `also` lists other keys the section holds, for the
    message about an unknown one."""
    known = parameters(target, skip)
    types_of = hints(target)
    for key in options:
        if key not in known:
            takes = ", ".join([*also, *known]) or "no options"
            raise ConfigError(f"unknown key '{where}.{key}'; {where} takes {takes}")
    values: dict[str, Any] = {}
    for name, parameter in known.items():
        if name not in options:
            if parameter.default is inspect.Parameter.empty:
                raise ConfigError(f"missing key '{where}.{name}'; add it (see PROJECT.md)")
            continue
        values[name] = checked_value(f"{where}.{name}", options[name], types_of.get(name, Any))
    return values


def build(
    where: str,
    options: Mapping[str, Any],
    target: Callable[..., Any],
    *args: Any,
    also: tuple[str, ...] = (),
) -> Any:
    """target(*args, **options), the options checked first (see `check`); a ValueError it raises
    (a value out of range) is a ConfigError naming the section."""
    values = check(where, options, target, skip=len(args), also=also)
    try:
        return target(*args, **values)
    except ValueError as error:
        raise ConfigError(f"section '{where}': {error}") from None


def split(
    where: str, options: Mapping[str, Any], targets: dict[Callable[..., Any], int]
) -> list[dict[str, Any]]:
    """One section's options shared out among several targets by their parameter names
    (target -> how many positional parameters it takes first); a key none takes is unknown."""
    owned = [set(parameters(target, skip)) for target, skip in targets.items()]
    unknown = sorted(set(options) - set().union(*owned))
    if unknown:
        takes = ", ".join(name for names in owned for name in sorted(names))
        raise ConfigError(f"unknown key '{where}.{unknown[0]}'; {where} takes {takes}")
    return [{k: v for k, v in options.items() if k in names} for names in owned]


def checked_value(key: str, value: Any, hint: Any) -> Any:
    """`value` if it matches `hint` (a float for an integer given as a float), else ConfigError."""
    if hint is Any or matches(value, hint):
        return float(value) if hint is float else value
    raise ConfigError(
        f"key '{key}' is {value!r} ({type(value).__name__}), expected {describe(hint)}"
    )


def matches(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML fits a type hint: int, float, str, bool, None, a list or
    tuple of those, a mapping, a union. Any other hint (a class, a Literal) is left to the
    constructor that takes the value."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and Ellipsis not in args:
            return len(value) == len(args) and all(map(matches, value, args))
        return all(matches(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, option) for option in args)
    return True


def describe(hint: Any) -> str:
    """A type hint in words, for the messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(option) for option in args)
    if origin is tuple and Ellipsis not in args:
        return f"a list of {len(args)} ({', '.join(describe(arg) for arg in args)})"
    if origin in (list, tuple):
        return f"a list of {describe(args[0])}"
    if origin is dict or hint is dict:
        return "a mapping of keys to values"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, "null")
