"""How the monitor looks at 80x24 and 120x40 through a run's life: training (on the CPU),
evaluating (a progress event mid-eval), finished (the summary), stopped and failed.

The run folders are written here by hand with the real event writer (`tests.tui_fakes`),
with times that end at the fake clock's "now" (an ETA counts down instead of reading
overdue); `tests.tui.test_tui_monitor_layout` checks the same runs through Pilot. The
working directory is the runs root's parent, so every path and time drawn is the same on
every machine. Update with ``--snapshot-update`` for this module only, after looking at the
SVGs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot

from affiner.runner.run.events import (
    Checkpoint,
    Error,
    EvalResult,
    Event,
    GpuSample,
    RunFinished,
    SystemSample,
    TrainLog,
    Warning_,
)
from affiner.tui.app import build_app
from tests.tui_fakes import GIB, NOW, RunFolder, fake_services, started
from tests.tui_pilot import wait_for

SIZES = [(80, 24), (120, 40)]
STATES = ("training", "evaluating", "finished", "stopped", "failed")
TOTAL = 200
#: The peak the plan predicted for these runs.
PEAK = 4 * GIB
#: What train.log holds on a real CPU run: two library warnings, a progress bar, the source
#: line under a warning, and the launcher's own banner.
LIBRARY_LOG = (
    "=== 2026-11-25 11:00:00 affiner: python -m affiner.runner.worker runs/x",
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.",
    "Loading weights: 100%|██████████| 272/272 [00:00<00:00, 4765.84it/s]",
    "/venv/transformers/modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` is "
    "deprecated and will be removed in v6.",
    "  warnings.warn(",
)
#: The end of a failed run's train.log.
TRACEBACK = (
    '  File "/venv/torch/nn/modules/module.py", line 1751, in _call_impl',
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
)
TRUNCATION = (
    "16 of 800 training examples are longer than max_seq_len 128 and were cut (longest 301)."
)


def _t(step: int, upto: int) -> float:
    """Ten seconds a step, the last log ``upto`` written five seconds before the fake now."""
    return NOW - 5 - (upto - step) * 10


def _plan_toml(run: RunFolder, *, task: str = "causal_lm", method: str = "lora") -> None:
    (run.path / "run.toml").write_text(
        f'[model]\nname_or_path = "smollm2-135m"\ntask = "{task}"\n\n'
        f'[method]\nname = "{method}"\n\n[data]\nlabels = ["negative", "positive"]\n\n'
        f"[plan]\npredicted_peak_bytes = {PEAK}\npredicted_step_seconds = 8.0\n",
        encoding="utf-8",
    )


def run_logs(first: int, upto: int, *, gpu: bool, every: int = 10) -> list[Event]:
    out: list[Event] = []
    for step in range(first, upto + 1, every):
        t = _t(step, upto)
        out.append(
            TrainLog(
                t=t,
                step=step,
                epoch=round(2.0 * step / TOTAL, 3),
                loss=round(2.9 - 1.1 * step / TOTAL + 0.04 * ((step // every) % 3 - 1), 4),
                learning_rate=2e-4 * (1 - step / TOTAL),
                grad_norm=round(0.5 + step / 1000, 3),
                tokens_per_second=812.0,
                eta_seconds=float((TOTAL - step) * 10),
                total_steps=TOTAL,
            )
        )
        if gpu:
            out.append(SystemSample(t=t, step=step, torch_peak=int(3.1 * GIB), gpus=[_gpu(step)]))
        else:
            rss = int((2.6 + step / TOTAL) * GIB)
            out.append(
                SystemSample(
                    t=t,
                    step=step,
                    ram_used=8 * GIB,
                    ram_total=24 * GIB,
                    process_rss=rss,
                    process_peak_rss=rss,
                )
            )
    return out


def _gpu(step: int) -> GpuSample:
    return GpuSample(index=0, memory_used=int((3 + step / TOTAL) * GIB), memory_total=24 * GIB)


def _evals(
    upto: int, *, until: int | None = None, classification: bool = False, every: int = 40
) -> list[Event]:
    """Evaluations every ``every`` steps from step 0 to ``until`` (default: the last step)."""
    out: list[Event] = []
    last = upto if until is None else until
    for number, step in enumerate(range(0, last + 1, every)):
        loss = round(2.8 - 0.25 * number, 4)
        accuracy = round(0.5 + 0.1 * number, 3) if classification else None
        out.append(
            EvalResult(
                t=_t(step, upto) + 1,
                step=step,
                epoch=round(2.0 * step / TOTAL, 3),
                loss=loss,
                accuracy=accuracy,
                f1=None if accuracy is None else round(accuracy - 0.02, 3),
            )
        )
        if step:
            out.append(Checkpoint(t=_t(step, upto) + 2, step=step, best=True, eval_loss=loss))
    return out


def training_run(
    root: Path,
    run_id: str = "20261125-110000-lora-smollm2-a1b2",
    *,
    upto: int = 120,
    gpu: bool = False,
    classification: bool = False,
    method: str = "lora",
    evals_upto: int | None = None,
) -> RunFolder:
    """A run live at step ``upto`` of 200 (the CPU by default), evaluated at step 0 and every 40
    (up to ``evals_upto``), with a truncation warning and a train.log of library noise. The
    plan predicted a 4 GiB peak and 8 s a step; the run takes 10 s and peaks near 3.8 GiB."""
    run = RunFolder(root, run_id)
    _plan_toml(run, task="classification" if classification else "causal_lm", method=method)
    begin = _t(0, upto) - 30
    head = replace(started(run_id, total=TOTAL, t=begin, gpu=gpu), predicted_peak_bytes=PEAK)
    warning = Warning_(
        t=begin + 1, code="truncation", message=TRUNCATION, action="raise max_seq_len"
    )
    run.append([head, warning])
    evals = _evals(upto, until=evals_upto, classification=classification)
    events = run_logs(10, upto, gpu=gpu) + evals
    run.append(sorted(events, key=lambda e: e.t))
    run.status("running", step=upto, total=TOTAL)
    run.log(*LIBRARY_LOG)
    return run


def ended_run(root: Path, state: str, *, upto: int = 200, **kwargs: object) -> RunFolder:
    """``training_run`` brought to an end: finished at 200 with weights saved, stopped at
    ``upto`` with a checkpoint to resume from, or failed with an error and no checkpoint."""
    run = training_run(root, upto=upto, **kwargs)  # type: ignore[arg-type]
    end = _t(upto, upto) + 3
    if state == "failed":
        message = "CUDA out of memory: tried to allocate 2.00 GiB (traceback in train.log)"
        run.append([Error(t=end, code="oom", message=message, step=upto)])
        run.log("Traceback (most recent call last):", *TRACEBACK)
    else:
        (run.path / "checkpoints" / "best").mkdir(parents=True)
    if state == "finished":
        (run.path / "adapter").mkdir()
    if state == "stopped":
        checkpoint = run.path / "checkpoints" / f"checkpoint-{upto}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    run.append(
        [
            RunFinished(
                t=end + 1,
                state=state,
                step=upto,
                train_seconds=upto * 10.0 + 95,
                message={"finished": "Training finished."}.get(state, f"run {state}"),
            )
        ]
    )
    run.status(state, step=upto, total=TOTAL)
    run.close()
    return run


def progress_line(
    run: RunFolder, *, step: int, phase: str, done: int, total: int, t: float
) -> None:
    """A ``progress`` event as the training callback writes it, written by hand."""
    line = {"type": "progress", "t": t, "step": step, "phase": phase, "done": done, "total": total}
    run.append_raw(json.dumps(line) + "\n")


def _run(runs_dir: Path, state: str) -> tuple[Path, int]:
    """The run folder for ``state`` and the step the monitor shows once it has read it."""
    if state == "training":
        return training_run(runs_dir).path, 120
    if state == "evaluating":
        run = training_run(runs_dir, upto=160, gpu=True, evals_upto=120)
        progress_line(run, step=160, phase="eval", done=1, total=200, t=NOW - 40)
        progress_line(run, step=160, phase="eval", done=41, total=200, t=NOW)
        return run.path, 160
    upto = {"finished": 200, "stopped": 80, "failed": 30}[state]
    return ended_run(runs_dir, state, upto=upto, gpu=state != "stopped").path, upto


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor(
    snap_compare,
    runs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
    state: str,
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    path, step = _run(runs_dir, state)
    services, _ = fake_services(runs_dir, gpus=0)

    async def run_before(pilot: Pilot) -> None:
        pilot.app.open_monitor(path)
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.history.step == step and screen.state != "")
        log = screen.query_one("#log")
        if state == "training":
            await wait_for(pilot, lambda: log.library_warnings == 2)
        # the log writes its lines once it has a size, then scrolls to the end: wait for both
        await pilot.wait_for_animation()
        await pilot.pause()
        await wait_for(pilot, lambda: bool(log.lines) and log.scroll_y == log.max_scroll_y)
        await pilot.pause()

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)
