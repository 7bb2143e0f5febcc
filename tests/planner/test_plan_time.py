"""Plan times you can believe: never 0 ms a step, and a plain word when a plan is impractical."""

from __future__ import annotations

import dataclasses

import pytest

from affiner.planner.hardware.device import DeviceTarget, target_from_catalog
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import PlanRequest, plan
from affiner.planner.timing import overhead_floor
from affiner.planner.units import format_duration


def _cpu(tflops: float) -> DeviceTarget:
    return DeviceTarget(
        "cpu", "CPU (test)", "cpu", 64 << 30, 60 << 30, False, False,
        peak_tflops_fp32=tflops, measured=True,
    )  # fmt: skip


def test_a_small_model_on_an_h100_pays_at_least_the_overhead_floor() -> None:
    spec = spec_from_size("135M")
    report = plan(spec, target_from_catalog("H100"), PlanRequest(seq_len=32, train_rows=7200))
    for c in report.candidates:
        assert c.time.step_seconds >= overhead_floor(spec, c.settings)
        assert format_duration(c.time.step_seconds) != "0 ms"
        assert c.time.total_seconds == c.time.step_seconds * c.time.total_steps
        assert c.to_json()["practical"] is True


def test_the_plan_prefers_a_practical_method_and_says_why_the_other_is_not() -> None:
    report = plan(spec_from_size("3B"), _cpu(1.0), PlanRequest())
    full = next(c for c in report.candidates if c.method == "full")
    assert full.fits and not full.time.practical and full.to_json()["practical"] is False
    assert any("impractical on a CPU" in r for r in full.reasons)
    assert report.best is not None and report.best.method != "full"
    assert report.best.time.practical
    assert "too, but impractical on this device" in report.best.reasons[1]
    assert "fits too, ranked lower" not in full.reasons


def test_a_7b_on_a_slow_cpu_is_recommended_only_with_the_word_impractical() -> None:
    report = plan(spec_from_size("7B"), _cpu(0.07), PlanRequest())
    best = report.best
    assert best is not None and not best.time.practical
    said = [r for r in best.reasons if "impractical" in r]
    assert said == [best.time.impractical_reason]
    assert said[0].startswith(f"about {format_duration(best.time.step_seconds)} per step")
    assert said[0].endswith(
        "impractical on a CPU; use a GPU (affiner plan --gpu NAME) or a smaller model"
    )
    assert best.to_json()["time"]["practical"] is False


def test_steps_are_counted_as_the_trainer_counts_them() -> None:
    from affiner.planner.timing import optimizer_steps

    # 1001 rows in micro-batches of 8: 126 batches, the last one short; 4 a step: 31 full
    # steps and one of 2 batches; 3 epochs of 32
    assert optimizer_steps(1001, 8, 4, 3.0) == 96
    assert optimizer_steps(1001, 8, 4, 0.5) == 16  # a fraction of an epoch rounds up
    assert optimizer_steps(1000, 4, 1, 1.0, num_gpus=2) == 125  # each device a share
    assert optimizer_steps(3, 8, 4, 1.0) == 1  # never fewer than one
    report = plan(spec_from_size("1B"), _cpu(1.0), PlanRequest(train_rows=1001, epochs=3.0))
    for c in report.candidates:
        s = c.settings
        assert c.time.total_steps == optimizer_steps(1001, s.micro_batch, s.grad_accum, 3.0)
        assert c.time.total_seconds == pytest.approx(c.time.step_seconds * c.time.total_steps)


def test_a_measured_step_of_the_run_calibrates_every_candidate() -> None:
    spec, cpu = spec_from_size("135M"), _cpu(1.0)
    request = PlanRequest(method="lora", micro_batch=4, target_batch=4, train_rows=400)
    model = plan(spec, cpu, request).candidates[0].time
    measured = dataclasses.replace(
        request,
        method=None,
        measured_step_seconds=3 * model.step_seconds,
        measured_step_source="the pre-flight",
    )
    # ... but the measured one must be the request's own method
    assert all(c.time.calibration is None for c in plan(spec, cpu, measured).candidates)
    measured = dataclasses.replace(measured, method="lora")
    (lora,) = plan(spec, cpu, measured).candidates
    assert lora.time.calibration == pytest.approx(3.0)
    assert lora.time.step_seconds == pytest.approx(3 * model.step_seconds)
    assert lora.time.total_seconds == pytest.approx(3 * model.total_seconds)
    assert "calibrated by the pre-flight" in lora.time.notes[-1]
    assert any("(calibrated by a measured step)" in r for r in lora.reasons)
    assert not any("(estimate)" in r for r in lora.reasons)
    # measured at other settings (a "what if" beside a run that ran): scaled by that figure
    other = dataclasses.replace(measured, measured_step_estimate=model.step_seconds / 2)
    (lora,) = plan(spec, cpu, other).candidates
    assert lora.time.calibration == pytest.approx(6.0)
