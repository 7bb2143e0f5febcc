"""What the runs screen and compare show beyond `RunSummary`: settings, time, peak, curves.

`RunSummary` (`affiner.runner.run.summarize`) says a run's state, progress and best
evaluation. The runs table also shows the method, model, data, how long the run took and its
peak memory, and compare lays out the settings and final metrics side by side. Those come
from two places:

- ``run.toml``, read as written with the schema's defaults filled in (`RunSettings`), never
  validated: a QLoRA run looked at on a machine without bitsandbytes must still show.
- ``events.jsonl``, folded by `affiner.tui.live.RunHistory`, the monitor's own fold, so the
  peak, the best evaluation and the curves are the numbers the monitor shows, by the same
  resume rule. A `FactsCache` keeps one history per run and reads on from where it stopped,
  so a refresh every few seconds reads only the lines appended since.

Short ids (`short_ids`) are the shortest tail of the id that ``affiner attach``, ``stop`` and
``train --resume`` resolve to this run alone (`affiner.runner.run.resolve_run` takes a unique
prefix or suffix).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from affiner.planner.vocabulary import LORA_METHODS, default_learning_rate
from affiner.runner.config import RunConfig, read_raw_config
from affiner.runner.run import EvalResult, EventReader, RunStarted, model_label
from affiner.tui.live import Point, RunHistory, layout_short

T = TypeVar("T")

#: A short id is at least this long, so a stray ``1`` or ``x`` is never offered as one.
MIN_SHORT_ID = 4


def short_ids(run_ids: Sequence[str], names: Iterable[str] = ()) -> dict[str, str]:
    """Each run's shortest trailing part (whole ``-`` segments) that names it alone.

    A reference ``r`` resolves to a run when exactly one folder name starts or ends with
    it (`affiner.runner.run.resolve_run`), so ``a1b2`` is offered for
    ``20261125-110000-lora-smollm2-a1b2`` unless another folder starts or ends with ``a1b2``
    too; then ``smollm2-a1b2``, and so on, up to the whole id.

    Args:
        run_ids: the runs to name.
        names: every folder name under the runs root (hidden ones included, as the CLI
            sees them); the run ids are added to them.
    """
    everyone = set(names) | set(run_ids)
    # who starts or ends with each candidate tail, looked up instead of scanned: 200 runs
    # scanned every name for every tail (a tenth of a second each refresh)
    wanted = {
        "-".join(parts[-count:])
        for parts in (run_id.split("-") for run_id in run_ids)
        for count in range(1, len(parts))
    }
    holders: dict[str, set[str]] = {}
    for name in everyone:
        for cut in range(1, len(name) + 1):
            for piece in (name[:cut], name[-cut:]):
                if piece in wanted:
                    holders.setdefault(piece, set()).add(name)
    out: dict[str, str] = {}
    for run_id in run_ids:
        parts = run_id.split("-")
        out[run_id] = run_id
        for count in range(1, len(parts)):
            tail = "-".join(parts[-count:])
            if len(tail) < MIN_SHORT_ID:
                continue
            if holders.get(tail) == {run_id}:
                out[run_id] = tail
                break
    return out


@dataclass(frozen=True)
class RunSettings:
    """A run's settings as ``run.toml`` gives them, defaults filled in where it is silent.

    Attributes:
        lora: the method trains LoRA adapters (rank and alpha mean something).
        data: the training data's file name (or hub id) as written.
        labels: the class names ``[data].labels`` lists (empty when training detected them).
        world_size, nodes, strategy: ``[distributed]``'s processes over all nodes, the nodes
            and how they share the model (1, 1 and None for a single process).
    """

    model: str = ""
    task: str = "causal_lm"
    method: str = ""
    lora: bool = False
    lora_rank: int = 0
    lora_alpha: int = 0
    learning_rate: float = 0.0
    epochs: float = 0.0
    micro_batch: int = 0
    grad_accum: int = 0
    max_seq_len: int = 0
    data: str = ""
    labels: tuple[str, ...] = ()
    world_size: int = 1
    nodes: int = 1
    strategy: str | None = None

    @property
    def layout(self) -> str:
        """``2×ddp`` for a multi-process run, "" for a single process (`layout_short`)."""
        return layout_short(self.world_size, self.strategy)

    @classmethod
    def read(cls, run_dir: Path) -> RunSettings | None:
        """The settings of the run in `run_dir`; None when its ``run.toml`` cannot be read."""
        try:
            raw = _raw_config(run_dir / "run.toml")
        except (OSError, ValueError):
            return None
        cfg = RunConfig()

        def value(section: str, key: str) -> Any:
            table = raw.get(section)
            default = getattr(getattr(cfg, section), key)
            return table.get(key, default) if isinstance(table, dict) else default

        method = str(value("method", "name"))
        training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
        rate = training.get("learning_rate", default_learning_rate(method))  # type: ignore[union-attr]
        data = str(value("data", "train"))
        labels = value("data", "labels")
        nodes = max(1, _int(value("distributed", "nodes")))
        world_size = max(1, _int(value("distributed", "processes"))) * nodes
        return cls(
            model=model_label(str(value("model", "name_or_path"))),
            task=str(value("model", "task")),
            method=method,
            lora=method in LORA_METHODS,
            lora_rank=_int(value("method", "lora_rank")),
            lora_alpha=_int(value("method", "lora_alpha")),
            learning_rate=_float(rate),
            epochs=_float(value("training", "epochs")),
            micro_batch=_int(value("training", "micro_batch")),
            grad_accum=_int(value("training", "grad_accum")),
            max_seq_len=_int(value("data", "max_seq_len")),
            data=Path(data).name if data else "",
            labels=tuple(str(x) for x in labels) if isinstance(labels, list) else (),
            world_size=world_size,
            nodes=nodes,
            strategy=str(value("distributed", "strategy")) if world_size > 1 else None,
        )


#: ``run.toml`` tables by path, with the bytes they were parsed from (see `_raw_config`).
_TABLES: dict[Path, tuple[bytes, dict[str, Any] | ValueError]] = {}


def _raw_config(path: Path) -> dict[str, Any]:
    """`read_raw_config`, parsed again only when the file's bytes changed.

    The runs screen reads every run's settings on each refresh (every 5 s); parsing 200 TOML
    files was a third of it. The bytes, not the modification time, say whether it changed (a
    rewrite within the clock's tick keeps the time). The tables are shared: read, never modify.
    """
    raw = path.read_bytes()  # OSError: no settings, as before
    hit = _TABLES.get(path)
    if hit is None or hit[0] != raw:
        try:
            tables: dict[str, Any] | ValueError = read_raw_config(path)
        except ValueError as error:
            tables = error
        if len(_TABLES) >= 4096:
            _TABLES.clear()
        hit = _TABLES[path] = (raw, tables)
    if isinstance(hit[1], ValueError):
        raise hit[1]
    return hit[1]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


@dataclass
class RunFacts:
    """One run's events folded: the monitor's history, and the time its attempts took.

    Attributes:
        history: `RunHistory` over every event read so far (peak, evaluations, curves).
        seconds: wall time from each attempt's ``run_started`` to its last event, summed
            (the time spent training and evaluating; the pause between a stop and a resume
            is not counted).
    """

    history: RunHistory = field(default_factory=RunHistory)
    seconds: float | None = None
    _attempt_start: float | None = field(default=None, repr=False)
    _attempt_last: float | None = field(default=None, repr=False)
    _done_seconds: float = field(default=0.0, repr=False)

    def add(self, events: Sequence[Any]) -> None:
        """Fold new events (in order) into the history and the attempt clock."""
        self.history.add(events)
        for event in events:
            if not event.t:
                continue
            if isinstance(event, RunStarted):
                self._close_attempt()
                self._attempt_start = event.t
            self._attempt_last = event.t
        if self._attempt_start is not None and self._attempt_last is not None:
            self.seconds = self._done_seconds + max(0.0, self._attempt_last - self._attempt_start)

    def _close_attempt(self) -> None:
        if self._attempt_start is not None and self._attempt_last is not None:
            self._done_seconds += max(0.0, self._attempt_last - self._attempt_start)

    @property
    def peak_bytes(self) -> int | None:
        """The highest memory the run measured (the monitor's figure)."""
        return self.history.measured_peak_bytes

    @property
    def train_curve(self) -> list[Point]:
        return list(self.history.train_loss)

    @property
    def final_train_loss(self) -> float | None:
        return self.history.train_loss[-1][1] if self.history.train_loss else None

    @property
    def best_eval(self) -> EvalResult | None:
        """The lowest-loss evaluation after training began (None before one).

        Step 0 is the base model evaluated before training (``[eval].at_start``): compare
        shows it as no run's "best", as ``affiner runs`` does (`affiner.runner.run.tally`).
        """
        scored = [e for e in self.history.evals if e.loss is not None and e.step > 0]
        return min(scored, key=lambda e: e.loss) if scored else None


class FactsCache:
    """`RunFacts` per run folder, read on incrementally; safe to call from a worker thread.

    A folder whose events file shrank or was replaced (its size fell below what was read) is
    read again from the start.
    """

    def __init__(self) -> None:
        self._readers: dict[Path, tuple[EventReader, RunFacts]] = {}
        self._lock = threading.Lock()

    def read(self, run_dir: Path, take: Callable[[RunFacts], T]) -> T:
        """Read `run_dir`'s new events, then return ``take(facts)``.

        `take` runs under the cache's lock, so it sees the facts whole even while another
        worker reads on; it should copy what it keeps (`RunFacts` goes on changing).
        """
        with self._lock:
            entry = self._readers.get(run_dir)
            size = _size(entry[0]) if entry is not None else None
            if (
                entry is None
                or (size is None and entry[0].offset > 0)
                or (size is not None and size < entry[0].offset)
            ):
                entry = (EventReader(run_dir), RunFacts())
                self._readers[run_dir] = entry
                size = None
            reader, facts = entry
            # a log no longer than what was read has nothing new: not even opened again
            if size is None or size > reader.offset:
                events = reader.read_new()
                if events:
                    facts.add(events)
            return take(facts)

    def forget_except(self, keep: Iterable[Path]) -> None:
        """Drop the folders no longer listed (deleted runs)."""
        kept = set(keep)
        with self._lock:
            for path in [p for p in self._readers if p not in kept]:
                del self._readers[path]


def _size(reader: EventReader) -> int | None:
    """The events file's size now (None when it cannot be read: gone, or not a file)."""
    try:
        return reader.path.stat().st_size
    except OSError:
        return None
