"""Loading rows without a tokenizer: read, bound, validate, collect labels, dedupe, limit, split, leakage.

The order of operations, each counted in `LoadedData`: read every row (streaming, one row at a
time), cut each text to the character budget of ``[data].max_seq_len`` and validate it (a
conversation is trimmed to its last assistant reply); collect
class labels (classification); drop exact duplicates within each split; apply ``[data].limit``
(first rows in file order); split off ``eval_fraction`` of train with ``[data].seed`` when there
is no eval file or bundled eval split; drop eval rows that also occur in train (leakage).

The pre-launch check (`affiner.runner.run.validate`) and the worker both call `load_rows`, so a
row is judged by one set of rules before and after the launch. The check passes
``keep_rows=False``: each row is then kept only as a digest (and its label), which is all the
duplicate, split and leakage rules need, so checking a large file costs little memory.
Public names are re-exported by `affiner.runner.data.prepare`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

from affiner.runner.config import DataSection
from affiner.runner.data.files import BadRecord, DataError, RawRow, Record, read_source
from affiner.runner.data.formats import (
    RowProblem,
    chat_messages,
    detect_format,
    label_name,
    normalize_row,
    rename_columns,
    sort_labels,
)

SHOW_DROPPED = 5
#: Rows looked at to detect the format and check ``[data].columns``.
DETECT_ROWS = 200
#: Characters per token that no tokenizer reaches on average over a long text: BPE vocabularies
#: average 3-5 characters a token on English and fewer elsewhere. A text cut to this many
#: characters per ``max_seq_len`` token still fills ``max_seq_len`` tokens, so the cut changes
#: nothing the model sees, yet a 200 MB line can no longer reach the tokenizer.
CHARS_PER_TOKEN_CEILING = 32


def char_budget(max_seq_len: int) -> int:
    """The most characters of one text (a field, or a conversation's turns together) kept."""
    return max(1, max_seq_len) * CHARS_PER_TOKEN_CEILING


@dataclass
class Example:
    """A validated row in canonical fields (see `affiner.runner.data.formats`) and where it came from.

    Attributes:
        data: the canonical fields; with ``keep_rows=False`` only the label (classification).
        where: ``file:line``.
        key: the row's identity for duplicates and leakage when `data` was not kept.
    """

    data: dict[str, Any]
    where: str
    key: str | None = None


@dataclass
class DroppedRow:
    """A row left out: where it is, why, and from which split.

    Attributes:
        category: the reason without its particulars, when the check that refused it named one.
    """

    where: str
    reason: str
    split: str = "train"
    category: str = ""

    @property
    def kind(self) -> str:
        """The reason without its particulars, for counting alike problems together."""
        if self.category:
            return self.category
        return re.sub(r"\d+", "N", self.reason.split(" (")[0])

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class LoadedData:
    """Validated rows per split and everything that happened on the way.

    Attributes:
        train, eval: the rows to use.
        format: the data format (detected or from ``[data].format``).
        task: ``causal_lm`` or ``classification``.
        labels: class names in id order (classification), else empty.
        dropped: every row left out, with its place and reason.
        rows_read: records read per split (``{"train": 1000, "eval": 0}``), eval counting only
            an eval file or bundled split.
        duplicates_removed: exact duplicates dropped per split.
        leaked: eval rows dropped because the same row is in train.
        limited: training rows left out by ``[data].limit``.
        eval_source: where the eval rows came from, in words.
        sources: the files, folders or hub ids read.
        cut_rows: rows with a text longer than `char_budget` characters, cut to it.
        char_budget: that budget.
        out_of_order: chat rows whose user and assistant turns do not alternate.
        out_of_order_examples: the first few of them, ``where: why``.
        trimmed: conversations that ended on turns after their last assistant reply (a user
            turn nobody answered), trimmed to that reply.
        trimmed_examples: the first few of them, ``file:line``.
    """

    train: list[Example]
    eval: list[Example]
    format: str
    task: str
    labels: list[str] = field(default_factory=list)
    dropped: list[DroppedRow] = field(default_factory=list)
    rows_read: dict[str, int] = field(default_factory=dict)
    duplicates_removed: dict[str, int] = field(default_factory=dict)
    leaked: int = 0
    limited: int = 0
    eval_source: str = "none"
    sources: list[str] = field(default_factory=list)
    cut_rows: int = 0
    char_budget: int = 0
    out_of_order: int = 0
    out_of_order_examples: list[str] = field(default_factory=list)
    trimmed: int = 0
    trimmed_examples: list[str] = field(default_factory=list)

    @property
    def drop_reasons(self) -> dict[str, int]:
        """How many rows were dropped for each kind of problem, most common first."""
        return dict(Counter(d.kind for d in self.dropped).most_common())


def row_key(example: Example) -> str:
    if example.key is not None:
        return example.key
    return json.dumps(example.data, sort_keys=True, ensure_ascii=False)


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def cut_values(values: Any, budget: int) -> tuple[Any, bool]:
    """`values` with each text field, and a list field's texts together, cut to `budget` characters.

    Returns the values (a new dict when anything was cut; the row read is never changed in
    place) and whether anything was cut. See `_cut_turns` for a conversation.
    """
    if not isinstance(values, dict):
        return values, False
    out: dict[str, Any] | None = None
    for key, value in values.items():
        new = value
        if isinstance(value, str) and len(value) > budget:
            new = value[:budget]
        elif isinstance(value, list):
            new = _cut_turns(value, budget)
        if new is not value:
            out = out if out is not None else dict(values)
            out[key] = new
    return (out, True) if out is not None else (values, False)


#: Turn keys that name the speaker: never cut, so a cut conversation keeps its roles.
ROLE_KEYS = ("role", "from")


def _cut_turns(turns: list[Any], budget: int) -> list[Any]:
    """`turns` itself when its texts fit in `budget`, else a cut copy.

    The turns' texts share the budget in order. A turn past it keeps one character, so the
    conversation keeps its shape and tokenizing truncates it exactly as it would the whole
    text (an assistant reply beyond ``max_seq_len`` still leaves nothing to learn from); turns
    past ``max_seq_len`` of them are left out, as each renders to a token at least.
    """
    cap = max(1, budget // CHARS_PER_TOKEN_CEILING)
    left = budget
    out: list[Any] | None = None
    for index, turn in enumerate(turns):
        if index >= cap:
            return out if out is not None else list(turns[:index])
        new = turn
        if isinstance(turn, dict):
            cut: dict[str, str] = {}
            for key, text in turn.items():
                if isinstance(text, str) and key not in ROLE_KEYS:
                    keep = max(left, 1)
                    if len(text) > keep:
                        cut[key] = text[:keep]
                    left = max(0, left - len(text))
            if cut:
                new = {**turn, **cut}
        elif isinstance(turn, str):
            keep = max(left, 1)
            new = turn[:keep] if len(turn) > keep else turn
            left = max(0, left - len(turn))
        if new is not turn and out is None:
            out = list(turns[:index])
        if out is not None:
            out.append(new)
    return out if out is not None else turns


def turn_order_problem(messages: list[dict[str, str]]) -> str | None:
    """Why a conversation's user and assistant turns are out of order, or None when they alternate.

    Chat templates (and the models trained with them) expect user, assistant, user, ... after
    an optional system message; tool turns may sit between an assistant turn and the next.
    """
    previous = None
    for number, message in enumerate(messages, start=1):
        role = message["role"]
        if role not in ("user", "assistant"):
            continue
        if previous is None and role != "user":
            return f"it opens with an {role} turn (turn {number}), not a user turn"
        if role == previous:
            return f"turn {number} is a second {role} turn in a row"
        previous = role
    return None


class _Reader:
    """Turns one split's records into examples, counting what it leaves out or changes."""

    def __init__(self, data: DataSection, fmt: str, out: LoadedData, *, keep_rows: bool) -> None:
        self.data, self.fmt, self.out, self.keep_rows = data, fmt, out, keep_rows
        self.budget = char_budget(data.max_seq_len)

    def examples(self, records: Iterator[Record], split: str) -> tuple[list[Example], int]:
        """The valid examples of `records`, and how many records there were."""
        kept: list[Example] = []
        count = 0
        for record in records:
            count += 1
            if isinstance(record, BadRecord):
                self.out.dropped.append(DroppedRow(record.where, record.reason, split, record.kind))
                continue
            example = self._example(record, split)
            if example is not None:
                kept.append(example)
        return kept, count

    def _example(self, row: RawRow, split: str) -> Example | None:
        values, cut = cut_values(rename_columns(row.values, self.data.columns), self.budget)
        trimmed = 0
        try:
            if self.fmt == "chat":
                messages, trimmed = chat_messages(values)
                normalized: dict[str, Any] = {"messages": messages}
            else:
                normalized = normalize_row(values, self.fmt)
        except RowProblem as problem:
            self.out.dropped.append(DroppedRow(row.where, str(problem), split, problem.kind))
            return None
        self.out.cut_rows += cut
        if trimmed:
            self.out.trimmed += 1
            if len(self.out.trimmed_examples) < SHOW_DROPPED:
                self.out.trimmed_examples.append(row.where)
        if self.fmt == "chat":
            why = turn_order_problem(normalized["messages"])
            if why is not None:
                self.out.out_of_order += 1
                if len(self.out.out_of_order_examples) < SHOW_DROPPED:
                    self.out.out_of_order_examples.append(f"{row.where}: {why}")
        if self.keep_rows:
            return Example(normalized, row.where)
        slim = {"label": normalized["label"]} if "label" in normalized else {}
        return Example(slim, row.where, key=_digest(normalized))


def _resolve_labels(
    examples: list[Example], known: list[str], split: str, out: LoadedData, *, listed: bool
) -> list[Example]:
    """Rows with their label as a class name; rows with a label outside `known` are dropped."""
    kept = []
    for example in examples:
        try:
            name = label_name(example.data["label"], known)
        except RowProblem as problem:
            reason, kind = str(problem), "a label not in [data].labels"
            if listed:
                reason = reason.replace("(known:", "(not in [data].labels:", 1)
            else:  # the classes came from the training rows themselves
                reason = reason.replace("unknown label", "label", 1)
                reason = reason.replace(" (known:", " was not seen in the training data (known:", 1)
                kind = "a label not seen in the training data"
            out.dropped.append(DroppedRow(example.where, reason, split, kind))
            continue
        kept.append(Example({**example.data, "label": name}, example.where, example.key))
    return kept


def _dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = row_key(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def check_dropped(out: LoadedData, data: DataSection, sources: dict[str, str]) -> None:
    """Refuse when a split has more unusable rows than ``[data].max_dropped_fraction`` allows."""
    for split, read in out.rows_read.items():
        bad = [d for d in out.dropped if d.split == split]
        if read and len(bad) / read > data.max_dropped_fraction:
            shown = "\n".join(f"  {d}" for d in bad[:SHOW_DROPPED])
            more = f"\n  … and {len(bad) - SHOW_DROPPED} more" if len(bad) > SHOW_DROPPED else ""
            raise DataError(
                f"{len(bad)} of {read} {split} rows cannot be used ({len(bad) / read:.1%}, above "
                f"[data].max_dropped_fraction = {data.max_dropped_fraction:g}):\n{shown}{more}",
                where=sources.get(split),
                hint="fix those rows, or raise [data].max_dropped_fraction in run.toml to train on the rest",
            )


def _first_keys(head: list[Record], columns: dict[str, str]) -> tuple[set[str], set[str]]:
    """The raw column names of the first rows, and the same after ``[data].columns``."""
    raw: set[str] = set()
    renamed: set[str] = set()
    for record in head:
        if isinstance(record, RawRow) and isinstance(record.values, dict):
            raw |= set(record.values)
            renamed |= set(rename_columns(record.values, columns))
    return raw, renamed


def _check_columns(raw_keys: set[str], data: DataSection, source: str) -> None:
    missing = {k: v for k, v in data.columns.items() if v not in raw_keys}
    if raw_keys and missing:
        canonical, column = next(iter(missing.items()))
        raise DataError(
            f"[data].columns maps {canonical} to {column!r}, which is not a column of this data "
            f"(columns: {', '.join(sorted(raw_keys))})",
            where=source,
            hint="fix the name in [data].columns (the right side is your column, the left side affiner's)",
        )


def _check_classes(train: list[Example], labels: list[str], source: str) -> None:
    """Refuse a classification set with one class: its classifier learns nothing."""
    used = {example.data["label"] for example in train}
    if len(labels) < 2 and len(used) == 1:
        only = next(iter(used))
        raise DataError(
            f"every training row has the label {only!r}: a classifier needs at least two classes",
            where=source,
            hint="add rows of the other classes (and list every class in [data].labels), "
            'or train a text generator on these rows ([model].task = "causal_lm")',
        )


def load_rows(
    data: DataSection,
    *,
    task: str = "causal_lm",
    base_dir: str | os.PathLike[str] | None = None,
    keep_rows: bool = True,
) -> LoadedData:
    """Read, validate, deduplicate and split the data named by ``[data]`` (no tokenizer needed).

    Args:
        data: the ``[data]`` section.
        task: ``causal_lm`` or ``classification``.
        base_dir: the folder relative paths are read from.
        keep_rows: keep each example's fields (what training needs); False keeps only a digest
            and the label, for a check that must read every row of a large file cheaply.

    Raises:
        DataError: a file is missing or unreadable, the format cannot be told, no usable
            training row is left, a classification set has a single class, or too many rows
            are invalid.
    """
    if not data.train:
        raise DataError(
            "no training data given", where="[data].train", hint='set train = "data/train.jsonl"'
        )
    train_src = read_source(data.train, base_dir=base_dir)
    eval_src = read_source(data.eval, base_dir=base_dir) if data.eval else None
    records = train_src.records()
    head = list(islice(records, DETECT_ROWS))
    raw_keys, keys = _first_keys(head, data.columns)
    _check_columns(raw_keys, data, train_src.source)
    fmt = data.format
    if fmt == "auto":
        fmt = detect_format(keys, task, source=train_src.source)
    out = LoadedData(train=[], eval=[], format=fmt, task=task)
    out.sources = [train_src.source] + ([eval_src.source] if eval_src else [])
    out.char_budget = char_budget(data.max_seq_len)
    reader = _Reader(data, fmt, out, keep_rows=keep_rows)
    train, out.rows_read["train"] = reader.examples(chain(head, records), "train")
    evals: list[Example] = []
    eval_records = eval_src.records if eval_src else train_src.eval_records
    if eval_records is not None:
        evals, out.rows_read["eval"] = reader.examples(eval_records(), "eval")
        out.eval_source = (
            eval_src.source if eval_src else f"{train_src.source} split {train_src.eval_name!r}"
        )
    if fmt == "classification":
        known = list(data.labels)
        if not known:
            names = set()
            for example in train:
                with contextlib.suppress(RowProblem):
                    names.add(label_name(example.data["label"], []))
            known = sort_labels(names)
        out.labels = known
        train = _resolve_labels(train, known, "train", out, listed=bool(data.labels))
        evals = _resolve_labels(evals, known, "eval", out, listed=bool(data.labels))
    check_dropped(out, data, {"train": train_src.source, "eval": out.eval_source})
    if not train:
        raise DataError("no usable training rows", where=train_src.source)
    if fmt == "classification":
        _check_classes(train, out.labels, train_src.source)

    if data.dedupe:
        train, out.duplicates_removed["train"] = _dedupe(train)
        evals, out.duplicates_removed["eval"] = _dedupe(evals)
    if data.limit and len(train) > data.limit:
        out.limited = len(train) - data.limit
        train = train[: data.limit]
    if eval_records is None and data.eval_fraction > 0 and len(train) >= 2:
        order = list(range(len(train)))
        random.Random(data.seed).shuffle(order)
        n_eval = min(len(train) - 1, max(1, round(len(train) * data.eval_fraction)))
        held = set(order[:n_eval])
        evals = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
        out.eval_source = f"{data.eval_fraction:.0%} of train (seed {data.seed})"
    elif eval_records is not None:
        train_keys = {row_key(e) for e in train}
        before = len(evals)
        evals = [e for e in evals if row_key(e) not in train_keys]
        out.leaked = before - len(evals)
    out.train, out.eval = train, evals
    return out
