"""ModelSpec's derived facts that the memory model relies on."""

from __future__ import annotations

import dataclasses

import pytest

from affiner.planner.hardware.device import target_from_vram
from affiner.planner.memory.peak import estimate_memory
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.settings import TrainSettings


@pytest.mark.parametrize(
    ("architecture", "head"),
    [
        ("LlamaForCausalLM", True),
        ("GPT2LMHeadModel", True),
        ("BertForMaskedLM", True),
        ("BertModel", False),
        ("LlamaForSequenceClassification", False),
        ("BertForTokenClassification", False),
    ],
)
def test_has_lm_head_follows_the_architecture(architecture: str, head: bool) -> None:
    spec = dataclasses.replace(spec_from_size("0.5B"), architecture=architecture)
    assert spec.has_lm_head is head


def test_a_model_without_a_vocabulary_head_plans_no_logits() -> None:
    lm = spec_from_size("0.5B")
    encoder = dataclasses.replace(lm, architecture="LlamaModel")
    settings = TrainSettings(method="lora", micro_batch=4, seq_len=512)
    device = target_from_vram(24)
    assert estimate_memory(lm, settings, device).logits > 0
    assert estimate_memory(encoder, settings, device).logits == 0
