"""The assistant's typed run.toml settings (``optimizer adamw``, ``targets q,v``...) are stated:
every re-plan keeps them, with the real planner."""

from __future__ import annotations

import pytest

from affiner.planner.hardware.device import target_from_vram
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import plan
from affiner.tui.assistant.flow import AssistantFlow, DataPreview
from affiner.tui.assistant.intents import parse_intent
from tests.assistant_fakes import hardware


@pytest.mark.parametrize(
    ("line", "kind", "value"),
    [
        ("targets q,v", "set_targets", ("q_proj", "v_proj")),
        ("target modules q_proj, o_proj", "set_targets", ("q_proj", "o_proj")),
        ("targets all", "set_targets", ("all-linear",)),
        ("checkpointing off", "set_checkpointing", False),
        ("gradient checkpointing on", "set_checkpointing", True),
        ("checkpointing auto", "set_checkpointing", None),
        ("optimizer adamw8bit", "set_optimizer", "adamw8bit"),
        ("precision bf16-pure", "set_precision", "bf16-pure"),
        ("attention eager", "set_attention", "eager"),
        ("dropout 0", "set_dropout", 0.0),
        ("target 4090", "plan_for_gpu", "4090"),
    ],
)
def test_typed_settings_parse(line: str, kind: str, value: object) -> None:
    intent = parse_intent(line)
    assert (intent.kind, intent.value) == (kind, value)


@pytest.fixture
def planned() -> AssistantFlow:
    """A flow at the plan step for a 7B on 24 GiB, planned by the real planner."""
    flow = AssistantFlow()
    device = target_from_vram(24)
    flow.hardware_ready(hardware(), device)
    flow.submit("7B")
    flow.model_ready(spec_from_size("7B"))
    flow.plan_ready(plan(flow.spec, device, flow.plan_request()))
    return flow


def _replan(flow: AssistantFlow, line: str) -> str:
    reply = flow.submit(line)
    assert [t.kind for t in reply.tasks] == ["plan"], line
    after = flow.plan_ready(plan(flow.spec, flow.device, flow.plan_request()))
    return "\n".join(m.text for m in after.messages)


def test_a_typed_optimizer_survives_a_re_plan(planned: AssistantFlow) -> None:
    text = _replan(planned, "optimizer adamw")
    assert text.startswith("Optimizer: auto → **adamw**.")
    _replan(planned, "seq 2048")  # another setting, another plan: adamw stays
    request = planned.plan_request()
    assert request.optimizer == "adamw" and "optimizer" in request.stated
    assert {c.settings.optimizer for c in planned.plan.candidates} == {"adamw"}
    assert "optimizer" in planned.candidate().stated


def test_every_typed_setting_reaches_the_plan_and_the_run(planned: AssistantFlow) -> None:
    for line in ("use lora", "targets q,v", "checkpointing on", "attention eager", "dropout 0"):
        planned.submit(line) if line.startswith("use") else _replan(planned, line)
    _replan(planned, "rank 32")
    best = planned.candidate()
    s = best.settings
    assert s.lora_targets == ("q_proj", "v_proj") and s.gradient_checkpointing is True
    assert (s.attention, s.lora_dropout, s.lora_rank) == ("eager", 0.0, 32)
    assert {"lora_targets", "gradient_checkpointing", "attention", "lora_dropout"} <= best.stated
    planned.data = DataPreview(path="t.jsonl", format="chat", rows=10)
    cfg = planned.build_config()
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.training.gradient_checkpointing is True and cfg.method.lora_dropout == 0.0
    _replan(planned, "checkpointing auto")  # handed back to the planner
    assert "gradient_checkpointing" not in planned.plan_request().stated


def test_a_word_outside_the_vocabulary_is_refused(planned: AssistantFlow) -> None:
    reply = planned.submit("optimizer lion")
    assert not reply.tasks and "Optimizer takes adamw" in reply.messages[-1].text
    assert "optimizer" not in planned.plan_request().stated
    reply = planned.submit("precision bf16-pure")
    assert planned.plan_request().precision == "bf16-pure"


def test_a_setting_the_planner_refuses_is_taken_back(planned: AssistantFlow) -> None:
    planned.submit("targets nope_proj")
    from affiner.planner.errors import AffinerError

    with pytest.raises(AffinerError) as error:
        plan(planned.spec, planned.device, planned.plan_request())
    reply = planned.failed("plan", str(error.value))
    assert "It stays auto." in reply.messages[-1].text
    assert planned.plan_request().lora_targets is None
