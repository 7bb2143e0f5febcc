"""Warnings about data that trains but probably not as meant, worded once for every reader.

The pre-launch check (`affiner.runner.run.validate`) prints them before a run starts, from
`load_rows` alone; `prepare_data` puts the same ones, plus what only tokenizing can tell
(examples longer than ``max_seq_len``), in its `DataReport` for the worker to record as
warning events. One function writes each sentence, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from affiner.runner.data.rows import CHARS_PER_TOKEN_CEILING, LoadedData
from affiner.runner.data.stats import TokenStats

#: An eval set smaller than this (after duplicates and leakage) measures nothing worth steering by.
FEW_EVAL_ROWS = 2


@dataclass(frozen=True)
class DataWarning:
    """One warning: a stable code (for events and tests), the sentence, and what to do."""

    code: str
    message: str
    action: str


def loading_warnings(loaded: LoadedData) -> list[DataWarning]:
    """What reading and checking the rows found that a person should see before training."""
    out: list[DataWarning] = []
    if loaded.dropped:
        reasons = ", ".join(f"{n} {kind}" for kind, n in loaded.drop_reasons.items())
        examples = "; ".join(str(d) for d in loaded.dropped[:3])
        out.append(
            DataWarning(
                "dropped_rows",
                f"{len(loaded.dropped)} invalid rows left out ({reasons}). {examples}",
                "fix the data",
            )
        )
    if loaded.leaked:
        emptied = not loaded.eval
        out.append(
            DataWarning(
                "leakage",
                f"{loaded.leaked} eval rows also appear in the training data and were left out of "
                "the evaluation."
                + (" No eval row is left, so the run will not evaluate." if emptied else ""),
                "give eval rows that are not in the training data, or leave [data].eval empty to "
                "hold out [data].eval_fraction of train"
                if emptied
                else "deduplicate the splits",
            )
        )
    elif loaded.rows_read.get("eval") and not loaded.eval:
        out.append(
            DataWarning(
                "no_eval",
                f"No row of the eval data ({loaded.eval_source}) is usable, so the run will not evaluate.",
                "fix the eval rows, or leave [data].eval empty to hold out [data].eval_fraction of train",
            )
        )
    if 0 < len(loaded.eval) < FEW_EVAL_ROWS:
        count = len(loaded.eval)
        out.append(
            DataWarning(
                "few_eval_rows",
                f"The eval set has {count} row{'s' if count > 1 else ''} ({loaded.eval_source}): "
                "its loss and metrics say little, and early stopping would follow noise.",
                "use more eval rows: a larger [data].eval file or [data].eval_fraction",
            )
        )
    if loaded.labels:
        used = {example.data.get("label") for example in loaded.train}
        unseen = [name for name in loaded.labels if name not in used]
        if unseen and len(used) < len(loaded.labels):
            shown = ", ".join(repr(name) for name in unseen[:8]) + ("…" if len(unseen) > 8 else "")
            out.append(
                DataWarning(
                    "unseen_classes",
                    f"The training rows use {len(used)} of the {len(loaded.labels)} classes in "
                    f"[data].labels; the classifier never sees {shown}.",
                    "add training rows of those classes, or leave them out of [data].labels",
                )
            )
    if loaded.out_of_order:
        examples = "; ".join(loaded.out_of_order_examples[:2])
        out.append(
            DataWarning(
                "chat_order",
                f"{_rows(loaded.out_of_order, 'chat row')} {'has' if loaded.out_of_order == 1 else 'have'} "
                f"turns out of order ({examples}). Chat "
                "templates expect user and assistant turns to alternate, starting with user; "
                "some refuse such rows, others train on a pattern the model never sees in use.",
                "reorder or merge those turns",
            )
        )
    if loaded.trimmed:
        out.append(trimmed_warning(loaded.trimmed, loaded.trimmed_examples))
    if loaded.cut_rows:
        out.append(
            DataWarning(
                "long_rows",
                f"{_rows(loaded.cut_rows)} {'has' if loaded.cut_rows == 1 else 'have'} a text longer "
                f"than {loaded.char_budget:,} characters "
                f"({CHARS_PER_TOKEN_CEILING} per token of [data].max_seq_len); each was cut to that "
                "before tokenizing, which keeps every token max_seq_len allows.",
                "split long documents into several rows, or raise [data].max_seq_len",
            )
        )
    return out


def trimmed_warning(count: int, examples: list[str]) -> DataWarning:
    """Conversations that ended on a turn nobody answered, trimmed to their last assistant reply.

    Told, not only done: the user may have meant those last questions to be answered, and a
    data set where many are is probably cut at the wrong place.
    """
    shown = ", ".join(examples[:3]) + ("…" if count > 3 else "")
    their = "their" if count > 1 else "its"
    return DataWarning(
        "trailing_user_turn",
        f"{_rows(count, 'conversation')} ended on a user (or tool) turn with no reply after "
        f"it, nothing to learn from; trimmed to {their} last assistant reply ({shown}).",
        "nothing to do; end each conversation on an assistant reply to train on every turn",
    )


def _rows(count: int, noun: str = "row") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def truncation_warning(stats: TokenStats) -> DataWarning | None:
    """Examples longer than ``max_seq_len`` tokens (known only once tokenized)."""
    if not stats.truncated:
        return None
    return DataWarning(
        "truncation",
        f"{stats.truncated} of {stats.count} training examples are longer than max_seq_len "
        f"{stats.max_seq_len} and were cut (longest {stats.max}).",
        "raise [data].max_seq_len",
    )
