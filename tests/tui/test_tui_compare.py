"""Compare on the runs screen: settings and final metrics beside the curves, tasks kept apart."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import DataTable

from affiner.runner.run import EvalResult
from affiner.tui.app import build_app
from affiner.tui.screens.runs_compare import CompareRun, CompareView, metric_rows, plotted
from affiner.tui.widgets.plots import LossPlot
from tests.tui_fakes import fake_services, finished_run
from tests.tui_pilot import wait_for

CLASSIFIER = "20261123-090000-lora-cls-c3d4"
CHAT = "20261122-090000-qlora-chat-9f9f"


def table_rows(view: CompareView) -> dict[str, list[str]]:
    table = view.query_one("#compare-table", DataTable)
    rows = {}
    for index in range(table.row_count):
        label, *values = (
            cell.plain if isinstance(cell, Text) else str(cell) for cell in table.get_row_at(index)
        )
        rows[label] = values
    return rows


async def open_compare(pilot, count: int) -> CompareView:
    table = pilot.app.screen.query_one("#runs-table", DataTable)
    await wait_for(pilot, lambda: table.row_count == count)
    for _ in range(count):
        await pilot.press("space", "down")
    await pilot.press("c")
    view = pilot.app.screen.query_one(CompareView)
    await wait_for(pilot, lambda: view.shown)
    return view


async def test_runs_of_different_tasks_are_tabled_together_but_not_plotted(
    runs_dir: Path,
) -> None:
    finished_run(runs_dir, CLASSIFIER, classification=True, start_loss=1.2)
    finished_run(runs_dir, CHAT, state="stopped", start_loss=3.5)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        view = await open_compare(pilot, 2)
        assert "different tasks" in view.note and "9f9f (language model)" in view.note
        plot = view.query_one(LossPlot)
        assert [label for label, _ in plot.curves] == ["c3d4"]  # the classifier only
        rows = table_rows(view)
        assert rows["task"] == ["classify", "generate"]
        assert rows["method"] == ["lora", "qlora"]
        assert rows["accuracy"] == ["0.910", "N/A"]  # no accuracy for the language model
        assert rows["best eval loss"] == ["1.9000", "1.9000"]
        assert rows["peak GiB"] == ["17.5", "17.5"]
        assert "perplexity" not in rows  # the fake evaluations log none
        # the settings that differ come first, the shared ones last
        labels = list(rows)
        assert labels.index("method") < labels.index("final train loss") < labels.index("epochs")
        await pilot.press("escape")
        assert not view.shown and not app.screen.has_class("-comparing")


async def test_runs_of_one_task_share_the_chart(runs_dir: Path) -> None:
    finished_run(runs_dir, "20261123-090000-lora-a-aaaa", start_loss=3.0)
    finished_run(runs_dir, "20261122-090000-lora-b-bbbb", start_loss=3.5)
    finished_run(runs_dir, "20261121-090000-lora-c-cccc", start_loss=4.0)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f4")
        view = await open_compare(pilot, 3)
        assert view.note == "train loss, one curve per run"
        curves = view.query_one(LossPlot).curves
        assert [label for label, _ in curves] == ["aaaa", "bbbb", "cccc"]
        assert curves[0][1] != curves[1][1]
        rows = table_rows(view)
        assert rows["final train loss"] == [
            f"{run.curve[-1][1]:.4f}" for run in view.runs
        ]  # the last logged loss
        assert rows["LoRA r / alpha"] == ["16 / 32"] * 3


def test_metrics_name_the_score_each_task_has() -> None:
    lm = CompareRun(
        "a", "a", "causal_lm", None, best=EvalResult(step=40, loss=2.0, perplexity=7.39)
    )
    cls = CompareRun(
        "b", "b", "classification", None, best=EvalResult(step=50, loss=0.6, accuracy=0.8, f1=0.7)
    )
    rows = dict(metric_rows([lm, cls]))
    assert rows["perplexity"] == ["7.39", "N/A"]
    assert rows["accuracy"] == ["N/A", "0.800"] and rows["F1"] == ["N/A", "0.700"]
    assert rows["best at step"] == ["40", "50"]
    shown, note = plotted([lm, cls, CompareRun("c", "c", "", None)])
    assert [r.run_id for r in shown] == ["a", "c"]  # a tie: the first run's task, unknowns go along
    assert "b (classifier) is in the table" in note
