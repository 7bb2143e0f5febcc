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
    s = TrainSettings(method="lora", precision="fp32")
    slow_step = estimate_time(spec, s, cpu).step_seconds
    assert slow_step == pytest.approx(2 * estimate_time(spec, s, fast).step_seconds)
    assert "measured" in estimate_time(spec, s, cpu).notes[0]


def test_freeze_on_a_mixture_costs_less_than_full_and_more_than_nothing() -> None:
    # A mixture's blocks hold every expert but use two per token: the frozen part's FLOPs come
    # from its active parameters (counting all of them made the step time negative).
    moe = spec_from_size("8x7B")
    freeze = flops_per_token(moe, TrainSettings(method="freeze", trainable_layers=2))
    full = flops_per_token(moe, TrainSettings(method="full"))
    assert 2 * moe.active_params < freeze < full
