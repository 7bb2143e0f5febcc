"""The time model's arithmetic: FLOPs per token by method, and what turns them into seconds."""

from __future__ import annotations

import pytest

from affiner.planner.hardware.device import DeviceTarget, target_from_catalog, target_from_vram
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.settings import TrainSettings
from affiner.planner.timing import MFU, estimate_time, flops_per_token


@pytest.fixture(scope="module")
def spec():
    return spec_from_size("7B")


def test_full_is_six_n_plus_attention(spec) -> None:
    s = TrainSettings(method="full", seq_len=1024)
    attention = 3 * 4 * spec.num_layers * 1024 * spec.num_attention_heads * spec.head_dim * 0.5
    assert flops_per_token(spec, s) == pytest.approx(6 * spec.params_total + attention)


def test_frozen_base_costs_about_four_n(spec) -> None:
    full = flops_per_token(spec, TrainSettings(method="full"))
    lora = flops_per_token(spec, TrainSettings(method="lora"))
    assert 0.6 < lora / full < 0.72


def test_checkpointing_adds_a_forward(spec) -> None:
    s = TrainSettings(method="full")
    ratio = flops_per_token(spec, s.with_(gradient_checkpointing=True)) / flops_per_token(spec, s)
    assert ratio == pytest.approx(4 / 3, rel=0.02)


def test_step_time_uses_the_precision_peak_and_stated_mfu(spec) -> None:
    gpu = target_from_catalog("A100 80GB")
    s = TrainSettings(method="full", micro_batch=4, seq_len=512, grad_accum=2)
    est = estimate_time(spec, s, gpu, train_rows=800, epochs=2)
    expected = flops_per_token(spec, s) * 4096 / (gpu.peak_tflops_bf16 * 1e12 * MFU["full"])
    assert est.step_seconds == pytest.approx(expected)
    assert est.steps_per_epoch == 100
    assert est.total_seconds == pytest.approx(200 * expected)
    assert any("utilisation" in n for n in est.notes)


def test_unknown_speed_gives_no_time(spec) -> None:
    est = estimate_time(spec, TrainSettings(), target_from_vram(24))
    assert est.step_seconds is None


def test_cpu_uses_the_measured_rate(spec) -> None:
    cpu = DeviceTarget(
        "cpu", "CPU", "cpu", 1 << 35, 1 << 35, False, False, peak_tflops_fp32=2.0, measured=True
    )
    fast = DeviceTarget(
        "cpu", "CPU", "cpu", 1 << 35, 1 << 35, False, False, peak_tflops_fp32=4.0, measured=True
    )
    s = TrainSettings(method="lora", precision="fp32", lora_dropout=0.0)
    slow_step = estimate_time(spec, s, cpu).step_seconds
    assert slow_step == pytest.approx(2 * estimate_time(spec, s, fast).step_seconds)
    assert "measured" in estimate_time(spec, s, cpu).notes[0]


def test_lora_dropout_costs_cpu_time_that_no_matmul_rate_buys_back(spec) -> None:
    from affiner.planner.timing import cpu_dropout_seconds

    cpu = DeviceTarget(
        "cpu", "CPU", "cpu", 1 << 35, 1 << 35, False, False, peak_tflops_fp32=2.0, measured=True
    )
    plain = TrainSettings(method="lora", precision="fp32", lora_dropout=0.0)
    dropped = plain.with_(lora_dropout=0.05)
    extra = cpu_dropout_seconds(spec, dropped, plain.tokens_per_step)
    assert extra > 0 and cpu_dropout_seconds(spec, plain, plain.tokens_per_step) == 0
    with_dropout = estimate_time(spec, dropped, cpu)
    assert with_dropout.step_seconds == pytest.approx(
        estimate_time(spec, plain, cpu).step_seconds + extra
    )
    assert any("LoRA dropout 0.05" in note for note in with_dropout.notes)
    # a mask per wrapped layer: fewer targets, fewer masks
    fewer = dropped.with_(lora_targets=("q_proj", "v_proj"))
    assert cpu_dropout_seconds(spec, fewer, plain.tokens_per_step) < extra


def test_freeze_on_a_mixture_costs_less_than_full_and_more_than_nothing() -> None:
    # A mixture's blocks hold every expert but use two per token: the frozen part's FLOPs come
    # from its active parameters (counting all of them made the step time negative).
    moe = spec_from_size("8x7B")
    freeze = flops_per_token(moe, TrainSettings(method="freeze", trainable_layers=2))
    full = flops_per_token(moe, TrainSettings(method="full"))
    assert 2 * moe.active_params < freeze < full


def test_a_tiny_step_is_never_free() -> None:
    # FLOPs alone put a 135M model's short step on an H100 at a fraction of a millisecond
    # ("0 ms/step"); kernel launches, the data loader and the optimizer take milliseconds.
    from affiner.planner.timing import STEP_OVERHEAD_SECONDS, overhead_floor
    from affiner.planner.units import format_duration

    tiny = spec_from_size("135M")
    h100 = target_from_catalog("H100")
    s = TrainSettings(method="lora", seq_len=16, micro_batch=1, grad_accum=4)
    est = estimate_time(tiny, s, h100, train_rows=1800)
    floor = overhead_floor(tiny, s)
    assert floor > STEP_OVERHEAD_SECONDS
    assert est.step_seconds == pytest.approx(floor) and est.overhead_seconds == floor
    assert format_duration(est.step_seconds) != "0 ms"
    assert any("floor" in n for n in est.notes)
    # more micro-batches a step launch more kernels
    assert overhead_floor(tiny, s.with_(grad_accum=8)) > floor


def test_total_time_is_the_step_time_times_the_steps(spec) -> None:
    gpu = target_from_catalog("A100 80GB")
    s = TrainSettings(method="lora", micro_batch=4, grad_accum=4)
    est = estimate_time(spec, s, gpu, train_rows=1000, epochs=1.5)
    assert est.steps_per_epoch == 63 and est.total_steps == 95  # ceil(63 x 1.5), as the Trainer
    assert est.total_seconds == pytest.approx(est.step_seconds * est.total_steps)
    assert est.practical and est.impractical_reason is None


def test_a_7b_on_a_slow_cpu_is_impractical_and_says_what_to_do(spec) -> None:
    slow = DeviceTarget(
        "cpu", "CPU", "cpu", 1 << 37, 1 << 37, False, False, peak_tflops_fp32=0.1, measured=True
    )
    est = estimate_time(spec, TrainSettings(method="lora", precision="fp32", grad_accum=16), slow)
    assert not est.practical and est.to_json()["practical"] is False
    assert est.impractical_reason.startswith("about ")
    assert "per step: impractical on a CPU; use a GPU (affiner plan --gpu NAME)" in (
        est.impractical_reason
    )
    assert est.impractical_reason.endswith("or a smaller model")


def test_a_run_of_weeks_is_impractical_even_at_a_short_step(spec) -> None:
    gpu = target_from_catalog("A100 80GB")
    s = TrainSettings(method="lora", micro_batch=4, grad_accum=4)
    est = estimate_time(spec, s, gpu, train_rows=50_000_000)
    assert est.step_seconds < 60 and not est.practical
    assert "in all" in est.impractical_reason and "--gpus N" in est.impractical_reason


def test_a_measured_step_calibrates_other_settings(spec) -> None:
    from affiner.planner.timing import calibrate

    gpu = target_from_catalog("A100 80GB")
    ran = TrainSettings(method="lora", micro_batch=2, seq_len=512, grad_accum=8)
    measured = estimate_time(spec, ran, gpu)
    longer = estimate_time(spec, ran.with_(seq_len=2048), gpu, train_rows=1600, epochs=2)
    tuned = calibrate(longer, measured, 2 * measured.step_seconds, gpu)
    assert tuned.calibration == pytest.approx(2.0)
    assert tuned.step_seconds == pytest.approx(2 * longer.step_seconds)
    assert tuned.total_seconds == pytest.approx(tuned.step_seconds * longer.total_steps)
    assert tuned.utilisation == pytest.approx(longer.utilisation / 2)
    assert "calibrated by a measured step" in tuned.notes[-1] == tuned.calibration_note
    assert longer.calibration is None and not any("calibrated" in n for n in longer.notes)
    # a calibration that makes the step unbearable makes the plan impractical
    slow = calibrate(longer, measured, 1000 * measured.step_seconds, gpu)
    assert not slow.practical and "per step" in slow.impractical_reason
    # without a step estimate there is nothing to scale
    unknown = estimate_time(spec, ran, target_from_vram(24))
    assert calibrate(unknown, unknown, 1.0, gpu).step_seconds is None
