"""Issue 13: no data file makes the loader raise anything but a `DataError`.

Hypothesis writes arbitrary bytes, arbitrary JSON values and arbitrary CSV records to a data
file and loads it the way the pre-launch check and the worker do (`load_rows`, with and
without keeping rows): it must return rows or raise `DataError` (an `AffinerError`), never a
`UnicodeDecodeError`, `csv.Error`, `RecursionError`, `TypeError` or the like.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affiner.planner.errors import AffinerError
from affiner.runner.config import DataSection
from affiner.runner.data import load_rows

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FOLDER = Path(tempfile.mkdtemp(prefix="affiner-fuzz-"))

# Keys and values that reach every format's rules, not only "cannot tell the format".
KEYS = st.sampled_from(
    ["text", "label", "instruction", "input", "output", "system", "messages",
     "conversations", "prompt", "completion", "role", "content", "from", "value", "x"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "", " ", "0", "²"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
ROWS = st.lists(st.dictionaries(KEYS, VALUES, max_size=5) | VALUES, min_size=0, max_size=12)


def load(path: Path, **data) -> None:
    """Load as both callers do; only a `DataError` (an AffinerError) may come out."""
    for task in ("causal_lm", "classification"):
        for keep_rows in (True, False):
            try:
                loaded = load_rows(
                    DataSection(train=str(path), max_seq_len=8, **data),
                    task=task,
                    keep_rows=keep_rows,
                )
            except AffinerError:
                continue
            assert loaded.train, "a load that returns has training rows"


@SETTINGS
@given(
    content=st.binary(max_size=400),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ".jsonl.gz"]),
)
def test_arbitrary_bytes(content: bytes, suffix: str) -> None:
    path = FOLDER / f"bytes{suffix}"
    path.write_bytes(content)
    load(path)


@SETTINGS
@given(rows=ROWS, fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_arbitrary_json_lines_and_documents(rows: list, fraction: float) -> None:
    lines = FOLDER / "rows.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    load(lines, max_dropped_fraction=fraction)
    document = FOLDER / "rows.json"
    document.write_text(json.dumps(rows if len(rows) % 2 else {"data": rows}), encoding="utf-8")
    load(document, max_dropped_fraction=fraction)


@SETTINGS
@given(
    records=st.lists(st.lists(st.text(max_size=12), max_size=4), max_size=10),
    labels=st.sampled_from([[], ["a", "b"], ["0", "1", "2"]]),
)
def test_arbitrary_csv(records: list[list[str]], labels: list[str]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["text", "label"], *records])
    path = FOLDER / "rows.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    load(path, labels=labels, max_dropped_fraction=1.0)


def test_deep_nesting_and_huge_numbers_are_data_errors() -> None:
    path = FOLDER / "deep.jsonl"
    path.write_text('{"text": ' + "[" * 100_000 + "\n" + '{"text": 1' + "0" * 5000 + "}\n")
    load(path, max_dropped_fraction=1.0)
    document = FOLDER / "deep.json"
    document.write_text("[" * 100_000)
    load(document)
