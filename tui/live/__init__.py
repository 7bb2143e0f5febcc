"""Reading a run as it happens: the history folded from its events (`RunHistory`), the
watcher that tails the event log in a worker thread, and what drifts from the plan (`drifts`).
"""

from affiner.tui.live.drift import Drift, drifts
from affiner.tui.live.history import (
    Point,
    RunHistory,
    downsample,
    smooth,
)
from affiner.tui.live.watcher import FileWarnings, WatchBatch, watch_run

__all__ = [
    "Drift",
    "FileWarnings",
    "Point",
    "RunHistory",
    "WatchBatch",
    "downsample",
    "drifts",
    "smooth",
    "watch_run",
]
