"""The runs table at 80 columns and wider: short ids the CLI accepts, columns that fit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from textual.widgets import DataTable

from affiner.runner.run import resolve_run
from affiner.tui.app import build_app
from affiner.tui.screens.run_facts import RunFacts, short_ids
from affiner.tui.screens.runs import RunsScreen
from affiner.tui.screens.runs_columns import COLUMNS, fit_columns, runs_title
from tests.tui_fakes import NOW, fake_services, finished_run, lm_run, started, train_logs
from tests.tui_pilot import wait_for


def test_short_ids_are_the_shortest_tail_the_cli_resolves(runs_dir: Path) -> None:
    ids = [
        "20261125-110000-lora-smollm2-a1b2",
        "20261124-110000-lora-smollm2-77ee",
        "20261123-110000-qlora-qwen-77ee",  # same hash: needs more of the id
        "a1b2-notes",  # a folder that starts with another run's hash
        "sweep",  # a hand-named run: no shorter form
    ]
    for run_id in ids:
        (runs_dir / run_id).mkdir()
        (runs_dir / run_id / "run.toml").write_text("", encoding="utf-8")
    short = short_ids(ids, [p.name for p in runs_dir.iterdir()])
    assert short == {
        "20261125-110000-lora-smollm2-a1b2": "smollm2-a1b2",
        "20261124-110000-lora-smollm2-77ee": "smollm2-77ee",
        "20261123-110000-qlora-qwen-77ee": "qwen-77ee",
        "a1b2-notes": "notes",
        "sweep": "sweep",
    }
    for run_id, ref in short.items():  # what the table shows is what `affiner attach` takes
        assert resolve_run(ref, runs_dir).run_id == run_id


def test_columns_drop_by_priority_and_names_shrink_first() -> None:
    cells = [
        {
            "mark": " ",
            "run": "a1b2",
            "state": "interrupted",
            "progress": " 40% 80/200",
            "best": "1.900 acc 0.91",
            "method": "qlora",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "time": "3 h 20 min",
            "peak": "17.5",
            "data": "rotten_tomatoes_train.jsonl",
            "age": "2 d 4 h",
        }
    ]
    wide = [c.key for c, _ in fit_columns(cells, 200)]
    assert wide == [c.key for c in COLUMNS]
    at_80 = dict((c.key, w) for c, w in fit_columns(cells, 78))
    assert {"run", "state", "best", "progress", "method", "model"} <= set(at_80)
    assert "time" not in at_80 and "age" not in at_80
    assert 10 <= at_80["model"] < len("HuggingFaceTB/SmolLM2-135M-Instruct")
    tiny = [c.key for c, _ in fit_columns(cells, 30)]
    assert tiny == ["mark", "run", "state", "best"]  # never fewer


def test_title_counts_one_run_as_one() -> None:
    assert runs_title(1, 0, Path("runs")) == "1 run (0 live) in runs"
    assert runs_title(3, 1, Path("runs")) == "3 runs (1 live) in runs"


def test_run_time_adds_up_attempts_and_leaves_out_the_pause() -> None:
    facts = RunFacts()
    facts.add([started("r", total=100), *train_logs(10, 50, total=100)])
    assert facts.seconds == pytest.approx(500.0)  # logs every 10 s up to step 50
    resumed = replace(started("r", total=100, t=NOW + 10_000), resumed_from_step=50)
    later = [replace(e, t=NOW + 10_000 + 30) for e in train_logs(60, 60, total=100)]
    facts.add([resumed, *later])
    assert facts.seconds == pytest.approx(530.0)  # the 3 h pause between them is not counted


async def test_80_columns_show_short_ids_and_best_eval_then_reflow(runs_dir: Path) -> None:
    lm_run(runs_dir, upto=80)
    finished_run(runs_dir, "20261123-090000-lora-old-c3d4", classification=True)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 2)
        keys = [column.key.value for column in table.ordered_columns]
        assert keys[:5] == ["mark", "run", "state", "progress", "best"]
        assert "peak" not in keys
        assert [table.get_row_at(i)[1] for i in range(2)] == ["a1b2", "c3d4"]
        best = keys.index("best")
        assert table.get_row_at(1)[best] == "1.900 acc 0.91"
        detail = str(screen.query_one("#runs-detail").render())
        assert detail.startswith("20261125-110000-lora-smollm2-a1b2 (id a1b2)")

        await pilot.resize_terminal(140, 40)
        await wait_for(pilot, lambda: "peak" in [c.key.value for c in table.ordered_columns])
        keys = [column.key.value for column in table.ordered_columns]
        row = dict(zip(keys, table.get_row_at(0), strict=True))
        assert row["model"] == "smollm2-135m" and row["method"] == "lora"
        assert row["peak"] == "18.0"  # the pre-flight measured 18 GiB; the monitor says the same
        assert row["time"] == "13 min"  # 800 s from run_started to the last event

        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: "peak" not in [c.key.value for c in table.ordered_columns])


async def test_one_run_says_one_run_and_keys_still_work(runs_dir: Path) -> None:
    stopped = finished_run(runs_dir, "20261123-090000-qlora-x-9f9f", state="stopped")
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        assert str(app.screen.query_one("#runs-title").render()).startswith("1 run (0 live)")
        await pilot.press("r")
        await wait_for(pilot, lambda: backend.resumed == [stopped.path])
        await pilot.press("c")  # one marked at most: a hint, no compare
        assert not app.screen.has_class("-comparing")
