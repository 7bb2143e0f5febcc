"""Loading rows without a tokenizer: read, validate, collect labels, dedupe, limit, split, leakage.

The order of operations, each counted in `LoadedData`: read and validate every row; collect
class labels (classification); drop exact duplicates within each split; apply ``[data].limit``
(first rows in file order); split off ``eval_fraction`` of train with ``[data].seed`` when there
is no eval file or bundled eval split; drop eval rows that also occur in train (leakage).
Public names are re-exported by `affiner.runner.data.prepare`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from affiner.runner.config import DataSection
from affiner.runner.data.files import DataError, RawRow, SourceRows, read_source
from affiner.runner.data.formats import (
    RowProblem,
    detect_format,
    label_name,
    normalize_row,
    rename_columns,
    sort_labels,
)

SHOW_DROPPED = 5


@dataclass
class Example:
    """A validated row in canonical fields (see `affiner.runner.data.formats`) and where it came from."""

    data: dict[str, Any]
    where: str


@dataclass
class DroppedRow:
    """A row left out: where it is, why, and from which split."""

    where: str
    reason: str
    split: str = "train"

    @property
    def kind(self) -> str:
        """The reason without its particulars, for counting alike problems together."""
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

    @property
    def drop_reasons(self) -> dict[str, int]:
        """How many rows were dropped for each kind of problem, most common first."""
        return dict(Counter(d.kind for d in self.dropped).most_common())


def row_key(example: Example) -> str:
    return json.dumps(example.data, sort_keys=True, ensure_ascii=False)


def _validate(
    raw: SourceRows | None,
    rows: list[RawRow],
    split: str,
    fmt: str,
    data: DataSection,
    out: LoadedData,
):
    examples: list[Example] = []
    if raw is not None:
        out.dropped += [DroppedRow(where, reason, split) for where, reason in raw.bad]
    for row in rows:
        try:
            examples.append(
                Example(normalize_row(rename_columns(row.values, data.columns), fmt), row.where)
            )
        except RowProblem as problem:
            out.dropped.append(DroppedRow(row.where, str(problem), split))
    return examples


def _resolve_labels(
    examples: list[Example], known: list[str], split: str, out: LoadedData, *, listed: bool
) -> list[Example]:
    """Rows with their label as a class name; rows with a label outside `known` are dropped."""
    kept = []
    for example in examples:
        try:
            name = label_name(example.data["label"], known)
        except RowProblem as problem:
            reason = str(problem)
            if listed:
                reason = reason.replace("(known:", "(not in [data].labels:", 1)
            else:  # the classes came from the training rows themselves
                reason = reason.replace("unknown label", "label", 1)
                reason = reason.replace(" (known:", " was not seen in the training data (known:", 1)
            out.dropped.append(DroppedRow(example.where, reason, split))
            continue
        kept.append(Example({**example.data, "label": name}, example.where))
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


def load_rows(
    data: DataSection, *, task: str = "causal_lm", base_dir: str | os.PathLike[str] | None = None
) -> LoadedData:
    """Read, validate, deduplicate and split the data named by ``[data]`` (no tokenizer needed).

    Raises:
        DataError: a file is missing or unreadable, the format cannot be told, no usable
            training row is left, or too many rows are invalid.
    """
    if not data.train:
        raise DataError(
            "no training data given", where="[data].train", hint='set train = "data/train.jsonl"'
        )
    train_src = read_source(data.train, base_dir=base_dir)
    eval_src = read_source(data.eval, base_dir=base_dir) if data.eval else None
    eval_raw = eval_src.rows if eval_src else train_src.eval_rows
    raw_keys: set[str] = set()
    for row in train_src.rows[:200]:
        if isinstance(row.values, dict):
            raw_keys |= set(row.values)
    missing = {k: v for k, v in data.columns.items() if v not in raw_keys}
    if raw_keys and missing:
        canonical, column = next(iter(missing.items()))
        raise DataError(
            f"[data].columns maps {canonical} to {column!r}, which is not a column of this data "
            f"(columns: {', '.join(sorted(raw_keys))})",
            where=train_src.source,
            hint="fix the name in [data].columns (the right side is your column, the left side affiner's)",
        )
    fmt = data.format
    if fmt == "auto":
        keys: set[str] = set()
        for row in train_src.rows[:200]:
            if isinstance(row.values, dict):
                keys |= set(rename_columns(row.values, data.columns))
        fmt = detect_format(keys, task, source=train_src.source)
    out = LoadedData(train=[], eval=[], format=fmt, task=task)
    out.sources = [train_src.source] + ([eval_src.source] if eval_src else [])
    out.rows_read = {"train": len(train_src.rows) + len(train_src.bad)}
    train = _validate(train_src, train_src.rows, "train", fmt, data, out)
    evals: list[Example] = []
    if eval_raw is not None:
        out.rows_read["eval"] = len(eval_raw) + (len(eval_src.bad) if eval_src else 0)
        evals = _validate(eval_src, eval_raw, "eval", fmt, data, out)
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

    if data.dedupe:
        train, out.duplicates_removed["train"] = _dedupe(train)
        evals, out.duplicates_removed["eval"] = _dedupe(evals)
    if data.limit and len(train) > data.limit:
        out.limited = len(train) - data.limit
        train = train[: data.limit]
    if eval_raw is None and data.eval_fraction > 0 and len(train) >= 2:
        order = list(range(len(train)))
        random.Random(data.seed).shuffle(order)
        n_eval = min(len(train) - 1, max(1, round(len(train) * data.eval_fraction)))
        held = set(order[:n_eval])
        evals = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
        out.eval_source = f"{data.eval_fraction:.0%} of train (seed {data.seed})"
    elif eval_raw is not None:
        train_keys = {row_key(e) for e in train}
        before = len(evals)
        evals = [e for e in evals if row_key(e) not in train_keys]
        out.leaked = before - len(evals)
    out.train, out.eval = train, evals
    return out
