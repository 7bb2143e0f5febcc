"""The data step's look at a file: valid rows, bad lines, token lengths, one rendered example.

Runs in a worker thread (it reads the whole file and loads the model's tokenizer, which
imports transformers); the result is a plain `DataPreview` the screen draws. Validation and
rendering are `affiner.runner.data.prepare`'s, the same code the training process runs, so what the preview
shows is what training will see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Token lengths are measured on at most this many rows (evenly spread), to stay quick on
#: a million-row file; the histogram's shape does not need more.
MAX_MEASURED = 5000
SAMPLE_ROWS = 3


@dataclass
class DataPreview:
    """What the data step found, ready to draw.

    Attributes:
        path: the file as given.
        format: detected format (``chat``, ``instruction``, ``text``, ``classification``…).
        rows: the training rows a run takes: valid rows, less the tenth split off for
            evaluation when there is no eval file (`run_rows` counts them with one).
        sample: the first few rows as read.
        dropped: ``(file:line, reason)`` for each invalid row.
        lengths: token length of every (or a sample of every) rendered row; empty when no
            tokenizer was available.
        example: one row rendered exactly as the model sees it (`affiner.runner.data.prepare.render_example`):
            a typical one (`typical_example`), not merely the first.
        example_where: where that row is (``train.jsonl:42``), for the view's title.
        note: why token statistics are missing, when they are.
    """

    path: str
    format: str
    rows: int
    sample: list[Any] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    example: Any = None
    example_where: str | None = None
    note: str | None = None

    def truncated(self, max_len: int) -> int:
        return sum(1 for n in self.lengths if n > max_len)


def tokenizer_source(spec: Any, model_ref: str | None = None) -> str | None:
    """Where a tokenizer can be loaded from for `spec`: its folder or a hub id; None for a size."""
    if spec is None or getattr(spec, "source", "") == "size":
        return None
    return getattr(spec, "path", None) or model_ref or getattr(spec, "name", None)


def data_task(spec: Any) -> str:
    """The task the data is read for: a decoder's causal LM, else classification."""
    return "causal_lm" if getattr(spec, "is_decoder", True) else "classification"


def run_rows(path: str, eval_path: str, spec: Any, seq_len: int) -> int:
    """The training rows a run of `path` with held-out `eval_path` trains on.

    Read as the run reads them (`affiner.runner.data.load_rows` with both files): with an eval
    file nothing is split off the training data, so the count is not the preview's alone
    (which, given one file, sets a tenth aside, as a run without eval data would).
    """
    from affiner.runner.config import DataSection
    from affiner.runner.data import load_rows

    section = DataSection(train=path, eval=eval_path, max_seq_len=seq_len)
    return len(load_rows(section, task=data_task(spec)).train)


def build_preview(path: str, spec: Any, seq_len: int, model_ref: str | None = None) -> DataPreview:
    """Read and validate `path`, then measure it with the model's tokenizer.

    Raises:
        affiner.runner.data.files.DataError: the file is missing, unreadable or has no usable row.
    """
    from affiner.runner.config import DataSection
    from affiner.runner.data import load_rows

    loaded = load_rows(DataSection(train=path, max_seq_len=seq_len), task=data_task(spec))
    preview = DataPreview(
        path=path,
        format=loaded.format,
        rows=len(loaded.train),
        sample=[example.data for example in loaded.train[:SAMPLE_ROWS]],
        dropped=[(row.where, row.reason) for row in loaded.dropped],
    )
    source = tokenizer_source(spec, model_ref)
    if source is None:
        preview.note = (
            "Token lengths need the model's tokenizer; a bare size has none. "
            "Give a model folder or a cached hub id to see them."
        )
        return preview
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except Exception as error:  # a missing or broken tokenizer must not stop the flow
        preview.note = f"Could not load the tokenizer from {source} ({type(error).__name__}): no token lengths."
        return preview
    preview.lengths = measure_lengths(loaded, tokenizer, seq_len)
    preview.example, preview.example_where = typical_example(loaded, tokenizer, seq_len)
    return preview


def measure_lengths(loaded: Any, tokenizer: Any, seq_len: int) -> list[int]:
    """Tokens per training row before truncation, on an even spread of at most `MAX_MEASURED` rows."""
    from affiner.runner.data import RowProblem, encode_causal, encode_classification

    rows = loaded.train
    step = max(1, len(rows) // MAX_MEASURED)
    lengths = []
    for example in rows[::step]:
        try:
            if loaded.format == "classification":
                label = loaded.labels.index(example.data["label"]) if loaded.labels else 0
                encoded = encode_classification(example.data["text"], label, tokenizer, seq_len)
            else:
                encoded = encode_causal(example.data, loaded.format, tokenizer, seq_len)
        except (RowProblem, ValueError):
            continue
        lengths.append(encoded.length)
    return lengths


#: Rows looked at for the example shown: enough to find a typical one, quick on any file.
EXAMPLE_CANDIDATES = 200


def typical_example(loaded: Any, tokenizer: Any, seq_len: int) -> tuple[Any, str | None]:
    """A typical training row rendered as the model sees it, and where it is.

    The first row of a file is often not typical (the chat demo's is "how far is the sun" /
    "it": two tokens of loss), so the row shown is, among an even spread of at most
    `EXAMPLE_CANDIDATES` rows that render whole, one with at least the median number of
    loss-carrying tokens whose length is nearest the median length. A classifier's rows carry
    their loss on the label, so there only the length counts. (None, None) when no row renders.
    """
    from affiner.runner.data import DataError, render_example

    rows = loaded.train
    step = max(1, len(rows) // EXAMPLE_CANDIDATES)
    found: list[tuple[Any, str, int, int]] = []  # (rendered, where, length, loss tokens)
    for example in rows[::step][:EXAMPLE_CANDIDATES]:
        try:
            shown = render_example(example, loaded.format, tokenizer, seq_len, labels=loaded.labels)
        except DataError:
            continue
        if shown.truncated:
            continue
        loss = sum(1 for _, flag in shown.tokens if flag)
        found.append((shown, example.where, shown.length, loss))
    if not found:
        first = first_renderable(loaded, tokenizer, seq_len)
        return first, None
    if loaded.format != "classification":
        with_loss = sorted(f[3] for f in found)
        floor = with_loss[
            (len(with_loss) - 1) // 2
        ]  # the lower median: a typical row, not a long one
        found = [f for f in found if f[3] >= floor] or found
    lengths = sorted(f[2] for f in found)
    median = lengths[(len(lengths) - 1) // 2]
    shown, where, _, _ = min(found, key=lambda f: (abs(f[2] - median), -f[3]))
    return with_spacing(shown, tokenizer), Path(where).name


def with_spacing(shown: Any, tokenizer: Any) -> Any:
    """`shown` with each token's text as it reads in the whole (``" honest"``, ``"##ly"`` → ``"ly"``).

    `render_example` decodes every token alone, which drops the spaces a WordPiece tokenizer
    (the classifier's) puts between words ("filledwithhonest…"); the text of token i is the
    decoded prefix up to i minus the one before it, so the pieces join into the decoded text.
    Falls back to `shown` as it is when the prefixes do not extend one another.
    """
    from dataclasses import replace

    ids = list(shown.input_ids)
    pieces: list[tuple[str, bool]] = []
    before = ""
    for i, (_, flag) in enumerate(shown.tokens):
        now = tokenizer.decode(ids[: i + 1])
        if not now.startswith(before):
            return shown
        pieces.append((now[len(before) :], flag))
        before = now
    return replace(shown, tokens=pieces)


def first_renderable(loaded: Any, tokenizer: Any, seq_len: int) -> Any:
    """The first training row rendered as the model sees it (None if none renders)."""
    from affiner.runner.data import DataError, render_example

    for example in loaded.train[:20]:
        try:
            return render_example(example, loaded.format, tokenizer, seq_len, labels=loaded.labels)
        except DataError:
            continue
    return None
