"""Reading a run as it happens: the history folded from its events (`RunHistory`) and the
watcher that tails the event log in a worker thread.
"""

from affiner.tui.live.history import (
    Point,
    RunHistory,
    downsample,
    smooth,
)
from affiner.tui.live.watcher import WatchBatch, watch_run

__all__ = [
    "Point",
    "RunHistory",
    "WatchBatch",
    "downsample",
    "smooth",
    "watch_run",
]
