"""A setting the request states survives planning unchanged (issue 11): fitting or not.

When a stated setting makes a plan too big, the plan says so, by how much, and names what
would fit as an alternative; it never swaps the setting for one that fits.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.hardware.device import target_from_vram
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import PlanRequest, plan


@pytest.fixture(scope="module")
def seven_b():
    return spec_from_size("7B")


@pytest.fixture(scope="module")
def gpu24():
    return target_from_vram(24)


def test_checkpointing_stated_off_is_not_switched_on(seven_b, gpu24) -> None:
    request = PlanRequest(method="lora", seq_len=2048, gradient_checkpointing=False)
    c = plan(seven_b, gpu24, request).candidates[0]
    assert not c.fits and c.settings.gradient_checkpointing is False
    assert "more than the" in c.reasons[0] and "gradient checkpointing off (stated)" in c.reasons[0]
    assert "gradient_checkpointing" in c.stated and "gradient_checkpointing" not in c.chosen
    alt = c.alternatives[0]
    assert alt.fits and alt.change == {"gradient_checkpointing": True}
    assert alt.text.startswith("with gradient checkpointing on: ") and alt.text.endswith("fits")
    assert any(r.startswith("would fit with gradient checkpointing on") for r in c.reasons)


def test_checkpointing_left_open_is_chosen_and_said(seven_b, gpu24) -> None:
    c = plan(seven_b, gpu24, PlanRequest(method="lora", seq_len=2048)).candidates[0]
    assert c.fits and c.settings.gradient_checkpointing is True
    assert c.chosen["gradient_checkpointing"] == "it does not fit without"
    assert any("gradient checkpointing on (chosen: it does not fit without" in r for r in c.reasons)
    on = plan(seven_b, gpu24, PlanRequest(method="lora", seq_len=2048, gradient_checkpointing=True))
    assert on.candidates[0].peak_bytes == c.peak_bytes and on.candidates[0].fits


def test_stated_adamw_never_becomes_8bit(seven_b, gpu24) -> None:
    chosen = plan(seven_b, gpu24, PlanRequest(method="freeze")).candidates[0]
    assert chosen.settings.optimizer == "adamw8bit"  # what the planner picks left alone
    report = plan(seven_b, gpu24, PlanRequest(optimizer="adamw"))
    assert {c.settings.optimizer for c in report.candidates} == {"adamw"}
    freeze = next(c for c in report.candidates if c.method == "freeze")
    assert not freeze.fits and freeze.settings.optimizer == "adamw"
    assert [a.change for a in freeze.alternatives] == [{"optimizer": "adamw8bit"}]
    assert "with optimizer adamw8bit: " in freeze.alternatives[0].text


def test_stated_precision_stays(seven_b, gpu24) -> None:
    report = plan(seven_b, gpu24, PlanRequest(precision="fp32"))
    assert {c.settings.precision for c in report.candidates} == {"fp32"}
    mixed = plan(seven_b, gpu24, PlanRequest(precision="bf16", method="full")).candidates[0]
    assert mixed.settings.precision == "bf16"  # never bf16-pure behind the user's back
    auto = plan(seven_b, gpu24, PlanRequest(precision="auto", method="full")).candidates[0]
    assert auto.settings.precision == "bf16" and "precision" in auto.stated


def test_stated_micro_batch_and_attention_stay(seven_b, gpu24) -> None:
    request = PlanRequest(method="qlora", micro_batch=4, attention="eager", seq_len=1024)
    c = plan(seven_b, gpu24, request).candidates[0]
    assert c.settings.micro_batch == 4 and c.settings.attention == "eager"
    sdpa = plan(seven_b, gpu24, PlanRequest(method="qlora", micro_batch=4, seq_len=1024))
    assert c.memory.allocated_bytes > sdpa.candidates[0].memory.allocated_bytes


def test_targets_subset_needs_less_than_all_linear(seven_b, gpu24) -> None:
    some = plan(seven_b, gpu24, PlanRequest(method="lora", lora_targets=("q_proj", "v_proj")))
    every = plan(seven_b, gpu24, PlanRequest(method="lora"))
    a, b = some.candidates[0], every.candidates[0]
    assert a.settings.lora_targets == ("q_proj", "v_proj")
    assert a.memory.trainable_params < b.memory.trainable_params
    same = PlanRequest(method="lora", micro_batch=1, gradient_checkpointing=False)
    a1 = plan(seven_b, gpu24, replace(same, lora_targets=("q_proj", "v_proj")))
    b1 = plan(seven_b, gpu24, same)
    assert a1.candidates[0].peak_bytes < b1.candidates[0].peak_bytes
    with pytest.raises(AffinerError, match="not a linear layer"):
        plan(seven_b, gpu24, PlanRequest(method="lora", lora_targets=("nope_proj",)))


def test_quantization_double_quant_dropout_and_layers_stay(seven_b, gpu24) -> None:
    report = plan(seven_b, gpu24, PlanRequest(quantization="fp4", double_quant=False))
    methods = [c.method for c in report.candidates]
    assert "lora8" not in methods  # int8 storage cannot be fp4
    q = next(c for c in report.candidates if c.method == "qlora")
    assert q.settings.effective_quantization == "fp4" and q.settings.double_quant is False
    dq = plan(seven_b, gpu24, PlanRequest(method="qlora", quantization="fp4"))
    assert q.memory.weights > dq.candidates[0].memory.weights
    with pytest.raises(AffinerError):
        PlanRequest(method="qlora", quantization="int8")
    d = plan(seven_b, gpu24, PlanRequest(method="lora", lora_dropout=0.0, lora_alpha=8))
    assert d.candidates[0].settings.lora_dropout == 0.0 and d.candidates[0].settings.lora_alpha == 8
    f = plan(seven_b, gpu24, PlanRequest(method="freeze", trainable_layers=3)).candidates[0]
    assert f.settings.trainable_layers == 3 and "trainable_layers" in f.stated


def test_json_has_the_three_figures_and_what_was_stated(seven_b, gpu24) -> None:
    data = plan(seven_b, gpu24, PlanRequest(gradient_checkpointing=False)).to_json()
    for cand in data["candidates"]:
        assert 0 < cand["allocated_bytes"] <= cand["reserved_bytes"] <= cand["peak_bytes"]
        assert "gradient_checkpointing" in cand["stated"]
        assert cand["gradient_checkpointing"] is False
        assert isinstance(cand["chosen"], dict) and isinstance(cand["alternatives"], list)
        for alt in cand["alternatives"]:
            assert alt["fits"] and alt["allocated_bytes"] <= alt["reserved_bytes"]
            assert alt["reserved_bytes"] <= alt["peak_bytes"]


def test_dropout_on_fused_experts_is_refused_as_run_toml_refuses_it() -> None:
    moe = spec_from_size("8x7B")
    h100 = target_from_vram(80)
    chosen = plan(moe, h100, PlanRequest(method="lora")).candidates[0]
    assert chosen.settings.lora_dropout == 0  # left open: what peft can do
    with pytest.raises(AffinerError, match="without dropout"):
        plan(moe, h100, PlanRequest(method="lora", lora_dropout=0.05))
    attention_only = ("q_proj", "k_proj", "v_proj", "o_proj")
    ok = plan(moe, h100, PlanRequest(method="lora", lora_dropout=0.05, lora_targets=attention_only))
    assert ok.candidates[0].settings.lora_dropout == 0.05


def test_stated_auto_precision_says_what_it_became(seven_b, gpu24) -> None:
    c = plan(seven_b, gpu24, PlanRequest(method="lora", precision="auto")).candidates[0]
    assert "precision auto (bf16)" in next(r for r in c.reasons if r.startswith("as stated: "))
