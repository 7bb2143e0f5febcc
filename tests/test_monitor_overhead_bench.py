"""bench/monitor_overhead.py: its arithmetic, its table and JSON, its arguments, and a --quick
smoke run of both ways (2 steps each, a tiny model) through the runner's real pieces."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_monitor_overhead", ROOT / "bench" / "monitor_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_monitor_overhead"] = module
    spec.loader.exec_module(module)
    return module


M = _load_bench()


def repeats(off: list[float], on: list[float], callback: float = 0.5) -> list:
    made = [M.Repeat(way="off", steps=10, mean_step_ms=v, median_step_ms=v - 1) for v in off]
    made += [
        M.Repeat(
            way="on",
            steps=10,
            mean_step_ms=v,
            median_step_ms=v - 1,
            callback_ms_per_step=callback,
            hook_ms_per_step={"on_log": callback * 0.9, "on_step_end": callback * 0.1},
        )
        for v in on
    ]
    return made


def test_overhead_is_the_ratio_of_the_medians_against_the_bar() -> None:
    summary = M.summarize(repeats([100.0, 104.0, 90.0], [101.0, 150.0, 101.5]), 1.0, 5.0)
    assert summary["off_ms"] == 100.0 and summary["on_ms"] == 101.5  # medians: a spike is ignored
    assert summary["overhead"] == pytest.approx(0.015)
    assert summary["passes"] is True
    assert summary["off_spread"] == pytest.approx(0.14)  # (104 - 90) / 100
    assert summary["callback_share"] == pytest.approx(0.005)
    assert summary["sampler_share"] == pytest.approx(0.0002)  # 1 ms every 5 s
    assert summary["direct_share"] == pytest.approx(0.0052) and summary["direct_passes"]
    assert summary["top_hook"] == "on_log" and summary["top_hook_ms_per_step"] == 0.45
    assert summary["noisy"] is True  # the off repeats moved by 14%: the A/B figure is noise
    failing = M.summarize(repeats([100.0], [102.5], callback=3.0), None, 5.0)
    assert failing["overhead"] == pytest.approx(0.025) and failing["passes"] is False
    assert failing["sampler_share"] is None and failing["direct_share"] == pytest.approx(0.03)
    assert not failing["direct_passes"] and not failing["noisy"]
    with pytest.raises(ValueError, match="both ways"):
        M.summarize(repeats([100.0], []), None, 5.0)


def test_ways_alternate_their_order_every_repeat() -> None:
    assert M.order(3) == ["off", "on", "on", "off", "off", "on"]


def test_table_and_json_say_the_verdict_and_its_parts() -> None:
    report = M.Report(
        machine="2 cores",
        when="2026-12-01 22:00 UTC",
        shape=asdict(M.Shape()),
        steps=150,
        warmup=5,
        logging_steps=5,
        sampler_interval_s=5.0,
        repeats=repeats([100.0, 100.0], [102.5, 102.5]),
        sample_cost_ms=1.0,
    )
    report.summary = M.summarize(report.repeats, report.sample_cost_ms, 5.0)
    table = M.format_table(report)
    assert "| overhead = on / off - 1 | +2.50% |" in table
    assert "<= 2%: no" in table
    assert (
        "| overhead measured directly (hooks + sampler) | +0.52% | of the off step | <= 2%: yes |"
        in table
    )
    assert "most in on_log: 0.45 ms a step" in table
    assert "2 repeats a way, logging every 5 steps" in table
    data = json.loads(json.dumps(asdict(report)))
    assert data["summary"]["passes"] is False and len(data["repeats"]) == 4


def test_arguments_it_refuses() -> None:
    with pytest.raises(SystemExit):
        M.parse_args(["--steps", "3", "--warmup", "3"])
    with pytest.raises(SystemExit):
        M.parse_args(["--interval", "0"])
    quick = M.parse_args(["--quick"])
    assert (quick.steps, quick.warmup, quick.repeats) == (2, 0, 1)


def test_quick_run_times_both_ways_and_writes_a_real_event_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stem = tmp_path / "results" / "monitor_overhead_cpu"
    code = M.main(["--quick", "--json", "--save", str(stem), "--workdir", str(tmp_path / "work")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    ways = {r["way"]: r for r in report["repeats"]}
    assert set(ways) == {"off", "on"}
    assert all(r["steps"] == 2 and r["mean_step_ms"] > 0 for r in ways.values())
    # "on" wrote the runner's events (run_started, the last step's log, a final system sample)
    assert ways["on"]["events_written"] >= 3 and ways["on"]["system_samples"] >= 1
    assert ways["off"]["events_written"] == 0
    assert isinstance(report["summary"]["passes"], bool)
    assert report["status_write_ms"] > 0 and report["summary"]["status_write_share"] > 0
    assert json.loads(stem.with_suffix(".json").read_text())["steps"] == 2
    assert "overhead = on / off - 1" in stem.with_suffix(".md").read_text()
    on_dirs = [p for p in (tmp_path / "work").iterdir() if p.name.startswith("on-")]
    status = json.loads((on_dirs[0] / "status.json").read_text())
    assert status["state"] == "running" and status["step"] == 2
