"""Event lines exactly as `EventWriter` writes them, recognised without decoding them.

``affiner runs`` from a fresh process reads every line of every run's ``events.jsonl``: over
200 folders that is a hundred thousand lines, nearly all ``train_log`` and ``system``, and
decoding each with `json` and checking it against the schema (`affiner.runner.run.schema`)
cost seconds. Yet a listing needs little from those lines: that they are valid, a step, and
whether a loss was logged; only the last one is used whole.

So this module builds, from the event dataclasses themselves, one regular expression per
type that matches a line only when it is in the writer's own form (`json.dumps` with its
default separators, fields in declaration order, ``type`` last) and every value is one the
schema would accept: a whole number of at most as many digits as its ceiling allows, a
number without a sign unless the field allows one and without a positive exponent, ``null``
only where the field may be None. What it matches, the schema accepts, and to the same
values; what it does not match (a hand-edited line, a newer writer's extra field, a bad
value, a string with an escape or outside printable ASCII) is not judged here: the caller
decodes it the ordinary way. A field of a kind this module does not express (a mapping) means
the type has no pattern and its lines always go the ordinary way.

Only the standard library, like the schema it mirrors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from affiner.runner.run.schema import FLOAT_MAX, INT_MAX, check_value

#: Most digits before the point for an unbounded number: 10**300 is still a finite float.
MOST_DIGITS = 300


def _digits(high: float) -> int | None:
    """How many digits a whole part may have so that every such number stays within `high`.

    A number of d digits before the point (and any fraction, or a negative exponent) is below
    10**d, and a float rounded from it is at most 10**d: so d is the largest with 10**d <= high.
    """
    if high < 1:
        return None
    if math.isinf(high):
        return MOST_DIGITS
    digits = min(MOST_DIGITS, math.floor(math.log10(high)) + 1)
    while 10**digits > high:  # exact, where log10 of a float rounds
        digits -= 1
    return digits


def _whole_part(digits: int) -> str:
    return "0" if digits == 0 else f"(?:0|[1-9][0-9]{{0,{digits - 1}}}+)"


def _number_pattern(meta: Mapping[str, Any]) -> str | None:
    """A JSON number the schema's float check accepts as it is (see `_digits`)."""
    low, high = meta.get("low", 0.0), meta.get("high", FLOAT_MAX)
    if low > 0:
        return None
    digits = _digits(high if low == 0 else min(high, -low))
    if digits is None:
        return None
    sign = "-?" if low < 0 else ""
    # a point or an exponent, as `repr` of a float always has: json.loads then gives a float
    return f"{sign}{_whole_part(digits)}(?:\\.[0-9]++(?:[eE]-[0-9]++)?+|[eE]-[0-9]++)"


def _whole_pattern(meta: Mapping[str, Any]) -> str | None:
    """A JSON integer (no point, no exponent) within the schema's range for whole numbers."""
    low = max(meta.get("low", 0), -INT_MAX)
    high = min(meta.get("high", INT_MAX), INT_MAX)
    if low > 0:
        return None
    digits = _digits(high if low == 0 else min(high, -low))
    if digits is None:
        return None
    return ("-?" if low < 0 else "") + _whole_part(digits)


def _value_pattern(hint: Any, meta: Mapping[str, Any]) -> str | None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        real = [option for option in options if option is not type(None)]
        if len(real) != 1:
            return None
        inner = _value_pattern(real[0], meta)
        if inner is None:
            return None
        return f"(?:{inner}|null)" if type(None) in options else inner
    if hint is bool:
        return "(?:true|false)"
    if hint is int:
        return _whole_pattern(meta)
    if hint is float:
        return _number_pattern(meta)
    if hint is str:
        allowed = meta.get("choices")
        if allowed:
            return "(?:" + "|".join(re.escape(json.dumps(choice)) for choice in allowed) + ")"
        # printable ASCII without a quote or a backslash: a string json.loads reads as it is
        return '"[ !#-\\[\\]-~]*+"'
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        item = _value_pattern(item_hint, meta)
        return None if item is None else f"\\[(?:{item}(?:, {item})*+)?\\]"
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _object_pattern(hint)
    return None  # mappings and the rest: left to the ordinary decoding


def _fields_pattern(cls: type, captured: tuple[str, ...] = (), prefix: str = "") -> str | None:
    """``"name": value`` for every field of `cls` in the order `dataclasses.asdict` writes them;
    the fields in `captured` become groups named `prefix` + the field's name."""
    hints = typing.get_type_hints(cls)
    parts = []
    for spec in dataclasses.fields(cls):
        if not spec.init:
            return None  # asdict writes it, the schema ignores it: not worth a pattern
        value = _value_pattern(hints[spec.name], spec.metadata)
        if value is None:
            return None
        if spec.name in captured:
            value = f"(?P<{prefix}{spec.name}>{value})"
        parts.append(re.escape(json.dumps(spec.name)) + ": " + value)
    return ", ".join(parts)


def _object_pattern(cls: type) -> str | None:
    fields = _fields_pattern(cls)
    return None if fields is None else "\\{" + fields + "\\}"


def event_line_body(cls: type, captured: tuple[str, ...] = ()) -> str | None:
    """The pattern of one line of event type `cls` as `EventWriter` writes it, or None.

    The fields named in `captured` are groups named ``TYPE_FIELD`` (``train_log_step``),
    holding their raw JSON text; the whole line is the group named by the type.

    Args:
        cls: an `affiner.runner.run.events.Event` subclass (its ``type`` is written last).
        captured: fields a caller reads without decoding the line.
    """
    kind: str = cls.type  # type: ignore[attr-defined]
    fields = _fields_pattern(cls, captured, prefix=f"{kind}_")
    if fields is None:
        return None
    ending = re.escape(json.dumps("type")) + ": " + re.escape(json.dumps(kind))
    return f"(?P<{kind}>\\{{{fields}, {ending}\\}})"


def event_lines_pattern(
    classes: tuple[type, ...], captured: tuple[str, ...] = ()
) -> re.Pattern[bytes] | None:
    """One pattern for whole lines of any of `classes` in the writer's form (see the module doc).

    Search it in a block of lines that starts and ends with a newline: each match is a newline
    and the whole line after it (the next newline is looked at, not taken, so back-to-back
    lines all match). Starting at a literal newline lets the search skip ahead to candidates
    instead of trying every byte, which a ``^`` anchor would make it do. ``match.lastgroup``
    is the matched line's event type, and that group holds the line. Types without a pattern
    are left out; None when none is left.
    """
    bodies = [body for cls in classes if (body := event_line_body(cls, captured)) is not None]
    if not bodies:
        return None
    return re.compile(("\\n(?:" + "|".join(bodies) + ")(?=\\n)").encode("ascii"))


def iter_block(pattern: re.Pattern[bytes], data: bytes) -> Iterator[bytes | re.Match[bytes]]:
    """The complete lines of `data` (no trailing newline) in order: each line in the writer's
    form as its match, and each stretch of other lines as one block of bytes (split it on
    newlines: an empty block is one blank line).
    """
    taken = 0  # where the next line not yet given starts, in `data`
    # a match starts at the newline before its line, so in `data` that line starts at
    # match.start(); the newline after it is looked at, not taken (see `event_lines_pattern`)
    for match in pattern.finditer(b"\n" + data + b"\n"):
        if match.start() > taken:
            yield data[taken : match.start() - 1]
        yield match
        taken = match.end()
    if taken <= len(data):
        yield data[taken:]


@dataclass(frozen=True)
class WriterForm:
    """Lines of some event types in the writer's form, and how to build their events.

    Attributes:
        pattern: `event_lines_pattern` of the types.
        kinds: per event type, its class and the fields whose decoded JSON still needs the
            schema's check to become what the class holds (lists of nested objects).
    """

    pattern: re.Pattern[bytes]
    kinds: Mapping[str, tuple[type, tuple[tuple[str, Any, Mapping[str, Any]], ...]]]

    def events(self, run: list[re.Match[bytes]]) -> list[Any]:
        """The events of consecutive matched lines, equal to what decoding and checking each
        line would give: one `json.loads` for the whole run (the pattern has already checked
        every value, and a float in it always reads as a float), no per-line checks."""
        texts = [match[match.lastgroup or 0] for match in run]
        out = []
        for match, data in zip(run, json.loads(b"[" + b",".join(texts) + b"]"), strict=True):
            cls, nested = self.kinds[match.lastgroup or ""]
            del data["type"]
            for name, hint, meta in nested:
                data[name] = check_value(data[name], hint, meta, name)
            out.append(cls(**data))
        return out


def writer_form(classes: tuple[type, ...]) -> WriterForm | None:
    """The `WriterForm` of those of `classes` that have a pattern; None when none has."""
    kept = tuple(cls for cls in classes if event_line_body(cls) is not None)
    if not kept:
        return None
    pattern = event_lines_pattern(kept)
    assert pattern is not None
    kinds = {}
    for cls in kept:
        hints = typing.get_type_hints(cls)
        nested = tuple(
            (spec.name, hints[spec.name], spec.metadata)
            for spec in dataclasses.fields(cls)
            if typing.get_origin(hints[spec.name]) is list
            or dataclasses.is_dataclass(hints[spec.name])
        )
        kinds[cls.type] = (cls, nested)  # type: ignore[attr-defined]
    return WriterForm(pattern, kinds)
