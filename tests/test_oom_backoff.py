"""Out of memory in the run itself, on the CPU: injected ``torch.OutOfMemoryError`` on a tiny run.

The error is raised by a TrainerCallback inside the Trainer's own loop, where a CUDA
allocation failure would surface: in a training step, and in an evaluation batch. The recipe
must halve the micro-batch, double gradient accumulation, go on from the last checkpoint in the
same process (a warning event each time, ``run.toml`` rewritten), and give up after two
back-offs with what to change. Also here: a worker the kernel killed for memory (a synthetic run
folder), the pre-flight on a resume whose settings changed, and the summary's "adjusted from".
On a GPU (skipped without one), a real CUDA allocation failure goes through the same back-off.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from affiner.planner.units import GIB
from affiner.runner.config import load_config, read_raw_config, save_config
from affiner.runner.run.checkpoints import SETTINGS_RECORD, read_settings_record
from affiner.runner.run.events import (
    EventWriter,
    Preflight,
    RunStarted,
    RunStatus,
    SystemSample,
    TrainLog,
    effective_events,
    read_events,
    read_status,
    write_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import INTERRUPTED, summarize
from affiner.runner.train import EXIT_FAILED, EXIT_FINISHED, run_training
from affiner.runner.training import (
    OomBackoff,
    changed_settings,
    memory_settings,
    should_preflight,
)
from tests.train_helpers import events_of, make_run, of_type

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"


class _OutOfMemory(TrainerCallback):
    """Raises torch.OutOfMemoryError in training step `train_at` and in the evaluation at
    `eval_at`, once each unless `always` (then in every attempt that reaches `train_at`)."""

    def __init__(self, train_at: int | None, eval_at: int | None = None, always: bool = False):
        self.train_at, self.eval_at, self.always = train_at, eval_at, always
        self.raised: list[tuple[str, int, int]] = []  # (where, step, micro-batch)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.train_at and (self.always or not self._did("train")):
            self.raised.append(("train", self.train_at, args.per_device_train_batch_size))
            raise torch.OutOfMemoryError(OOM)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.eval_at and not self._did("eval"):
            self.raised.append(("eval", self.eval_at, args.per_device_eval_batch_size))
            raise torch.OutOfMemoryError(OOM)

    def _did(self, where: str) -> bool:
        return any(entry[0] == where for entry in self.raised)


class _StatusSpy(TrainerCallback):
    """Reads status.json's message while steps run and while an evaluation runs."""

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        self.seen: set[str] = set()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen.add(read_status(self.rd.path).message)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen.add(read_status(self.rd.path).message)


def _batch(rd: RunDir) -> tuple[int, int]:
    training = read_raw_config(rd.config)["training"]
    return training["micro_batch"], training["grad_accum"]


@pytest.mark.slow
def test_out_of_memory_in_training_and_in_evaluation_backs_off_twice_and_finishes(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        training={"max_steps": 7, "logging_steps": 1, "micro_batch": 4, "grad_accum": 1},
        eval={"every_steps": 6, "max_rows": 4},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )
    oom, spy = _OutOfMemory(train_at=5, eval_at=6), _StatusSpy(rd)

    assert run_training(rd.path, callbacks=[oom, spy]) == EXIT_FINISHED

    # training step 5 with 4 x 1, then the evaluation at step 6 with 2 x 2
    assert oom.raised == [("train", 5, 4), ("eval", 6, 2)]
    raw = events_of(rd)
    backoffs = [w for w in of_type(raw, "warning") if w["code"] == "oom_backoff"]
    assert [w["step"] for w in backoffs] == [3, 3]
    assert "in training step 5 with micro_batch 4 x grad_accum 1" in backoffs[0]["message"]
    assert "micro_batch 2 x grad_accum 2 (the same effective batch" in backoffs[0]["message"]
    assert "while evaluating at step 6 with micro_batch 2 x grad_accum 2" in backoffs[1]["message"]
    assert "micro_batch 1 x grad_accum 4" in backoffs[1]["message"]
    assert [e["resumed_from_step"] for e in of_type(raw, "run_started")] == [None, 3, 3]
    assert _batch(rd) == (1, 4)  # a later resume starts from the batch that fit
    assert read_settings_record(rd.checkpoints / "checkpoint-6")["micro_batch"] == 1

    events = effective_events(read_events(rd.path))
    logs = [e for e in events if isinstance(e, TrainLog)]
    assert [e.step for e in logs] == list(range(1, 8))  # each step once, none missing
    assert [e.step for e in events if e.type == "eval"] == [6, 7]
    assert events[-1].type == "run_finished" and events[-1].state == "finished"
    assert read_status(rd.path).state == "finished"
    assert {"training", "evaluating at step 6"} <= spy.seen  # the status follows the phase


@pytest.mark.slow
def test_a_third_out_of_memory_stops_the_run_with_what_to_change(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        training={"max_steps": 2, "micro_batch": 8, "grad_accum": 1},
        eval={"every_steps": 50},
        checkpoint={"every_steps": 50},
    )
    oom = _OutOfMemory(train_at=1, always=True)

    assert run_training(rd.path, callbacks=[oom]) == EXIT_FAILED

    assert [micro for _, _, micro in oom.raised] == [8, 4, 2]
    raw = events_of(rd)
    assert len([w for w in of_type(raw, "warning") if w["code"] == "oom_backoff"]) == 2
    (error,) = of_type(raw, "error")
    assert error["code"] == "oom"
    message = error["message"]
    assert "after 2 back-off(s) (micro_batch 8 x grad_accum 1 → micro_batch 2 x grad_accum 4)" in (
        message
    )
    assert "[data].max_seq_len" in message and "gradient_checkpointing" in message
    status = read_status(rd.path)
    assert status.state == "failed" and status.message == message
    assert raw[-1]["type"] == "run_finished" and raw[-1]["state"] == "failed"


def test_backoff_keeps_the_effective_batch_and_stops_at_its_limit_or_at_one() -> None:
    backoff = OomBackoff.starting_at(6, 2)
    shapes = [backoff.next(), backoff.next(), backoff.next()]
    assert [(s.micro_batch, s.grad_accum) for s in shapes if s] == [(3, 4), (1, 8)]
    assert shapes[2] is None
    assert OomBackoff.starting_at(1, 4).next() is None  # nothing left to halve


def _killed_run(root: Path, name: str, sample: SystemSample) -> RunDir:
    """A run folder left by a worker that died without a word: status running, pid gone."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    rd = RunDir(root / name)
    rd.path.mkdir(parents=True)
    rd.config.write_text('[model]\nname_or_path = "m"\n', encoding="utf-8")
    with EventWriter(rd.path) as writer:
        writer.write(RunStarted(run_id=name, total_steps=100, pid=proc.pid))
        writer.write(TrainLog(step=3, loss=2.0, total_steps=100))
        writer.write(sample)
        writer.write(TrainLog(step=4, loss=1.9, total_steps=100))
    write_status(rd.path, RunStatus(run_id=name, state="running", pid=proc.pid, step=4))
    return rd


def test_a_worker_killed_near_the_machines_memory_reads_as_likely_out_of_memory(
    tmp_path: Path,
) -> None:
    total = 24 * GIB
    near = SystemSample(step=3, ram_total=total, ram_used=int(23 * GIB), process_peak_rss=22 * GIB)
    low = SystemSample(step=3, ram_total=total, ram_used=4 * GIB, process_rss=2 * GIB)

    killed = summarize(_killed_run(tmp_path, "near", near))
    calm = summarize(_killed_run(tmp_path, "low", low))

    assert killed.state == calm.state == INTERRUPTED  # both resumable
    assert killed.message.startswith("killed (likely out of memory: peak RSS 22.0 GiB of 24.0 GiB)")
    assert "no checkpoint yet" in killed.message and "micro_batch" in killed.message
    assert calm.message.startswith("interrupted: the training process is gone")


def test_the_preflight_runs_again_only_when_settings_that_shape_memory_changed(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(tmp_path, tiny_llama, plan={"predicted_step_seconds": 100.0})
    cfg = load_config(rd.config)
    cfg.training.preflight = True
    recorded = memory_settings(cfg)
    assert changed_settings(recorded, memory_settings(cfg)) == []
    assert not should_preflight(cfg, 64, resuming=True, changed=[])
    assert should_preflight(cfg, 64, resuming=False, changed=[])
    cfg.training.micro_batch, cfg.data.max_seq_len = 2, 32
    changed = changed_settings(recorded, memory_settings(cfg))
    assert changed == ["max_seq_len 64 → 32", "micro_batch 4 → 2"]
    assert should_preflight(cfg, 64, resuming=True, changed=changed)
    assert changed_settings(None, memory_settings(cfg)) == []  # an older checkpoint: no record


class _Killed(BaseException):
    """Stands for kill -9: not an Exception, so the recipe writes no final state."""


class _KillAt(TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at_step:
            raise _Killed


@pytest.mark.slow
def test_a_resume_with_a_changed_batch_runs_the_preflight_and_repeats_no_data_warning(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        data={"max_seq_len": 8},  # every row is cut: a truncation warning
        training={"max_steps": 4, "logging_steps": 1},
        eval={"every_steps": 50},
        checkpoint={"every_steps": 2},
    )
    with pytest.raises(_Killed):
        run_training(rd.path, callbacks=[_KillAt(3)])
    assert (rd.checkpoints / "checkpoint-2" / SETTINGS_RECORD).exists()
    cfg = load_config(rd.config)
    cfg.training.micro_batch, cfg.training.preflight = 2, True
    cfg.plan.predicted_step_seconds = 200.0  # 4 steps x 200 s: a long run
    save_config(cfg, rd.config)

    assert run_training(rd.path, resume=True) == EXIT_FINISHED

    raw = events_of(rd)
    warnings = of_type(raw, "warning")
    (changed,) = [w for w in warnings if w["code"] == "settings_changed"]
    assert "micro_batch 4 → 2" in changed["message"]
    (preflight,) = of_type(raw, "preflight")
    assert (preflight["from_micro_batch"], preflight["micro_batch"]) == (2, 2)
    assert raw.index(preflight) < raw.index(of_type(raw, "run_started")[-1])
    assert len([w for w in warnings if w["code"] == "truncation"]) == 1  # not again on resume
    assert of_type(raw, "run_started")[-1]["resumed_from_step"] == 2


def test_the_preflight_summary_says_the_batch_it_started_from() -> None:
    from rich.console import Console

    from affiner.runner.config import RunConfig
    from affiner.tui.cli.runs import render_preflight

    cfg = RunConfig()
    cfg.training.micro_batch, cfg.training.grad_accum = 64, 4  # already rewritten to the result
    result = Preflight(
        device="cpu",
        measured_peak_bytes=GIB,
        measured_step_seconds=1.0,
        micro_batch=64,
        grad_accum=4,
        adjusted=True,
        from_micro_batch=256,
        from_grad_accum=1,
    )
    console = Console(width=120, file=io.StringIO())
    console.print(render_preflight(result, cfg))
    text = console.file.getvalue()
    assert "adjusted from micro_batch 256 · grad_accum 1" in text


class _CudaTooBig(TrainerCallback):
    """A real CUDA allocation failure: while the micro-batch is `above` or more, step `at`
    asks the caching allocator for twice the GPU's memory. It also notes the memory allocated
    when each attempt starts training, to show a back-off let the failed attempt go."""

    def __init__(self, at: int, above: int) -> None:
        self.at, self.above = at, above
        self.allocated_at_start: list[int] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.allocated_at_start.append(torch.cuda.memory_allocated())

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.at and args.per_device_train_batch_size >= self.above:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.empty(2 * total, dtype=torch.uint8, device="cuda")  # raises OutOfMemoryError


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a driver")
def test_a_real_cuda_out_of_memory_backs_off_on_the_gpu(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        training={
            "max_steps": 6,
            "logging_steps": 1,
            "micro_batch": 8,
            "device": "cuda",
            "precision": "auto",
        },
        eval={"every_steps": 50},
        checkpoint={"every_steps": 2},
    )
    fault = _CudaTooBig(at=4, above=4)

    assert run_training(rd.path, callbacks=[fault]) == EXIT_FINISHED

    raw = events_of(rd)
    backoffs = [w for w in of_type(raw, "warning") if w["code"] == "oom_backoff"]
    assert len(backoffs) == 2 and "micro_batch 2 x grad_accum 4" in backoffs[1]["message"]
    assert _batch(rd) == (2, 4)
    logs = [e for e in effective_events(read_events(rd.path)) if isinstance(e, TrainLog)]
    assert [e.step for e in logs] == list(range(1, 7))
    first, *later = fault.allocated_at_start
    # each attempt starts with one model on the GPU: the failed ones' weights, gradients and
    # optimizer state were let go (a leak would at least double the figure)
    assert all(after <= first * 1.25 for after in later), fault.allocated_at_start
