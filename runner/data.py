"""The data pipeline: files → checked rows → train/eval split → token ids with loss masks.

`load_rows` needs no tokenizer (the TUI's data preview calls it in a worker); `prepare_data`
tokenizes for the Trainer; `render_example` shows one example as the model sees it. Nothing is
dropped silently: every row left out is counted with its ``file:line`` and reason, and loading
refuses to go on when more than ``[data].max_dropped_fraction`` of a split is unusable.

The order of operations, each counted in the report: read and validate every row; collect class
labels (classification); drop exact duplicates within each split; apply ``[data].limit`` (first
rows in file order); split off ``eval_fraction`` of train with ``[data].seed`` when there is no eval
file or bundled eval split; drop eval rows that also occur in train (leakage).

Importing this module is cheap: `datasets` and `transformers` load inside `prepare_data`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from runner.config import DataSection, RunConfig
from runner.data_files import DataError, RawRow, SourceRows, read_source
from runner.data_formats import (
    RowProblem,
    detect_format,
    label_name,
    normalize_row,
    rename_columns,
    sort_labels,
)
from runner.data_render import IGNORE, encode_causal, encode_classification, render
from runner.data_stats import TokenStats, token_stats

__all__ = [
    "IGNORE",
    "DataError",
    "DataReport",
    "DroppedRow",
    "Example",
    "LoadedData",
    "PreparedData",
    "RenderedExample",
    "TokenStats",
    "load_rows",
    "prepare_data",
    "render",
    "render_example",
    "token_stats_for",
]

SHOW_DROPPED = 5


@dataclass
class Example:
    """A validated row in canonical fields (see `runner.data_formats`) and where it came from."""

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


@dataclass
class DataReport:
    """Counts and token statistics of prepared data (written to the run's events, shown by the TUI)."""

    format: str
    task: str
    train_rows: int
    eval_rows: int
    rows_read: dict[str, int]
    dropped: int
    dropped_examples: list[str]
    drop_reasons: dict[str, int]
    duplicates_removed: dict[str, int]
    leaked: int
    limited: int
    eval_source: str
    labels: list[str]
    sources: list[str]
    train_tokens: TokenStats
    eval_tokens: TokenStats

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """A few lines for a log or the CLI."""
        lines = [
            f"{self.format} data: {self.train_rows} train / {self.eval_rows} eval rows (eval: {self.eval_source})",
            f"tokens per example: mean {self.train_tokens.mean:.0f}, p50 {self.train_tokens.p50}, "
            f"p95 {self.train_tokens.p95}, max {self.train_tokens.max}; "
            f"{self.train_tokens.truncated} truncated at {self.train_tokens.max_seq_len}",
        ]
        dupes = sum(self.duplicates_removed.values())
        if self.dropped or dupes or self.leaked or self.limited:
            lines.append(
                f"left out: {self.dropped} invalid, {dupes} duplicates, {self.leaked} eval rows also in train, "
                f"{self.limited} beyond [data].limit"
            )
        lines += [f"  {text}" for text in self.dropped_examples]
        return lines


@dataclass
class PreparedData:
    """Tokenized splits ready for the HF Trainer (`eval` is None when there is no held-out data)."""

    train: Any
    eval: Any
    report: DataReport
    labels: list[str]
    task: str
    format: str


@dataclass
class RenderedExample:
    """One example as the model sees it, for the TUI's preview.

    Attributes:
        text: the exact text rendered (template, EOS included), before truncation.
        tokens: ``(token text, carries_loss)`` per token, after truncation.
        input_ids, labels: what training uses (`labels` is the class id for classification).
        length: tokens before truncation; `truncated` says whether `max_seq_len` cut it.
        label: the class name (classification).
    """

    text: str
    tokens: list[tuple[str, bool]]
    input_ids: list[int]
    labels: list[int] | int
    length: int
    truncated: bool
    format: str
    label: str | None = None


# ---------------------------------------------------------------------------- loading


def _key(example: Example) -> str:
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
        key = _key(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def _check_dropped(out: LoadedData, data: DataSection, sources: dict[str, str]) -> None:
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
    fmt = data.format
    if fmt == "auto":
        keys: set[str] = set()
        for row in train_src.rows[:200]:
            values = rename_columns(row.values, data.columns)
            if isinstance(values, dict):
                keys |= set(values)
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
    _check_dropped(out, data, {"train": train_src.source, "eval": out.eval_source})
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
        train_keys = {_key(e) for e in train}
        before = len(evals)
        evals = [e for e in evals if _key(e) not in train_keys]
        out.leaked = before - len(evals)
    out.train, out.eval = train, evals
    return out


# ---------------------------------------------------------------------------- tokenizing


def _encode(example: Example, fmt: str, tokenizer: Any, max_seq_len: int, labels: list[str]):
    if fmt == "classification":
        return encode_classification(
            example.data["text"], labels.index(example.data["label"]), tokenizer, max_seq_len
        )
    return encode_causal(example.data, fmt, tokenizer, max_seq_len)


def _encode_split(
    examples, split, loaded: LoadedData, tokenizer, max_seq_len
) -> tuple[dict[str, list], list[int]]:
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    lengths: list[int] = []
    for example in examples:
        try:
            encoded = _encode(example, loaded.format, tokenizer, max_seq_len, loaded.labels)
        except RowProblem as problem:
            loaded.dropped.append(DroppedRow(example.where, str(problem), split))
            continue
        if loaded.format != "classification" and not any(encoded.loss_mask):
            loaded.dropped.append(
                DroppedRow(
                    example.where,
                    f"no token is left to learn from after truncation to {max_seq_len} tokens "
                    f"(the example has {encoded.length}; raise [data].max_seq_len)",
                    split,
                )
            )
            continue
        columns["input_ids"].append(encoded.input_ids)
        columns["attention_mask"].append([1] * len(encoded.input_ids))
        columns["labels"].append(encoded.labels)
        lengths.append(encoded.length)
    return columns, lengths


def prepare_data(
    cfg: RunConfig, tokenizer: Any, *, base_dir: str | os.PathLike[str] | None = None
) -> PreparedData:
    """Load ``cfg.data`` and tokenize it into `datasets.Dataset`s for the Trainer.

    Causal LM examples hold ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where no
    loss; pad ``labels`` with -100 when batching, e.g. with ``DataCollatorForSeq2Seq``);
    classification examples hold the class id as ``labels``. ``[eval].max_rows`` caps the eval split.
    """
    from datasets import Dataset

    data = cfg.data
    loaded = load_rows(data, task=cfg.model.task, base_dir=base_dir)
    evals = loaded.eval[: cfg.eval.max_rows] if cfg.eval.max_rows else loaded.eval
    train_cols, train_lengths = _encode_split(
        loaded.train, "train", loaded, tokenizer, data.max_seq_len
    )
    eval_cols, eval_lengths = _encode_split(evals, "eval", loaded, tokenizer, data.max_seq_len)
    _check_dropped(loaded, data, {"train": loaded.sources[0], "eval": loaded.eval_source})
    if not train_cols["input_ids"]:
        raise DataError("no training example is left after tokenizing", where=loaded.sources[0])
    report = DataReport(
        format=loaded.format,
        task=loaded.task,
        train_rows=len(train_cols["input_ids"]),
        eval_rows=len(eval_cols["input_ids"]),
        rows_read=loaded.rows_read,
        dropped=len(loaded.dropped),
        dropped_examples=[str(d) for d in loaded.dropped[:SHOW_DROPPED]],
        drop_reasons=loaded.drop_reasons,
        duplicates_removed=loaded.duplicates_removed,
        leaked=loaded.leaked,
        limited=loaded.limited,
        eval_source=loaded.eval_source,
        labels=loaded.labels,
        sources=loaded.sources,
        train_tokens=token_stats(train_lengths, data.max_seq_len),
        eval_tokens=token_stats(eval_lengths, data.max_seq_len),
    )
    return PreparedData(
        train=Dataset.from_dict(train_cols),
        eval=Dataset.from_dict(eval_cols) if eval_cols["input_ids"] else None,
        report=report,
        labels=loaded.labels,
        task=loaded.task,
        format=loaded.format,
    )


def token_stats_for(
    loaded: LoadedData, tokenizer: Any, max_seq_len: int
) -> tuple[TokenStats, TokenStats]:
    """Train and eval token statistics of loaded rows (rows that fail to render are skipped here)."""
    result = []
    for examples in (loaded.train, loaded.eval):
        lengths = []
        for example in examples:
            try:
                lengths.append(
                    _encode(example, loaded.format, tokenizer, max_seq_len, loaded.labels).length
                )
            except (RowProblem, ValueError):
                continue
        result.append(token_stats(lengths, max_seq_len))
    return result[0], result[1]


def render_example(
    row: Example | dict[str, Any],
    fmt: str,
    tokenizer: Any,
    max_seq_len: int,
    *,
    labels: list[str] | None = None,
) -> RenderedExample:
    """`row` (validated, or raw in format `fmt`) as the model sees it, token by token.

    Raises:
        DataError: the row does not fit `fmt`, or the chat template refuses it.
    """
    where = row.where if isinstance(row, Example) else "row"
    values = row.data if isinstance(row, Example) else row
    try:
        normalized = normalize_row(values, fmt)
        if fmt == "classification":
            name = label_name(normalized["label"], list(labels or []))
            label_id = labels.index(name) if labels else 0
            encoded = encode_classification(normalized["text"], label_id, tokenizer, max_seq_len)
        else:
            name = None
            encoded = encode_causal(normalized, fmt, tokenizer, max_seq_len)
    except RowProblem as problem:
        raise DataError(str(problem), where=where) from None
    tokens = [
        (tokenizer.decode([t]), keep)
        for t, keep in zip(encoded.input_ids, encoded.loss_mask, strict=True)
    ]
    return RenderedExample(
        text=encoded.text,
        tokens=tokens,
        input_ids=encoded.input_ids,
        labels=encoded.labels,
        length=encoded.length,
        truncated=encoded.truncated,
        format=fmt,
        label=name,
    )
