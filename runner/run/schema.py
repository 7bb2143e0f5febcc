"""What a value in ``events.jsonl`` or ``status.json`` may be: the checks every reader applies.

The run folder is written by a process that can die mid-write, fill a disk, or be an older or
newer affiner; people edit it and tools inject into it. A reader that trusted a line's types
would crash on ``"step": "12"`` (a string where a number goes) or rank an injected
``eval loss -7`` best. So each decoded object is checked against the dataclass it claims to be,
here, once, at the parse boundary: every screen and command downstream then handles only
values of the declared type and a sane range, and never has to re-check.

The rules come from the dataclasses themselves: a field's type annotation says the kind
(``int``, ``float | None``, ``list[GpuSample]``...), and its ``metadata`` may narrow the range
(`RATIO`, `SIGNED`, `UNBOUNDED`, `UNIX_TIME`, ``choices``). Without metadata, a number is finite
and not negative (a loss, a step, a byte count, a duration), and below a ceiling that keeps
arithmetic and formatting on it from overflowing.

Only the standard library: this is imported by the worker, the CLI and the TUI alike.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

#: Largest whole number accepted (exactly representable as a float, far above any step or byte count).
INT_MAX = 2**53
#: Largest magnitude accepted for a float without `UNBOUNDED` (a diverged loss stays far below;
#: ``round(x * 1000)`` and friends on it cannot overflow).
FLOAT_MAX = 1e18
#: Unix times are at most this (year 5138): beyond, ``datetime.fromtimestamp`` fails.
TIME_MAX = 1e11

#: Field metadata: a share between 0 and 1 (accuracy, F1).
RATIO: Mapping[str, Any] = types.MappingProxyType({"low": 0.0, "high": 1.0})
#: Field metadata: any finite number, negative included (a metric of unknown kind).
SIGNED: Mapping[str, Any] = types.MappingProxyType({"low": -math.inf, "high": math.inf})
#: Field metadata: any finite, non-negative number, however large (a perplexity).
UNBOUNDED: Mapping[str, Any] = types.MappingProxyType({"low": 0.0, "high": math.inf})
#: Field metadata: a unix time in seconds.
UNIX_TIME: Mapping[str, Any] = types.MappingProxyType({"low": 0.0, "high": TIME_MAX})


def choices(*allowed: str) -> Mapping[str, Any]:
    """Field metadata: a string that must be one of `allowed` (a run's state)."""
    return types.MappingProxyType({"choices": tuple(allowed)})


class SchemaError(ValueError):
    """A decoded value does not fit its field; the message names the field and what it needed.

    Attributes:
        field: the field's name (``gpus[0].index`` inside a nested one; "" for the whole
            object): what a reader counts skipped lines by.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def _bad(name: str, value: Any, expected: str) -> SchemaError:
    return SchemaError(f"{name!r} is {_shown(value)}, {expected}", field=name)


Checker = Callable[[Any, Mapping[str, Any], str], Any]

#: Per dataclass, its init fields once resolved: (name, checker, metadata, required). Every line
#: of a log asks again, so the annotations are resolved and compiled the first time only.
_FIELDS: dict[type, tuple[tuple[str, Checker, Mapping[str, Any], bool], ...]] = {}
#: Per type hint, the function that checks a value against it (see `_compile`).
_CHECKERS: dict[Any, Checker] = {}


def _fields(cls: type) -> tuple[tuple[str, Checker, Mapping[str, Any], bool], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _FIELDS[cls] = tuple(
            (
                spec.name,
                _checker(hints[spec.name]),
                spec.metadata,
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING,
            )
            for spec in dataclasses.fields(cls)
            if spec.init
        )
    return found


def _shown(value: Any) -> str:
    """A short rendering of a bad value for a message (a 200 MiB string is not repeated)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(cls: type, data: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """The keyword arguments that build `cls` from `data`, each value checked against its field.

    Keys `cls` does not declare are left out (a newer writer's fields never break an older
    reader); a missing key takes the field's default.

    Raises:
        SchemaError: a value does not fit (the first one found), or a field without a default
            is missing.
    """
    kwargs: dict[str, Any] = {}
    for field_name, check, meta, required in _fields(cls):
        if field_name not in data:
            if required:
                name = f"{where}{field_name}"
                raise SchemaError(f"{name!r} is missing", field=name)
            continue
        kwargs[field_name] = check(data[field_name], meta, f"{where}{field_name}")
    return kwargs


def field_problems(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Like `check_fields`, but a value that does not fit is dropped (its default applies) and
    described, instead of failing the whole object: for ``status.json``, whose good fields (the
    worker's pid) still matter when one is bad."""
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for field_name, check, meta, _required in _fields(cls):
        if field_name not in data:
            continue
        try:
            kwargs[field_name] = check(data[field_name], meta, field_name)
        except SchemaError as exc:
            problems.append(str(exc))
    return kwargs, problems


def check_value(value: Any, hint: Any, meta: Mapping[str, Any], name: str) -> Any:
    """`value` as field `name` of type `hint` holds it (ints for floats, checked dataclasses for
    dicts), or SchemaError saying what was expected."""
    return _checker(hint)(value, meta, name)


def _checker(hint: Any) -> Checker:
    found = _CHECKERS.get(hint)
    if found is None:
        found = _CHECKERS[hint] = _compile(hint)
    return found


def _unsupported(hint: Any) -> Checker:
    def check(value: Any, meta: Mapping[str, Any], name: str) -> Any:
        raise SchemaError(f"{name!r} has an unsupported type {hint}", field=name)  # (a bug)

    return check


def _compile(hint: Any) -> Checker:
    """The check for one type hint, decided once: the hint's shape never changes per line."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        none_ok = type(None) in options
        real = [option for option in options if option is not type(None)]
        inner = _checker(real[0]) if len(real) == 1 else _unsupported(hint)

        def optional(value: Any, meta: Mapping[str, Any], name: str) -> Any:
            if value is None and none_ok:
                return None
            return inner(value, meta, name)

        return optional
    if hint is bool:
        return _boolean
    if hint is int:
        return _whole
    if hint is float:
        return _number
    if hint is str:
        return _text
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        item = _checker(item_hint)

        def listed(value: Any, meta: Mapping[str, Any], name: str) -> list[Any]:
            if not isinstance(value, list):
                raise _bad(name, value, "not a list")
            return [item(v, meta, f"{name}[{i}]") for i, v in enumerate(value)]

        return listed
    if origin is dict:
        key_type, item_hint = typing.get_args(hint)
        item = _checker(item_hint)

        def mapped(value: Any, meta: Mapping[str, Any], name: str) -> dict[Any, Any]:
            if not isinstance(value, dict) or not all(isinstance(k, key_type) for k in value):
                raise _bad(name, value, "not an object of named values")
            return {k: item(v, meta, f"{name}.{k}") for k, v in value.items()}

        return mapped
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):

        def nested(value: Any, meta: Mapping[str, Any], name: str) -> Any:
            if not isinstance(value, dict):
                raise _bad(name, value, "not an object")
            return hint(**check_fields(hint, value, where=f"{name}."))

        return nested
    return _unsupported(hint)


def _boolean(value: Any, meta: Mapping[str, Any], name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _bad(name, value, "not true or false")


def _text(value: Any, meta: Mapping[str, Any], name: str) -> str:
    if isinstance(value, str):
        allowed = meta.get("choices")
        if allowed and value not in allowed:
            raise _bad(name, value, f"not one of {', '.join(allowed)}")
        return value
    raise _bad(name, value, "not a string")


def _whole(value: Any, meta: Mapping[str, Any], name: str) -> int:
    """A whole number in range; ``12.0`` reads as 12 (a writer that logged a float step)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= INT_MAX:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(name, value, "not a whole number")
    low = max(meta.get("low", 0), -INT_MAX)
    high = min(meta.get("high", INT_MAX), INT_MAX)
    if not low <= value <= high:
        raise _bad(name, value, f"outside {_range(low, high)}")
    return value


def _number(value: Any, meta: Mapping[str, Any], name: str) -> float:
    """A finite number in range, as a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _bad(name, value, "not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _bad(name, value, "too large") from None
    if not math.isfinite(number):
        raise _bad(name, value, "not a finite number")
    low = meta.get("low", 0.0)
    high = meta.get("high", FLOAT_MAX)
    if number < low:
        raise _bad(name, value, f"below {low:g}")
    if number > high:
        raise _bad(name, value, f"above {high:g}")
    return number


def _range(low: float, high: float) -> str:
    return f"{low:g}..{high:g}"
