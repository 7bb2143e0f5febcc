"""``affiner plan --max-seq-len``: the longest sequence of a plan that would really be made."""

from __future__ import annotations

import json

import pytest

from affiner.planner.hardware.device import target_from_vram
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import PlanRequest, longest_sequence_for, plan
from affiner.planner.sequence_fit import SAFETY_MARGIN, longest_sequence, usable_memory


@pytest.fixture(scope="module")
def small():
    return spec_from_size("0.5B")


def test_lora_on_12gb_gets_the_settings_the_plan_would_use_at_that_length(small) -> None:
    card = target_from_vram(12)
    request = PlanRequest(method="lora")
    at_512 = plan(small, card, request).best
    # before: the 512-token plan's settings (its optimizer, its accumulation) at micro-batch 1
    before = longest_sequence(small, card, at_512.settings.with_(micro_batch=1)).longest
    found = longest_sequence_for(small, card, request, "lora")
    assert found.longest > before
    chosen = found.settings
    assert chosen is not None and chosen.seq_len == found.longest
    assert chosen.optimizer != at_512.settings.optimizer  # 8-bit AdamW is what fits there
    assert chosen.micro_batch == 1 and chosen.effective_batch >= request.target_batch
    assert found.needs_checkpointing == chosen.gradient_checkpointing
    assert found.margin == SAFETY_MARGIN and found.usable_bytes == usable_memory(card)


def test_full_fine_tuning_at_length_may_take_pure_bf16(small) -> None:
    card = target_from_vram(12)
    request = PlanRequest(method="full")
    before = longest_sequence(
        small, card, plan(small, card, request).best.settings.with_(micro_batch=1)
    )
    found = longest_sequence_for(small, card, request, "full")
    assert found.longest > 2 * before.longest
    assert (found.settings.optimizer, found.settings.precision) == ("adamw8bit", "bf16-pure")


def test_stated_settings_stay_as_stated_at_length(small) -> None:
    card = target_from_vram(12)
    request = PlanRequest(method="full", optimizer="adamw", gradient_checkpointing=False)
    found = longest_sequence_for(small, card, request, "full")
    assert found.settings.optimizer == "adamw" and not found.settings.gradient_checkpointing
    assert found.with_checkpointing is None and found.without_checkpointing == found.longest


def test_the_margin_is_the_requests_and_a_smaller_one_fits_longer(small) -> None:
    card = target_from_vram(12)
    tight = longest_sequence_for(
        small, card, PlanRequest(method="lora", safety_margin=0.02), "lora"
    )
    usual = longest_sequence_for(small, card, PlanRequest(method="lora"), "lora")
    assert tight.margin == 0.02 and tight.longest > usual.longest


def test_stated_checkpointing_is_the_only_one_searched(small) -> None:
    card = target_from_vram(12)
    ways = [c.settings.with_(micro_batch=1) for c in plan(small, card, PlanRequest()).candidates]
    lora = [w for w in ways if w.method == "lora"]
    on = longest_sequence(small, card, lora, checkpointing=True)
    assert on.without_checkpointing is None and on.needs_checkpointing
    off = longest_sequence(small, card, lora, checkpointing=False)
    assert off.with_checkpointing is None and not off.needs_checkpointing
    assert on.longest > off.longest > 0


def test_the_cli_says_the_margin_and_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from affiner.tui.cli.entry import main

    args = ["plan", "--model", "0.5B", "--vram", "12", "--method", "lora", "--max-seq-len"]
    assert main([*args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["safety_margin"] == SAFETY_MARGIN
    assert answer["usable_bytes"] == usable_memory(target_from_vram(12))
    assert answer["optimizer"] == "adamw8bit" and answer["max_seq_len"] > 2048
    for key in ("method", "micro_batch", "gradient_checkpointing", "context_window"):
        assert key in answer
    assert main(args) == 0
    words = capsys.readouterr().out
    assert f"{answer['max_seq_len']} tokens" in words
    assert "safety margin kept: 8% of the free memory" in words
    assert "optimizer adamw8bit" in words
