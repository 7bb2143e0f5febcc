"""Reading data files into rows, each with the place it came from (``train.jsonl:17``).

Every reader returns the rows it could read and the rows it could not (a line that is not
JSON, a CSV record with too many fields), never dropping one silently; a whole file that
cannot be used (missing, not JSON at all, no header) raises `DataError`.

Supported: JSON Lines (``.jsonl``/``.ndjson``), JSON (an array of objects, or
``{"data": [...]}``), CSV, TSV, Parquet, plain text (``.txt``: **one example per line**; blank
lines are skipped, so a paragraph per example means joining its lines first), any of those
compressed with ``.gz``, ``.bz2`` or ``.xz``, a folder written by `datasets`'
``save_to_disk``, and a hub data set id when the hub is reachable.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from affiner.planner.errors import AffinerError
from affiner.planner.hub import datasets_offline

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
EVAL_SPLITS = ("validation", "valid", "eval", "test")


class DataError(AffinerError):
    """Data that cannot be used as it is; `where` is the file and line (or row) at fault."""


@dataclass
class RawRow:
    """One record as read, before any format check."""

    values: Any
    where: str


@dataclass
class SourceRows:
    """What one data reference yielded.

    Attributes:
        source: the file, folder or hub id, as shown in messages.
        rows: the records that could be read.
        bad: ``(where, reason)`` for records that could not be read at all.
        eval_rows: a held-out split that came with the source (a saved `DatasetDict` or a hub
            data set with a validation/test split), else None.
        eval_name: that split's name.
    """

    source: str
    rows: list[RawRow] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    eval_rows: list[RawRow] | None = None
    eval_name: str | None = None


def display_path(path: Path) -> str:
    """`path` relative to the working folder when it is inside it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def kind_of(path: Path) -> tuple[str | None, Any]:
    """The reader name for `path` and the opener for its compression (``open`` when none)."""
    suffixes = [s.lower() for s in path.suffixes]
    opener: Any = open
    if suffixes and suffixes[-1] in COMPRESSED:
        opener = COMPRESSED[suffixes.pop()]
    return (SUFFIXES.get(suffixes[-1]) if suffixes else None), opener


def read_source(ref: str, *, base_dir: str | os.PathLike[str] | None = None) -> SourceRows:
    """Read every record behind `ref` (a path, a saved data set folder or a hub id)."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.is_dir():
        return _read_saved_dataset(path)
    kind, opener = kind_of(path)
    if path.exists():
        if kind is None:
            raise DataError(
                f"cannot tell the file type from its name {path.name!r}",
                where=display_path(path),
                hint="name it .jsonl, .json, .csv, .tsv, .parquet or .txt (optionally .gz/.bz2/.xz)",
            )
        return _read_file(path, kind, opener)
    if kind is not None or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise DataError(
            "data file not found", where=display_path(path), hint="check [data].train / [data].eval"
        )
    return _read_hub(ref)


def _read_file(path: Path, kind: str, opener: Any) -> SourceRows:
    name = display_path(path)
    out = SourceRows(source=name)
    try:
        if kind == "parquet":
            _read_parquet(path, name, out)
        else:
            with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
                {
                    "jsonl": _read_jsonl,
                    "json": _read_json,
                    "csv": _read_csv,
                    "tsv": _read_csv,
                    "text": _read_text,
                }[kind](handle, name, out, kind)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})",
            where=name,
            hint="save it as UTF-8",
        ) from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot read the file: {exc}", where=name) from None
    if not out.rows and not out.bad:
        raise DataError("the file holds no examples", where=name)
    return out


def _read_jsonl(handle: IO[str], name: str, out: SourceRows, _kind: str) -> None:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            out.rows.append(RawRow(json.loads(line), f"{name}:{number}"))
        except json.JSONDecodeError as exc:
            out.bad.append(
                (f"{name}:{number}", f"not valid JSON ({exc.msg} at column {exc.colno})")
            )


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _array_items(text: str, start: int, decoder: json.JSONDecoder) -> Iterator[tuple[int, Any]]:
    """Items of the JSON array opening at `start`, each with the offset where it begins."""
    index = _skip(text, start + 1)
    if index < len(text) and text[index] == "]":
        return
    while True:
        value, end = decoder.raw_decode(text, index)
        yield index, value
        index = _skip(text, end)
        if index < len(text) and text[index] == ",":
            index = _skip(text, index + 1)
            continue
        return


def _read_json(handle: IO[str], name: str, out: SourceRows, _kind: str) -> None:
    text = handle.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file: it is JSON Lines
            _read_jsonl(iter(text.splitlines(keepends=True)), name, out, "jsonl")  # type: ignore[arg-type]
            return
        raise DataError(
            f"not valid JSON: {exc.msg} (column {exc.colno})",
            where=f"{name}:{exc.lineno}",
            hint='a .json file holds one array of objects, or {"data": [...]}; use .jsonl for one object a line',
        ) from None
    decoder = json.JSONDecoder()
    start = _skip(text, 0)
    if isinstance(document, dict):
        if not isinstance(document.get("data"), list):
            raise DataError(
                f'expected an array of objects or {{"data": [...]}}, found an object with keys {sorted(document)[:8]}',
                where=name,
            )
        # Walk the top-level object to find where the "data" array opens, for line numbers.
        index = _skip(text, start + 1)
        while True:
            key, index = decoder.raw_decode(text, index)
            index = _skip(text, _skip(text, index) + 1)  # past the colon
            if key == "data":
                start = index
                break
            _, index = decoder.raw_decode(text, index)
            index = _skip(text, _skip(text, index) + 1)  # past the comma
    elif not isinstance(document, list):
        raise DataError(
            f"expected an array of objects, found {type(document).__name__}", where=name
        )
    for offset, value in _array_items(text, start, decoder):
        out.rows.append(RawRow(value, f"{name}:{_line_of(text, offset)}"))


def _read_csv(handle: IO[str], name: str, out: SourceRows, kind: str) -> None:
    csv.field_size_limit(min(2**31 - 1, 1 << 30))
    reader = csv.reader(handle, delimiter="\t" if kind == "tsv" else ",")
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError("no header row (the first line names the columns)", where=f"{name}:1")
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(
            f"repeated column names {repeated}",
            where=f"{name}:1",
            hint="give each column its own name",
        )
    previous = reader.line_num
    for record in reader:
        line = previous + 1
        previous = reader.line_num
        if not record or not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            out.bad.append(
                (
                    f"{name}:{line}",
                    f"{len(record)} fields where the header has {len(header)} (an unquoted separator?)",
                )
            )
            continue
        out.rows.append(RawRow(dict(zip(header, record, strict=True)), f"{name}:{line}"))


def _read_text(handle: IO[str], name: str, out: SourceRows, _kind: str) -> None:
    for number, line in enumerate(handle, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            out.rows.append(RawRow({"text": text}, f"{name}:{number}"))


def _read_parquet(path: Path, name: str, out: SourceRows) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"not a readable Parquet file: {exc}", where=name) from None
    for number, values in enumerate(table.to_pylist(), start=1):
        out.rows.append(RawRow(values, f"{name} row {number}"))


def _dataset_rows(dataset: Any, label: str) -> list[RawRow]:
    return [
        RawRow(values, f"{label} row {n}") for n, values in enumerate(dataset.to_list(), start=1)
    ]


def _split_rows(loaded: Any, name: str, out: SourceRows) -> SourceRows:
    """Fill `out` from a Dataset or DatasetDict: ``train`` (or the only split) and an eval split."""
    if hasattr(loaded, "to_list"):
        out.rows = _dataset_rows(loaded, name)
        return out
    splits = list(loaded.keys())
    train = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if train is None:
        raise DataError(
            f"no 'train' split (found {splits})",
            where=name,
            hint="save the training rows as the 'train' split",
        )
    out.rows = _dataset_rows(loaded[train], f"{name}[{train}]")
    for split in EVAL_SPLITS:
        if split in splits and split != train:
            out.eval_rows, out.eval_name = _dataset_rows(loaded[split], f"{name}[{split}]"), split
            break
    return out


def _read_saved_dataset(path: Path) -> SourceRows:
    name = display_path(path)
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise DataError(
            "this folder is not a data set saved with `datasets` (no dataset_dict.json or state.json)",
            where=name,
            hint="point [data].train at a file inside it, or save the data with Dataset.save_to_disk",
        )
    from datasets import load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors...
        raise DataError(f"cannot load the saved data set: {exc}", where=name) from None
    return _split_rows(loaded, name, SourceRows(source=name))


def _read_hub(ref: str) -> SourceRows:
    if datasets_offline():
        raise DataError(
            "not a local file or folder, and the hub is offline (HF_HUB_OFFLINE is set), so it cannot be downloaded",
            where=ref,
            hint="give a local .jsonl/.json/.csv/.parquet/.txt file, or unset HF_HUB_OFFLINE to use a hub data set",
        )
    from datasets import load_dataset

    try:
        loaded = load_dataset(ref)
    except Exception as exc:  # network, missing repo, gated repo: all end the same way for the user
        raise DataError(
            f"cannot load hub data set: {exc}", where=ref, hint="check the id, or download it first"
        ) from None
    return _split_rows(loaded, ref, SourceRows(source=ref))
