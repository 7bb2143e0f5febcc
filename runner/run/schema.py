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
from collections.abc import Mapping
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


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (cached: every line of a log asks again)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


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
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        name = f"{where}{spec.name}"
        if spec.name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{name!r} is missing", field=name)
            continue
        kwargs[spec.name] = check_value(data[spec.name], hints[spec.name], spec.metadata, name)
    return kwargs


def field_problems(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Like `check_fields`, but a value that does not fit is dropped (its default applies) and
    described, instead of failing the whole object: for ``status.json``, whose good fields (the
    worker's pid) still matter when one is bad."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for spec in dataclasses.fields(cls):
        if not spec.init or spec.name not in data:
            continue
        try:
            kwargs[spec.name] = check_value(
                data[spec.name], hints[spec.name], spec.metadata, spec.name
            )
        except SchemaError as exc:
            problems.append(str(exc))
    return kwargs, problems


def check_value(value: Any, hint: Any, meta: Mapping[str, Any], name: str) -> Any:
    """`value` as field `name` of type `hint` holds it (ints for floats, checked dataclasses for
    dicts), or SchemaError saying what was expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        real = [option for option in options if option is not type(None)]
        if len(real) == 1:
            return check_value(value, real[0], meta, name)
        raise SchemaError(
            f"{name!r} has an unsupported type {hint}", field=name
        )  # (a programming error)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _bad(name, value, "not true or false")
    if hint is int:
        return _whole(value, meta, name)
    if hint is float:
        return _number(value, meta, name)
    if hint is str:
        if isinstance(value, str):
            allowed = meta.get("choices")
            if allowed and value not in allowed:
                raise _bad(name, value, f"not one of {', '.join(allowed)}")
            return value
        raise _bad(name, value, "not a string")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise _bad(name, value, "not a list")
        return [check_value(v, item, meta, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, key_type) for k in value):
            raise _bad(name, value, "not an object of named values")
        return {k: check_value(v, item, meta, f"{name}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise _bad(name, value, "not an object")
        return hint(**check_fields(hint, value, where=f"{name}."))
    raise SchemaError(
        f"{name!r} has an unsupported type {hint}", field=name
    )  # (a programming error)


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
