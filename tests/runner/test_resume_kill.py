"""Interrupting a real training run twice and carrying on each time: ``kill -9`` then
``affiner train --resume``, then ``affiner stop`` (SIGTERM) then resume again. The run ends
``finished`` with every step logged exactly once (after the resume rule of
`affiner.runner.run.events.effective_events`).

Both interruptions share one run so the suite starts three training processes, not four (each
pays for importing torch, transformers and peft). The run is long enough (30 logged steps, a
checkpoint every 5) that each interruption lands after a checkpoint and before the end.

The same run is also the suite's proof that ``affiner train`` trains a LoRA to a working
adapter (the loss goes down, evaluations every 10 steps, an adapter that changes the logits):
a separate uninterrupted run would pay for a fourth training process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from affiner.runner.run import launch
from affiner.runner.run.checkpoints import latest_checkpoint
from affiner.runner.run.events import (
    EvalResult,
    TrainLog,
    effective_events,
    read_events,
    read_status,
)
from affiner.runner.run.process import pid_alive
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import INTERRUPTED, summarize
from affiner.tui.cli.entry import main
from tests.runner.test_launch import (
    started_run_id,
    train_log_steps,
    wait_final,
    wait_until,
    write_training_toml,
)

STEPS = 30

pytestmark = pytest.mark.slow


def test_kill_9_and_stop_each_resume_to_a_finished_run(
    tiny_llama: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_training_toml(
        tmp_path, tiny_llama, max_steps=STEPS, checkpoint_every=5, eval_every=10
    )
    assert main(["train", str(toml), "--no-preflight"]) == 0  # returns at once
    out = capsys.readouterr().out
    rd = RunDir(runs_dir.resolve() / started_run_id(out))
    assert f"affiner attach {rd.run_id}" in out and f"affiner stop {rd.run_id}" in out
    wait_until(lambda: latest_checkpoint(rd) is not None, 120, "the first checkpoint", rd)

    # kill -9: no final state is written; the run reads as interrupted
    status = read_status(rd.path)
    assert status is not None and status.pid
    os.kill(status.pid, signal.SIGKILL)
    launch._children.pop(status.pid).wait(timeout=30)
    assert not pid_alive(status.pid)
    summary = summarize(rd)
    assert summary.state == INTERRUPTED, summary
    assert summary.step < STEPS and "resume from the checkpoint" in summary.message
    killed_at = latest_checkpoint(rd)[0]  # type: ignore[index]

    assert main(["train", "--resume", rd.run_id]) == 0
    out = capsys.readouterr().out
    assert f"Resuming run {rd.run_id}: resuming from the checkpoint at step {killed_at}" in out
    wait_until(
        lambda: latest_checkpoint(rd)[0] > killed_at,
        120,
        "a checkpoint after the resume",
        rd,  # type: ignore[index]
    )

    # affiner stop: SIGTERM, the worker saves a checkpoint where it is and ends `stopped`
    assert main(["stop", rd.run_id]) == 0
    out = capsys.readouterr().out
    assert "(sent SIGTERM)" in out and f"affiner train --resume {rd.run_id}" in out
    launch._children.clear()  # reaped by stop_run's wait
    summary = summarize(rd)
    assert summary.state == "stopped" and summary.step < STEPS, summary
    checkpoint = latest_checkpoint(rd)
    assert checkpoint is not None and checkpoint[0] == summary.step  # saved where it stopped

    assert main(["train", "--resume", rd.run_id]) == 0
    assert f"from the checkpoint at step {summary.step}" in capsys.readouterr().out
    assert wait_final(rd) == "finished", rd.log.read_text()[-3000:]
    assert train_log_steps(rd) == list(range(1, STEPS + 1))  # none twice, none missing

    # A working adapter: the loss went down, it was evaluated, and the adapter changes the model.
    events = effective_events(read_events(rd.path))
    losses = [e.loss for e in events if isinstance(e, TrainLog) and e.loss is not None]
    assert len(losses) == STEPS
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # the train loss goes down
    evals = [e.step for e in events if isinstance(e, EvalResult)]
    # the last attempt (from step ~10) ran 20 and 30 uninterrupted; 10 may fall in a stop
    assert evals == sorted(set(evals)) and {20, 30} <= set(evals) <= {10, 20, 30}, evals
    summary = summarize(rd)
    assert summary.progress == 1.0 and summary.best_eval_loss is not None

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    ids = torch.tensor([[1, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, rd.adapter)
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-5)
