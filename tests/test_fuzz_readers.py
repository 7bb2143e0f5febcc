"""Property-based fuzzing of the run folder's readers: no file content makes a reader raise.

Hypothesis writes arbitrary bytes, arbitrary JSON values, and event-shaped objects whose fields
hold arbitrary JSON (a string step, a negative loss, NaN, a list for a number) as
``events.jsonl`` and ``status.json``; then every consumer reads the folder: `read_events`,
`read_status`, `summarize`, ``affiner runs --json``, the runs screen's rows, the monitor's
`RunHistory` with its derived figures, and `affiner attach`'s view, rendered. None may raise, and what the readers hand on
has the declared types and ranges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from affiner.runner.run.events import (
    EVENT_TYPES,
    FINAL_STATES,
    EvalResult,
    RunFinished,
    TrainLog,
    read_events,
    read_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import summarize
from affiner.tui.cli.attach import AttachView, PlainLines
from affiner.tui.cli.entry import main
from affiner.tui.live import RunHistory
from affiner.tui.screens.run_facts import FactsCache
from affiner.tui.screens.runs_columns import build_rows, cell_texts, detail_text

FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["12", "[/]", "running", "finished", "", "NaN"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Numbers the checks let through, up to their ceilings: events that reach the consumers'
#: arithmetic and formatting with everyday and extreme figures.
plausible = (
    st.integers(min_value=0, max_value=10**6)
    | st.floats(min_value=0, max_value=1e6)
    | st.integers(min_value=0, max_value=2**53)
    | st.floats(min_value=0, max_value=1e18)
    | st.floats(min_value=0, max_value=1.7e308)
)


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, object]:
    """A real event type's valid line with up to two of its fields set to anything: many pass
    the checks and reach the consumers' arithmetic, the rest are skipped."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    cls = EVENT_TYPES[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    values = st.one_of(plausible, st.none(), st.text(max_size=8), json_values)
    if kind == "system":
        gpu = st.dictionaries(
            st.sampled_from(["index", "memory_used", "memory_total", "power_w"]), values, max_size=4
        )
        values = st.one_of(values, st.lists(gpu, max_size=2))
    changed = draw(st.dictionaries(st.sampled_from(names), values, max_size=2))
    return {**cls().to_dict(), **changed}


def lines_of(objects: list[object], torn: bytes) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects) + torn


def read_everything(events: bytes, status: bytes) -> None:
    """Write the two files into a fresh run folder and run every consumer over it."""
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir(Path(tmp) / "20260101-000000-lora-fuzz")
        rd.path.mkdir()
        rd.config.write_text('[model]\nname_or_path = "tiny"\n[method]\nname = "lora"\n')
        rd.events.write_bytes(events)
        rd.status.write_bytes(status)

        read = read_events(rd.path)
        for event in read:
            assert isinstance(event.t, float) and 0 <= event.t < 1e11
            if isinstance(event, TrainLog):
                assert isinstance(event.step, int) and event.step >= 0
                assert event.loss is None or (math.isfinite(event.loss) and event.loss >= 0)
            if isinstance(event, EvalResult):
                assert event.loss is None or event.loss >= 0
                assert event.accuracy is None or 0 <= event.accuracy <= 1
            if isinstance(event, RunFinished):
                assert event.state in FINAL_STATES
        read_status(rd.path)

        summary = summarize(rd)
        assert summary.best_eval_loss is None or summary.best_eval_loss >= 0
        (row,) = build_rows([summary], {}, FactsCache())  # the app's runs screen
        cell_texts(row, time.time(), marked=False)
        detail_text(row)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["--runs-dir", tmp, "runs", "--json"]) == 0
        assert json.loads(out.getvalue())[0]["run_id"] == rd.run_id

        history = RunHistory(run_id=rd.run_id)
        history.add(read)
        now = time.time()
        _ = (history.progress, history.best_eval, history.step_seconds, history.overfitting)
        history.eta_text(now)
        history.phase_line(now)

        view = AttachView(rd)
        view.poll(now)
        PlainLines(view).lines(now)
        Console(file=io.StringIO(), width=80, color_system=None).print(view.render(now))


@FUZZ
@given(events=st.binary(max_size=600), status=st.binary(max_size=200))
def test_arbitrary_bytes_never_make_a_reader_raise(events: bytes, status: bytes) -> None:
    read_everything(events, status)


@FUZZ
@given(
    objects=st.lists(json_values, max_size=6),
    status=json_values,
    torn=st.binary(max_size=20),
)
def test_arbitrary_json_values_never_make_a_reader_raise(
    objects: list[object], status: object, torn: bytes
) -> None:
    read_everything(lines_of(objects, torn), json.dumps(status).encode())


STATUS_FIELDS = ("run_id", "state", "pid", "step", "total_steps", "epoch", "updated", "started")
STATUS_FIELDS += ("best_eval_loss", "message")
status_objects = st.dictionaries(
    st.sampled_from(STATUS_FIELDS),
    st.one_of(plausible, json_values),
).map(lambda d: {"run_id": "r", **d})


@FUZZ
@given(objects=st.lists(event_objects(), max_size=10), status=status_objects)
def test_events_and_status_with_fields_of_any_value_never_make_a_reader_raise(
    objects: list[object], status: dict[str, object]
) -> None:
    read_everything(lines_of(objects, b""), json.dumps(status).encode())
