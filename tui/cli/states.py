"""The colour of each run state, as every CLI view of runs shows it (``attach`` and ``runs``).

Its own small module so that ``affiner runs``, which needs only this from ``attach``, does not
import the live view and its history folding to colour a word.
"""

from __future__ import annotations

from affiner.runner.run import INTERRUPTED, UNKNOWN

#: rich styles by run state (`affiner.runner.run.events.RUN_STATES` and the derived ones).
STATE_STYLES = {
    "starting": "cyan",
    "running": "bold green",
    "finished": "bold green",
    "failed": "bold red",
    "stopped": "yellow",
    INTERRUPTED: "bold yellow",
    UNKNOWN: "dim",
}
