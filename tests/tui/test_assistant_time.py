"""The assistant's time is the plan's: the steps the planner counts as the Trainer does, and,
after a pre-flight, its measured step calibrating the plan (real planner, no terminal)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.hardware.device import target_from_catalog
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import plan
from affiner.planner.units import format_duration
from affiner.runner.run.events import Preflight
from affiner.tui.assistant.flow import AssistantFlow, DataPreview, Reply
from affiner.tui.screens.assistant import AssistantScreen
from tests.assistant_fakes import hardware

ROWS = 1001  # batch 16 at micro-batch 8 x 2: 126 micro-batches, 63 steps an epoch, 189 in 3
NAIVE = math.ceil(ROWS / 16 * 3)  # 188: rows / batch x epochs, the count the Trainer does not make


def texts(reply: Reply) -> str:
    return "\n".join(say.text for say in reply.messages)


def planned(flow: AssistantFlow, reply: Reply) -> Reply:
    """Run the reply's plan task with the real planner, as the screen's worker does."""
    assert [t.kind for t in reply.tasks if t.kind == "plan"] == ["plan"]
    return flow.plan_ready(plan(flow.spec, flow.device, flow.plan_request()))


@pytest.fixture
def flow(tmp_path: Path) -> AssistantFlow:
    """LoRA for a 1B on an RTX 4090 over 1,001 rows: micro-batch 8 x 2 accumulated."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "the cat sat"}\n')
    flow = AssistantFlow()
    flow.hardware_ready(hardware(), target_from_catalog("4090"))
    flow.submit("1B")
    planned(flow, flow.model_ready(spec_from_size("1B")))
    reply = flow.data_ready(DataPreview(path=str(data), format="chat", rows=ROWS))
    assert flow.plan_request().train_rows == ROWS  # the plan made before the data is redone
    planned(flow, reply)
    flow.submit("use lora")
    s = flow.candidate().settings
    assert (s.method, s.micro_batch, s.grad_accum) == ("lora", 8, 2)
    return flow


def preflight(step: float, **batch: object) -> Preflight:
    return Preflight(
        device="NVIDIA GeForce RTX 4090",
        measured_peak_bytes=8 * 10**9,
        measured_step_seconds=step,
        micro_batch=batch.get("micro_batch", 8),
        grad_accum=batch.get("grad_accum", 2),
        adjusted=bool(batch.get("adjusted", False)),
    )


def test_the_steps_shown_are_the_plans_not_rows_over_batch(flow: AssistantFlow) -> None:
    time = flow.candidate().time
    assert time.total_steps == 189 != NAIVE
    text = texts(flow.submit("how long?"))
    assert f"LoRA: {time.total_steps} steps (1,001 rows × 3 epochs ÷ (micro-batch 8 × 2" in text
    assert "as the Trainer counts: 63 an epoch" in text
    assert f"≈ **{format_duration(time.total_seconds)}**." in text
    assert "alibrated" not in text
    line = AssistantScreen.summary_line(SimpleNamespace(flow=flow))
    assert f", {time.total_steps} steps ≈ {format_duration(time.total_seconds)}" in line
    assert "measured" not in line


def test_epochs_re_plan_and_show_the_plans_new_count(flow: AssistantFlow) -> None:
    reply = planned(flow, flow.submit("epochs 1.5"))
    time = flow.candidate().time
    assert time.total_steps == 95  # ceil(63 x 1.5); rows / batch x epochs would say 94
    assert "Epochs: 3 → **1.5**.\n\nLoRA: 95 steps (1,001 rows × 1.5 epochs" in texts(reply)


def test_after_a_pre_flight_how_long_is_calibrated_by_it(flow: AssistantFlow) -> None:
    model_step = flow.candidate().time.step_seconds
    reply = flow.preflight_ready(preflight(2.0))
    request = flow.plan_request()
    assert (request.measured_step_seconds, request.method) == (2.0, "lora")
    assert request.measured_step_source == "the pre-flight" and request.micro_batch is None
    reply = planned(flow, reply)
    time = flow.candidate().time
    assert time.calibration == pytest.approx(2.0 / model_step)
    assert time.total_steps == 189 and time.total_seconds == pytest.approx(2.0 * 189)
    total = format_duration(2.0 * 189)
    assert "Re-planned with the pre-flight's step time." in texts(reply)
    text = texts(flow.submit("how long?"))
    assert "LoRA: 189 steps (" in text and f"× 2.0 s ≈ **{total}**." in text
    assert (
        f"Calibrated by the pre-flight: 2.0 s where the model said {format_duration(model_step)}"
        in text
    )
    line = AssistantScreen.summary_line(SimpleNamespace(flow=flow))
    assert f", 189 steps ≈ {total} (measured step)" in line
    # epochs do not change a step: the next plan keeps the measured figure
    planned(flow, flow.submit("epochs 2"))
    assert flow.candidate().time.total_seconds == pytest.approx(2.0 * 126)


def test_an_adjusted_pre_flight_batch_is_what_the_run_takes(flow: AssistantFlow) -> None:
    assert flow.build_config().training.micro_batch == 8
    event = preflight(3.0, micro_batch=4, grad_accum=4, adjusted=True)
    reply = flow.preflight_ready(event)
    cfg = flow.build_config()  # launched before the calibrated plan is back
    assert (cfg.training.micro_batch, cfg.training.grad_accum) == (4, 4)
    assert flow.plan_request().micro_batch == 4  # stated, so the plan is of what ran
    planned(flow, reply)
    s = flow.candidate().settings
    assert (s.micro_batch, s.grad_accum) == (4, 4)
    cfg = flow.build_config()
    assert (cfg.training.micro_batch, cfg.training.grad_accum) == (4, 4)
    assert flow.candidate().time.step_seconds == pytest.approx(3.0)


@pytest.mark.parametrize(
    "line", ["seq 1024", "batch 8", "rank 32", "checkpointing on", "use qlora"]
)
def test_a_setting_or_method_change_drops_the_calibration(flow: AssistantFlow, line: str) -> None:
    event = preflight(2.0, micro_batch=4, grad_accum=4, adjusted=True)
    planned(flow, flow.preflight_ready(event))
    assert flow.candidate().time.calibration
    planned(flow, flow.submit(line))
    request = flow.plan_request()
    assert request.measured_step_seconds is None and request.micro_batch is None
    assert request.method is None and len(flow.plan.candidates) > 1  # every method again
    assert flow.candidate().time.calibration is None
    assert "alibrated" not in texts(flow.submit("how long?"))
    if line == "use qlora":
        assert flow.candidate().method == "qlora"
    # the run takes the new plan's batch, not the pre-flight's
    assert flow.build_config().training.micro_batch == flow.candidate().settings.micro_batch
    # the measurement is set aside, not lost: the measured settings again are planned with
    # it again (issue 12: a re-plan of the same settings gives the same numbers)
    assert flow.measured is not None


def test_a_cpu_pre_flight_does_not_calibrate_a_gpu_plan(flow: AssistantFlow) -> None:
    event = Preflight(device="cpu", measured_peak_bytes=10**9, measured_step_seconds=30.0)
    reply = flow.preflight_ready(event)
    assert not reply.tasks and flow.measured is None
    assert "ran on the CPU, not on RTX 4090" in texts(reply)
    assert flow.plan_request().measured_step_seconds is None


def test_a_change_while_the_pre_flight_runs_leaves_the_plan_uncalibrated(
    flow: AssistantFlow,
) -> None:
    ((task,),) = [flow.submit("preflight").tasks]
    assert task.kind == "preflight" and task.arg.method.name == "lora"
    planned(flow, flow.submit("seq 1024"))  # changed before the pre-flight's result is back
    flow.preflight_ready(preflight(2.0))
    assert flow.plan_request().measured_step_seconds is None
