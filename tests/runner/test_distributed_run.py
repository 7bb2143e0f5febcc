"""Two CPU processes (DDP over gloo) through the launch path users take: ``affiner train`` of a
run.toml with ``[distributed] processes = 2`` (its pre-flight measured by both ranks), ``affiner stop``, ``--resume``, a ``kill -9`` of
rank 1 and ``--resume`` again, to a finished run whose held-out loss is within 5% of one
process trained on the same data with the same effective batch (4 x 2 accumulation there,
4 on each of two ranks here).

One run takes all four launches (each pays for starting accelerate and two ranks that import
torch, transformers and peft); the single-process baseline trains in this process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from affiner.runner.run import launch
from affiner.runner.run.checkpoints import latest_checkpoint
from affiner.runner.run.distributed import read_rank_records
from affiner.runner.run.events import EvalResult, effective_events, read_events, read_status
from affiner.runner.run.process import pid_alive
from affiner.runner.run.rundir import RunDir
from affiner.runner.train import run_training
from affiner.tui.cli.entry import main
from tests.runner.test_launch import started_run_id, wait_final, wait_until
from tests.train_helpers import dict_events, make_run, of_type

STEPS = 80
pytestmark = pytest.mark.slow


def settings(grad_accum: int) -> dict[str, dict[str, object]]:
    return {
        "training": {
            "max_steps": STEPS,
            "micro_batch": 4,
            "grad_accum": grad_accum,
            "preflight": grad_accum == 1,  # the two ranks measure their layout first
        },
        "eval": {"every_steps": 40},
        "checkpoint": {"every_steps": 5, "keep_last": 2},
        # planned at 30 s a step: a long run, so its first launch measures the layout first
        "plan": {"predicted_step_seconds": 30.0},
    }


def final_eval_loss(rd: RunDir) -> float:
    evals = [e for e in effective_events(read_events(rd.path)) if isinstance(e, EvalResult)]
    assert evals and evals[-1].step == STEPS, evals
    return float(evals[-1].loss)


def rank_pids(rd: RunDir) -> dict[int, int]:
    return {r.rank: r.pid for r in read_rank_records(rd) if pid_alive(r.pid)}


def test_two_processes_stop_resume_survive_a_killed_rank_and_match_one(
    tiny_llama: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_run(tmp_path / "ddp", tiny_llama, distributed={"processes": 2}, **settings(1))
    assert main(["train", str(source.config)]) == 0
    rd = RunDir(runs_dir.resolve() / started_run_id(capsys.readouterr().out))

    # -- affiner stop: every rank saves the same checkpoint and ends "stopped"
    wait_until(lambda: latest_checkpoint(rd) is not None, 120, "the first checkpoint", rd)
    result = launch.stop_run(rd.run_id)
    assert result.state == "stopped", (result.message, rd.log.read_text()[-3000:])
    ranks = read_rank_records(rd)
    assert [(r.rank, r.exit_code) for r in ranks] == [(0, 3), (1, 3)]
    stopped_at = read_status(rd.path).step
    assert {r.step for r in ranks} == {stopped_at}
    assert latest_checkpoint(rd)[0] == stopped_at

    # -- resume, then kill -9 rank 1: the run fails naming it, never hangs
    assert main(["train", "--resume", rd.run_id]) == 0
    wait_until(
        lambda: len(rank_pids(rd)) == 2 and (latest_checkpoint(rd) or (0,))[0] > stopped_at,
        120,
        "the resumed ranks' first checkpoint",
        rd,
    )
    os.kill(rank_pids(rd)[1], signal.SIGKILL)
    assert wait_final(rd, timeout=120) == "failed"
    status = read_status(rd.path)
    assert status.message.startswith("Rank 1 (node 0, pid "), status.message
    assert "was killed by SIGKILL" in status.message
    errors = [e for e in of_type(dict_events(rd), "error") if e["code"] == "rank_failed"]
    assert errors and errors[-1]["message"] == status.message
    assert not rank_pids(rd), "a rank outlived the failed run"

    # -- resume to the end
    capsys.readouterr()
    assert main(["train", "--resume", rd.run_id, "--foreground"]) == 0, rd.log.read_text()[-3000:]
    assert read_status(rd.path).state == "finished"

    events = dict_events(rd)
    started = of_type(events, "run_started")
    assert {(e["world_size"], e["strategy"], e["nodes"]) for e in started} == {(2, "ddp", 1)}
    assert all(e["pid"] != r.pid for e in started for r in read_rank_records(rd))  # the run's
    tagged = {(e["rank"], e["node"]) for e in of_type(events, "system")}
    assert {(0, 0), (1, 0)} <= tagged, tagged
    assert all(e["process_rss"] for e in of_type(events, "system") if e["rank"] == 1)
    # one process trains the same rows with the same effective batch (after: two cores)
    single = make_run(tmp_path / "single", tiny_llama, **settings(2))
    assert run_training(single.path) == 0
    single_loss = final_eval_loss(single)
    loss = final_eval_loss(rd)
    assert abs(loss - single_loss) <= 0.05 * single_loss, (loss, single_loss)
    assert (rd.adapter / "adapter_model.safetensors").exists()
    (preflight,) = of_type(events, "preflight")  # once: the resumes kept their settings
    assert len(preflight["rank_peaks"]) == 2 and all(preflight["rank_peaks"])
    assert preflight["measured_peak_bytes"] == max(preflight["rank_peaks"])
