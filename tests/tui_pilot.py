"""Helpers for Pilot tests: wait for a condition the app reaches through a worker."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot


async def wait_for(
    pilot: Pilot,
    condition: Callable[[], object],
    timeout: float = 10.0,
    state: Callable[[], object] | None = None,
) -> None:
    """Pause the pilot until ``condition()`` is true; fail with the condition's source if not,
    and with ``state()`` (what the condition looked at) when given: a flaky wait is only
    diagnosed from the values it saw.

    Workers post their results asynchronously, so a fixed pause is either flaky or slow.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            seen = f"; state {state()}" if state is not None else ""
            raise AssertionError(f"condition not reached within {timeout}s: {condition}{seen}")
        await pilot.pause(0.02)
