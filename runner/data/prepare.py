"""The data pipeline: files → checked rows → train/eval split → token ids with loss masks.

`load_rows` needs no tokenizer (the TUI's data preview calls it in a worker); `prepare_data`
tokenizes for the Trainer; `render_example` shows one example as the model sees it. Nothing is
dropped silently: every row left out is counted with its ``file:line`` and reason, and loading
refuses to go on when more than ``[data].max_dropped_fraction`` of a split is unusable.

This module is the public entry; the pieces are `affiner.runner.data.files` (reading each file type
with row locations), `affiner.runner.data.formats` (detection and per-row checks), `affiner.runner.data.rows`
(loading, split, duplicates, leakage), `affiner.runner.data.render` (token ids and loss masks) and
`affiner.runner.data.stats` (token-length statistics).

Importing this module is cheap: `datasets` and `transformers` load inside `prepare_data`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from affiner.runner.config import RunConfig
from affiner.runner.data.files import DataError
from affiner.runner.data.formats import RowProblem, label_name, normalize_row
from affiner.runner.data.notices import DataWarning, loading_warnings, truncation_warning
from affiner.runner.data.render import IGNORE, encode_causal, encode_classification, render
from affiner.runner.data.rows import (
    SHOW_DROPPED,
    DroppedRow,
    Example,
    LoadedData,
    char_budget,
    check_dropped,
    cut_values,
    load_rows,
)
from affiner.runner.data.stats import TokenStats, token_stats

__all__ = [
    "IGNORE",
    "DataError",
    "DataReport",
    "DataWarning",
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


@dataclass
class DataReport:
    """Counts and token statistics of prepared data (written to the run's events, shown by the TUI).

    Attributes:
        cut_rows: rows with a text longer than `char_budget` characters, cut before tokenizing.
        out_of_order: chat rows whose user and assistant turns do not alternate.
        trimmed: conversations that ended on a turn nobody answered, trimmed to their last
            assistant reply.
        warnings: what a person should be told about this data (`affiner.runner.data.notices`):
            the pre-launch check's warnings and the tokenizer's truncation count.
    """

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
    cut_rows: int = 0
    char_budget: int = 0
    out_of_order: int = 0
    trimmed: int = 0
    warnings: list[DataWarning] = field(default_factory=list)

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
        if self.cut_rows:
            lines.append(
                f"{self.cut_rows} rows cut to {self.char_budget:,} characters before tokenizing"
            )
        if self.trimmed:
            lines.append(
                f"{self.trimmed} conversations ended on a user (or tool) turn with no reply; "
                "trimmed to their last assistant reply"
            )
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
            loaded.dropped.append(DroppedRow(example.where, str(problem), split, problem.kind))
            continue
        if loaded.format != "classification" and not any(encoded.loss_mask):
            loaded.dropped.append(
                DroppedRow(
                    example.where,
                    f"no token is left to learn from after truncation to {max_seq_len} tokens "
                    f"(the example has {encoded.length}; raise [data].max_seq_len)",
                    split,
                    "no token left to learn from after truncation",
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
    check_dropped(loaded, data, {"train": loaded.sources[0], "eval": loaded.eval_source})
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
        cut_rows=loaded.cut_rows,
        char_budget=loaded.char_budget,
        out_of_order=loaded.out_of_order,
        trimmed=loaded.trimmed,
    )
    truncated = truncation_warning(report.train_tokens)
    report.warnings = loading_warnings(loaded) + ([truncated] if truncated else [])
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
    values, _ = cut_values(
        values, char_budget(max_seq_len)
    )  # as loading does, so a huge row stays cheap
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
