"""How long a run's optimizer steps really took, from its folder: what calibrates a plan.

A plan's step time is a model; a run folder may hold the truth. The best is the run's own
training logs (the median time per step between consecutive logs, leaving out the gaps that
hold an evaluation, a checkpoint or a restart, which are not steps); next is the pre-flight's
timing, which the pre-flight writes into ``run.toml``'s ``[plan]`` and logs as an event. The
planner then scales its estimate by the measured figure (`affiner.planner.timing.calibrate`).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    Event,
    Preflight,
    RunStarted,
    TrainLog,
    effective_events,
    read_events,
)


@dataclass(frozen=True)
class MeasuredStep:
    """One optimizer step's measured time and where it comes from.

    Attributes:
        seconds: seconds per optimizer step.
        source: in words, for a plan's note ("12 logged steps of this run", "the pre-flight").
        on_cpu: True when it was measured on the CPU, False on a GPU, None when unknown; a
            figure measured on one kind of device says nothing of the other.
        device: the GPU's name when the pre-flight recorded it ("" otherwise).
    """

    seconds: float
    source: str
    on_cpu: bool | None = None
    device: str = ""


#: Events that end a run of timed steps: what follows them is not a step's time.
NOT_STEPS = (RunStarted, EvalResult, Checkpoint)


def step_gap(previous: TrainLog | None, log: TrainLog) -> tuple[float, int] | None:
    """Seconds per step from `previous` to `log`, and the steps between; None when there is no
    gap to time (no previous log in this stretch, or no step or time passed)."""
    if previous is None or log.step <= previous.step or log.t <= previous.t:
        return None
    steps = log.step - previous.step
    return (log.t - previous.t) / steps, steps


def logged_step_seconds(events: list[Event]) -> tuple[float, int] | None:
    """Median seconds per step between consecutive training logs, and how many steps it spans.

    A gap with an evaluation or a checkpoint in it is left out (its time is not a step's), and
    so is every gap across a (re)start; the events a resume dropped do not count.
    """
    rates: list[float] = []
    steps = 0
    previous: TrainLog | None = None
    for event in effective_events(events):
        if isinstance(event, NOT_STEPS):
            previous = None
        elif isinstance(event, TrainLog):
            gap = step_gap(previous, event)
            if gap is not None:
                rates.append(gap[0])
                steps += gap[1]
            previous = event
    if not rates:
        return None
    return statistics.median(rates), steps


def measured_step(run_dir: str | os.PathLike[str]) -> MeasuredStep | None:
    """The run folder's measured step time: its own logged steps, else its pre-flight's.

    None when the folder holds neither (a run.toml that has not run).
    """
    if not (Path(run_dir) / "events.jsonl").exists():
        return None
    events = read_events(run_dir)
    started = [e for e in events if isinstance(e, RunStarted)]
    logged = logged_step_seconds(events)
    if logged is not None:
        seconds, steps = logged
        on_cpu = started[-1].device == "cpu" if started and started[-1].device else None
        plural = "" if steps == 1 else "s"
        return MeasuredStep(seconds, f"{steps} logged step{plural} of this run", on_cpu)
    checks = [e for e in events if isinstance(e, Preflight) and e.measured_step_seconds > 0]
    if checks:
        check = checks[-1]
        on_cpu = check.device == "cpu" if check.device else None
        gpu = "" if on_cpu or not check.device else check.device
        return MeasuredStep(check.measured_step_seconds, "the pre-flight", on_cpu, gpu)
    return None
