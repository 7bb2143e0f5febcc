"""The assistant offers "use N GPUs with FSDP" when this machine has them and one GPU fits only
a lower-fidelity method; a yes (or ``use N gpus``) plans over them and the run.toml it builds
carries [distributed]. Real planner, faked hardware report of eight GPUs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from affiner.planner.hardware.device import target_from_catalog
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import plan
from affiner.tui.assistant.flow import AssistantFlow
from affiner.tui.assistant.intents import parse_intent
from affiner.tui.assistant.preview import DataPreview
from tests.assistant_fakes import hardware


def _machine(gpus: int):
    """A hardware report with `gpus` RTX 4090s and the device the planner plans for."""
    report = hardware()
    (gpu,) = report.gpus
    cards = tuple(replace(gpu, index=i, uuid=f"GPU-{i}") for i in range(gpus))
    device = replace(
        target_from_catalog("4090"), name=gpu.name, source="detected", count=gpus, index=0
    )
    return replace(report, gpus=cards), device


def _at_plan(gpus: int) -> tuple[AssistantFlow, str]:
    """A flow at the plan step for a 13B (only 8-bit LoRA or QLoRA fit one 24 GiB card)."""
    flow = AssistantFlow()
    report, device = _machine(gpus)
    flow.hardware_ready(report, device)
    flow.submit("13B")
    flow.model_ready(spec_from_size("13B"))
    flow.plan_ready(plan(flow.spec, device, flow.plan_request()))
    reply = flow.submit("go to plan")
    return flow, "\n".join(m.text for m in reply.messages)


def _replanned(flow: AssistantFlow, line: str) -> str:
    reply = flow.submit(line)
    assert [t.kind for t in reply.tasks] == ["plan"], line
    after = flow.plan_ready(plan(flow.spec, flow.device, flow.plan_request()))
    return "\n".join(m.text for m in after.messages)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("use 4 gpus", (4, None)),
        ("4 GPUs with FSDP", (4, "fsdp")),
        ("use 2 gpus with zero-3", (2, "zero3")),
        ("gpus 8", (8, None)),
        ("use one gpu", (1, None)),
        ("use all gpus", (-1, None)),
    ],
)
def test_gpu_counts_parse(line: str, value: tuple[int, str | None]) -> None:
    intent = parse_intent(line)
    assert (intent.kind, intent.value) == ("use_gpus", value)
    assert parse_intent("what if I had a 4090").kind == "plan_for_gpu"  # unchanged


def test_the_offer_names_the_fewest_gpus_and_a_yes_plans_over_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow, text = _at_plan(8)
    best = flow.plan.layouts[0]
    assert best.method == "full" and best.sharding == "fsdp"
    offer = (
        f"This machine has 8 GPUs: **use {best.num_gpus} GPUs with FSDP** and full fine-tuning fits"
    )
    assert offer in text and f"`use {best.num_gpus} gpus`" in text
    said = _replanned(flow, "yes")
    request = flow.plan_request()
    assert (request.num_gpus, request.sharding) == (best.num_gpus, "fsdp")
    assert f"Layout: one GPU → **{best.num_gpus} GPUs with FSDP**." in said
    assert "Full fine-tuning is recommended" in said and "per GPU" in said
    chosen = flow.candidate()
    assert chosen.method == "full" and chosen.settings.num_gpus == best.num_gpus
    # the run.toml the app launches carries the layout (on a machine with those GPUs)
    import affiner.runner.config.checks as checks

    monkeypatch.setattr(checks, "visible_gpu_count", lambda: 8)
    monkeypatch.setattr(checks, "nvidia_gpu_present", lambda: True)
    flow.data = DataPreview(path="t.jsonl", format="chat", rows=10)
    config = flow.build_config()
    d = config.distributed
    assert (d.processes, d.nodes, d.strategy) == (best.num_gpus, 1, "fsdp")
    # the offer is not made again over several GPUs; one GPU goes back
    assert "This machine has" not in "\n".join(m.text for m in flow.submit("go to plan").messages)
    back = _replanned(flow, "use 1 gpu")
    assert "→ **one GPU**" in back and flow.plan_request().num_gpus == 1


def test_enter_moves_on_without_taking_the_offer_and_too_many_gpus_are_refused() -> None:
    flow, _ = _at_plan(8)
    reply = flow.submit("")
    assert flow.step == "settings" and not reply.tasks
    assert flow.settings.num_gpus == 1
    too_many = flow.submit("use 16 gpus")
    assert not too_many.tasks and "This machine has 8 GPUs" in too_many.messages[-1].text
    # typed unprompted, a count takes the strategy of the offer made for it, else DDP
    _replanned(flow, "use 2 gpus")
    assert flow.plan_request().sharding == "ddp"


def test_one_gpu_machines_get_no_offer() -> None:
    flow, text = _at_plan(1)
    assert "This machine has" not in text and "use 2 gpus" not in text
    assert flow.submit("yes").tasks == []  # a yes with nothing offered moves on
    refused = flow.submit("use 2 gpus")
    assert "This machine has 1 GPU;" in refused.messages[-1].text
