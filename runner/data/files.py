"""Reading data files into rows, each with the place it came from (``train.jsonl:17``).

Every reader yields, one at a time, the rows it could read and the rows it could not (a line
that is not JSON, a CSV record with too many fields), never dropping one silently; a whole file
that cannot be used (missing, not UTF-8, binary, not JSON at all, no header) raises `DataError`
naming the file and line. Reading streams: files are read line by line as the caller iterates,
so checking every row of a large file before a launch costs one pass and no copy of the file.

Supported: JSON Lines (``.jsonl``/``.ndjson``), JSON (an array of objects, or
``{"data": [...]}``), CSV, TSV, Parquet, plain text (``.txt``: **one example per line**; blank
lines are skipped, so a paragraph per example means joining its lines first), any of those
compressed with ``.gz``, ``.bz2`` or ``.xz``, a folder written by `datasets`'
``save_to_disk``, and a hub data set id when the hub is reachable.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
class BadRecord:
    """A record that could not be read at all.

    Attributes:
        where: ``file:line``.
        reason: what is wrong with it, in words.
        kind: the reason without its particulars (``not valid JSON``), to count alike ones.
    """

    where: str
    reason: str
    kind: str


Record = RawRow | BadRecord


@dataclass
class Source:
    """What one data reference yields, read as it is iterated.

    Attributes:
        source: the file, folder or hub id, as shown in messages.
        records: a fresh iterator over its records each call (the file is read during iteration,
            and a whole-file problem raises `DataError` from it).
        eval_records: a held-out split that came with the source (a saved `DatasetDict` or a hub
            data set with a validation/test split), else None.
        eval_name: that split's name.
    """

    source: str
    records: Callable[[], Iterator[Record]]
    eval_records: Callable[[], Iterator[Record]] | None = None
    eval_name: str | None = None


def display_path(path: Path) -> str:
    """`path` relative to the working folder when it is inside it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):  # outside the working folder, or the working folder is gone
        return str(path)


def kind_of(path: Path) -> tuple[str | None, Any]:
    """The reader name for `path` and the opener for its compression (``open`` when none)."""
    suffixes = [s.lower() for s in path.suffixes]
    opener: Any = open
    if suffixes and suffixes[-1] in COMPRESSED:
        opener = COMPRESSED[suffixes.pop()]
    return (SUFFIXES.get(suffixes[-1]) if suffixes else None), opener


def read_source(ref: str, *, base_dir: str | os.PathLike[str] | None = None) -> Source:
    """The records behind `ref` (a path, a saved data set folder or a hub id).

    A missing file, a name without a known type or a folder that is not a saved data set is
    refused here; the file's content is checked as `Source.records` is iterated.
    """
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
        if not path.is_file():
            raise DataError(
                "not a regular file (a device, a pipe or a socket?)",
                where=display_path(path),
                hint="point [data].train / [data].eval at a data file",
            )
        name = display_path(path)
        return Source(source=name, records=lambda: _read_file(path, name, kind, opener))
    if kind is not None or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise DataError(
            "data file not found", where=display_path(path), hint="check [data].train / [data].eval"
        )
    return _read_hub(ref)


# ---------------------------------------------------------------------------- files


def _read_file(path: Path, name: str, kind: str, opener: Any) -> Iterator[Record]:
    """Every record of one file, then `DataError` if there was none."""
    count = 0
    try:
        if kind == "parquet":
            records = _read_parquet(path, name)
            for record in records:
                count += 1
                yield record
        else:
            with opener(path, "rb") as handle:
                lines = _lines(handle, name)
                if kind == "json":
                    records = _read_json(handle, name)
                elif kind in ("csv", "tsv"):
                    records = _read_csv(lines, name, kind)
                elif kind == "jsonl":
                    records = _read_jsonl(lines, name)
                else:
                    records = _read_text(lines, name)
                for record in records:
                    count += 1
                    yield record
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise DataError(f"cannot read the file: {exc}", where=name) from None
    if count == 0:
        raise DataError(
            "the file holds no examples",
            where=name,
            hint="point [data].train / [data].eval at a file with rows in it",
        )


def _lines(handle: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """Decoded lines with their 1-based numbers, split on ``\\n`` only as JSON Lines are.

    Each line is decoded on its own, so a byte that is not UTF-8 is reported with the line
    and column it is on (what an editor shows), not as an offset into the file.
    """
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(raw, exc, f"{name}:{number}") from None
        if "\x00" in text:
            raise DataError(
                f"a NUL byte at column {text.index(chr(0)) + 1}: this is binary data, not text",
                where=f"{name}:{number}",
                hint="point [data].train / [data].eval at a text data file (.jsonl, .json, .csv, .txt) or a .parquet file",
            )
        yield number, text


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, where: str) -> DataError:
    """A clear refusal for bytes that are not UTF-8, pointing at the line and column."""
    before = raw[: exc.start]
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
    # Text in another encoding opens with text; a binary file (or UTF-16) with a NUL or a
    # byte no text starts with.
    binary = b"\x00" in raw[:4096] or (where.endswith(":1") and exc.start == 0)
    what = "binary data, not text" if binary else "not UTF-8 text"
    return DataError(
        f"{what}: byte 0x{raw[exc.start]:02x} at column {column} is not valid UTF-8 ({exc.reason})",
        where=where,
        hint=(
            "point [data].train / [data].eval at a text data file (.jsonl, .json, .csv, .txt) or a "
            ".parquet file; text saved as UTF-16 must be saved again as UTF-8"
            if binary
            else "save the file as UTF-8 (a Latin-1 file converts with `iconv -f latin1 -t utf-8 OLD > NEW`)"
        ),
    )


def _json_reason(exc: ValueError | RecursionError) -> str:
    """`json`'s complaint in words that read on their own (its messages end in "at" before a place)."""
    if isinstance(exc, json.JSONDecodeError):
        message = exc.msg.removesuffix(" at").strip()
        return f"not valid JSON ({message} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply to read)"
    return f"not valid JSON ({exc})"  # e.g. an integer past Python's digit limit


def _parse_json(text: str) -> tuple[Any, str | None]:
    """The value of one JSON text, or None and why it is not JSON."""
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:
        return None, _json_reason(exc)


def _read_jsonl(lines: Iterable[tuple[int, str]], name: str) -> Iterator[Record]:
    for number, line in lines:
        if not line.strip():
            continue
        value, problem = _parse_json(line)
        where = f"{name}:{number}"
        yield (
            RawRow(value, where) if problem is None else BadRecord(where, problem, "not valid JSON")
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


def _read_json(handle: IO[bytes], name: str) -> Iterator[Record]:
    """A JSON document: an array of rows, or ``{"data": [...]}`` (read whole: JSON has no lines)."""
    raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _not_utf8(raw, exc, f"{name}:{line}") from None
    if "\x00" in text:
        raise DataError(
            "a NUL byte: this is binary data, not text",
            where=f"{name}:{_line_of(text, text.index(chr(0)))}",
            hint="point [data].train / [data].eval at a text data file (.jsonl, .json, .csv, .txt) or a .parquet file",
        )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file: it is JSON Lines
            yield from _read_jsonl(enumerate(text.split("\n"), start=1), name)
            return
        raise DataError(
            _json_reason(exc),
            where=f"{name}:{exc.lineno}",
            hint='a .json file holds one array of objects, or {"data": [...]}; use .jsonl for one object a line',
        ) from None
    except (ValueError, RecursionError) as exc:
        raise DataError(_json_reason(exc), where=name) from None
    decoder = json.JSONDecoder()
    start = _skip(text, 0)
    if isinstance(document, dict):
        if not isinstance(document.get("data"), list):
            keys = ", ".join(repr(k) for k in sorted(document)[:8]) or "none"
            raise DataError(
                f"this .json file holds a single object (keys: {keys}), not a list of rows",
                where=f"{name}:{_line_of(text, start)}",
                hint='put the rows in an array, [{...}, {...}], or in {"data": [...]}; '
                "or write one object a line to a .jsonl file",
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
            f"expected an array of objects, found {type(document).__name__}",
            where=f"{name}:{_line_of(text, start)}",
            hint='a .json file holds one array of objects, or {"data": [...]}',
        )
    del document  # the rows are decoded again one by one, each with its line
    for offset, value in _array_items(text, start, decoder):
        yield RawRow(value, f"{name}:{_line_of(text, offset)}")


def _read_csv(lines: Iterable[tuple[int, str]], name: str, kind: str) -> Iterator[Record]:
    csv.field_size_limit(min(2**31 - 1, 1 << 30))
    reader = csv.reader((text for _, text in lines), delimiter="\t" if kind == "tsv" else ",")

    def next_record() -> list[str] | None:
        try:
            return next(reader, None)
        except csv.Error as exc:
            raise DataError(
                f"not valid {kind.upper()}: {exc}",
                where=f"{name}:{reader.line_num}",
                hint="quote fields that hold the separator, quotes or line breaks",
            ) from None

    header = next_record()
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
    while (record := next_record()) is not None:
        line = previous + 1
        previous = reader.line_num
        if not record or not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            yield BadRecord(
                f"{name}:{line}",
                f"{len(record)} fields where the header has {len(header)} (an unquoted separator?)",
                "wrong number of fields",
            )
            continue
        yield RawRow(dict(zip(header, record, strict=True)), f"{name}:{line}")


def _read_text(lines: Iterable[tuple[int, str]], name: str) -> Iterator[Record]:
    for number, line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            yield RawRow({"text": text}, f"{name}:{number}")


def _read_parquet(path: Path, name: str) -> Iterator[Record]:
    """Rows of a Parquet file, a batch at a time (never the whole table in memory)."""
    import pyarrow.parquet as pq

    def refuse(exc: Exception) -> DataError:
        return DataError(f"not a readable Parquet file: {exc}", where=name)

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise refuse(exc) from None
    number = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:
            raise refuse(exc) from None
        if batch is None:
            return
        for values in batch.to_pylist():
            number += 1
            yield RawRow(values, f"{name} row {number}")


def _dataset_records(dataset: Any, label: str) -> Callable[[], Iterator[Record]]:
    def records() -> Iterator[Record]:
        for number, values in enumerate(dataset, start=1):
            yield RawRow(values, f"{label} row {number}")

    return records


def _split_source(loaded: Any, name: str) -> Source:
    """A Source from a Dataset or DatasetDict: ``train`` (or the only split) and an eval split."""
    if not hasattr(loaded, "keys"):
        return Source(source=name, records=_dataset_records(loaded, name))
    splits = list(loaded.keys())
    train = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if train is None:
        raise DataError(
            f"no 'train' split (found {splits})",
            where=name,
            hint="save the training rows as the 'train' split",
        )
    out = Source(source=name, records=_dataset_records(loaded[train], f"{name}[{train}]"))
    for split in EVAL_SPLITS:
        if split in splits and split != train:
            out.eval_records = _dataset_records(loaded[split], f"{name}[{split}]")
            out.eval_name = split
            break
    return out


def _read_saved_dataset(path: Path) -> Source:
    name = display_path(path)
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise DataError(
            "this is a folder, and not a data set saved with `datasets` (no dataset_dict.json or state.json)",
            where=name,
            hint="point [data].train at a file inside it, or save the data with Dataset.save_to_disk",
        )
    from datasets import load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors...
        raise DataError(f"cannot load the saved data set: {exc}", where=name) from None
    return _split_source(loaded, name)


def _read_hub(ref: str) -> Source:
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
    return _split_source(loaded, ref)
