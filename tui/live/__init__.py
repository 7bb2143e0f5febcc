"""Reading a run as it happens: the history folded from its events (`RunHistory`), the
watcher that tails the event log in a worker thread, what drifts from the plan (`drifts`), and
a multi-process run's layout and per-rank memory in words (`ranks`).
"""

from affiner.tui.live.drift import Drift, drifts
from affiner.tui.live.history import (
    Point,
    RunHistory,
    downsample,
    smooth,
)
from affiner.tui.live.ranks import (
    RankReading,
    layout_short,
    layout_words,
    over_plan,
    rank_memory,
)
from affiner.tui.live.watcher import FileWarnings, WatchBatch, watch_run

__all__ = [
    "Drift",
    "FileWarnings",
    "Point",
    "RankReading",
    "RunHistory",
    "WatchBatch",
    "downsample",
    "drifts",
    "layout_short",
    "layout_words",
    "over_plan",
    "rank_memory",
    "smooth",
    "watch_run",
]
