"""The `affiner attach` view, rendered from hand-written run folders to a recording Console."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from affiner.runner.run.events import (
    Checkpoint,
    Error,
    EvalResult,
    EventWriter,
    Preflight,
    RunFinished,
    RunStarted,
    RunStatus,
    SystemSample,
    TrainLog,
    Warning_,
    write_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.tui.cli.attach import AttachView, attach, sparkline, trend


def write_run(root: Path, run_id: str, events: list, state: str, pid: int | None = None) -> RunDir:
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.config.write_text('[model]\nname_or_path = "tiny"\n[method]\nname = "lora"\n')
    with EventWriter(rd.path) as writer:
        for event in events:
            writer.write(event)
    write_status(rd.path, RunStatus(run_id=run_id, state=state, pid=pid, started=1000.0, step=0))
    return rd


def run_events(final: RunFinished | None) -> list:
    events = [
        RunStarted(
            run_id="r",
            model="tiny-llama",
            method="lora",
            device="cpu",
            total_steps=8,
            epochs=2,
            t=1000,
        ),
        SystemSample(
            step=2,
            ram_used=2 << 30,
            ram_total=24 << 30,
            process_rss=1 << 30,
            process_peak_rss=1 << 30,
            t=1001,
        ),
    ]
    for step, loss in ((2, 3.0), (4, 2.6), (6, 2.3), (8, 2.0)):
        events.append(
            TrainLog(
                step=step,
                epoch=step / 4,
                loss=loss,
                learning_rate=1e-4,
                tokens_per_second=1234.0,
                total_steps=8,
                eta_seconds=10,
                t=1000 + step,
            )
        )
        if step % 4 == 0:
            events.append(
                EvalResult(
                    step=step,
                    epoch=step / 4,
                    loss=loss + 0.1,
                    perplexity=2.718 ** (loss + 0.1),
                    t=1000 + step,
                )
            )
    events.append(
        Warning_(
            code="overfitting", message="eval loss rose twice", step=6, action="stop early", t=1009
        )
    )
    events.append(
        Checkpoint(step=8, path="checkpoints/checkpoint-8", best=True, eval_loss=2.1, t=1010)
    )
    if final is not None:
        events.append(final)
    return events


def render_text(view: AttachView, width: int = 100, now: float = 1100.0) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(view.render(now=now))
    return console.export_text()


def test_finished_run_prints_its_summary(runs_dir: Path) -> None:
    final = RunFinished(
        state="finished",
        step=8,
        train_seconds=95,
        best_eval_loss=2.1,
        output_dir="/runs/x/adapter",
        t=1011,
    )
    rd = write_run(runs_dir, "20260101-lora-tiny-aaaa", run_events(final), "finished")
    view = AttachView(rd)
    assert view.poll() == "finished" and view.ended
    text = render_text(view)
    assert "20260101-lora-tiny-aaaa" in text and "finished" in text
    assert "step 8/8" in text and "100%" in text
    assert "tiny-llama · lora · cpu" in text
    assert "2.0000" in text and "falling" in text  # latest loss and its trend
    assert "1,234 tokens/s" in text
    assert "RAM (process) 1.00/24.0 GiB" in text
    assert "evaluations" in text and "2.1000 ★" in text  # the best evaluation is marked
    assert "overfitting (step 6): eval loss rose twice" in text and "stop early" in text
    assert "final train loss 2.0000" in text and "best eval loss 2.1000 at step 8" in text
    assert "/runs/x/adapter" in text
    assert "Ctrl-C" not in text  # nothing to detach from

    console = Console(record=True, width=100, color_system=None)
    assert attach(rd, console=console) == 0
    assert "best eval loss 2.1000" in console.export_text()


def test_failed_run_shows_the_error_and_log_tail(runs_dir: Path) -> None:
    events = [
        *run_events(None)[:4],
        Error(code="oom", message="out of memory at step 4", step=4, t=1005),
    ]
    events.append(RunFinished(state="failed", step=4, message="out of memory", t=1006))
    rd = write_run(runs_dir, "failed-run", events, "failed")
    rd.log.write_text(
        "loading\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n"
    )
    view = AttachView(rd)
    view.poll()
    text = render_text(view)
    assert "error oom: out of memory at step 4" in text
    assert "RuntimeError: CUDA out of memory" in text
    assert "affiner train --resume failed-run" in text and "from scratch" in text
    console = Console(record=True, width=100, color_system=None)
    assert attach(rd, console=console) == 1


def test_interrupted_run_says_how_to_resume(runs_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rd = write_run(runs_dir, "gone", run_events(None)[:5], "running", pid=dead.pid)
    ckpt = rd.checkpoints / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    view = AttachView(rd)
    assert view.poll() == "interrupted"
    text = render_text(view)
    assert "resume from step 4: affiner train --resume gone" in text


def test_live_run_shows_progress_eta_and_detach_hint(runs_dir: Path) -> None:
    rd = write_run(runs_dir, "live", run_events(None)[:5], "starting")  # fresh, pid not yet known
    view = AttachView(rd)
    assert view.poll() == "starting" and not view.ended
    text = render_text(view, now=1004.0)  # the moment step 4 logged "ETA 10 s"
    assert "step 4/8" in text and "50%" in text and "ETA 10 s" in text
    # between log lines the ETA counts down, and never below zero
    assert "ETA 7.0 s" in render_text(view, now=1007.0)
    assert "ETA overdue (2 min since the last" in render_text(view, now=1100.0)
    assert "Ctrl-C detaches (the run keeps going) · affiner stop live" in text


def test_resumed_run_is_not_counted_twice(runs_dir: Path) -> None:
    first = run_events(None)[:6]  # logged up to step 6, checkpoint was at step 4
    second = [
        RunStarted(run_id="r", total_steps=8, resumed_from_step=4, t=2000),
        TrainLog(step=6, epoch=1.5, loss=2.2, total_steps=8, t=2001),
        TrainLog(step=8, epoch=2.0, loss=1.9, total_steps=8, t=2002),
        RunFinished(state="finished", step=8, t=2003),
    ]
    rd = write_run(runs_dir, "resumed", first + second, "finished")
    view = AttachView(rd)
    view.poll()
    assert [p[0] for p in view.history.train_loss] == [2.0, 4.0, 6.0, 8.0]
    assert "final train loss 1.9000" in render_text(view)


def test_sparkline_and_trend() -> None:
    assert sparkline([]) == ""
    assert sparkline([1.0, 1.0, 1.0]) == "▅▅▅"
    line = sparkline([float(x) for x in range(100, 0, -1)], width=10)
    assert len(line) == 10 and line[0] == "█" and line[-1] == "▁"
    assert trend([3.0, 2.5, 2.0, 1.5]) == "falling"
    assert trend([1.0, 1.5, 2.0, 2.5]) == "rising"
    assert trend([1.0, 1.0, 1.0]) == "flat"
    assert trend([1.0]) == ""


def test_classification_run_shows_its_scores_not_perplexity(runs_dir: Path) -> None:
    scores = {"accuracy": 0.91, "precision": 0.9, "recall": 0.88, "f1": 0.89}
    events = [
        RunStarted(run_id="r", model="tiny-bert", method="lora", total_steps=4, t=1000),
        # An older writer logged exp(loss) for class heads too: it must not be shown.
        EvalResult(step=4, epoch=1.0, loss=0.31, perplexity=1.36, t=1004, **scores),
        RunFinished(state="finished", step=4, t=1005),
    ]
    rd = write_run(runs_dir, "20260101-lora-bert-cccc", events, "finished")
    view = AttachView(rd)
    view.poll()
    text = render_text(view, width=120)
    assert "accuracy" in text and "precision" in text and "recall" in text and "f1" in text
    assert "0.91" in text and "0.88" in text and "0.31" in text
    assert "perplexity" not in text and "1.36" not in text

    lm = write_run(runs_dir, "20260101-lora-tiny-dddd", run_events(None), "finished")
    lm_view = AttachView(lm)
    lm_view.poll()
    assert "perplexity" in render_text(lm_view)


def test_a_run_slower_than_its_plan_warns_with_the_likely_cause(runs_dir: Path) -> None:
    from affiner.tui.live import RunHistory, drifts

    events = [
        RunStarted(run_id="slow", device="cpu", total_steps=100, predicted_step_seconds=1.0, t=0),
        *(TrainLog(step=s, total_steps=100, eta_seconds=50, t=3.0 * s) for s in (1, 2, 3, 4)),
        SystemSample(
            step=4, cpu_percent=100.0, process_cpu_percent=95.0, cpu_count=2,
            process_peak_rss=3 << 30, t=12.5,
        ),
    ]  # fmt: skip
    history = RunHistory()
    history.add(events)
    assert history.step_seconds == 3.0
    (slow,) = drifts(history)
    assert slow.code == "slow_steps" and "3.0x what the plan said (1.0 s)" in slow.message
    assert slow.cause == "other processes keep about 1.1 of the 2 CPU cores busy"
    # memory past the prediction is the second drift; a pre-flight's figure replaces the plan's
    history.add([RunStarted(run_id="slow", device="cpu", predicted_peak_bytes=2 << 30, t=13)])
    history.add([Preflight(measured_step_seconds=2.5, t=14)])
    codes = {d.code: d for d in drifts(history)}
    assert set(codes) == {"memory_over_plan"}  # 3 s is not 1.5x the measured 2.5 s
    assert "peaked at 3.00 GiB, past the predicted 2.00 GiB" in codes["memory_over_plan"].text
    # within a tenth of the prediction is the plan's usual error, not a drift
    history.add(
        [RunStarted(run_id="slow", device="cpu", predicted_peak_bytes=int(2.9 * 2**30), t=15)]
    )
    assert not [d for d in drifts(history) if d.code == "memory_over_plan"]
    # an ended run drifts no more, and attach shows what drifts
    rd = write_run(runs_dir, "slow", events, "starting")
    view = AttachView(rd)
    view.poll()
    assert "drift: steps take 3.0 s" in render_text(view, now=13.0)
    history.add([RunFinished(state="finished", step=100, t=20)])
    assert drifts(history) == []
