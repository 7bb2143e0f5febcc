"""The plan a user sees is the run they get: a stated plan's settings reach run.toml as stated."""

from __future__ import annotations

from affiner.planner.hardware.device import target_from_vram
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import PlanRequest, plan
from affiner.runner.config import config_from_plan


def test_stated_settings_reach_run_toml() -> None:
    request = PlanRequest(
        method="qlora",
        optimizer="adamw",
        gradient_checkpointing=True,
        precision="bf16",
        attention="eager",
        quantization="fp4",
        double_quant=False,
        lora_targets=("q_proj", "v_proj"),
        lora_rank=8,
        lora_alpha=4,
        lora_dropout=0.1,
        micro_batch=2,
    )
    best = plan(spec_from_size("7B"), target_from_vram(24), request).best
    assert best is not None
    cfg = config_from_plan(best, model="m", train="t.jsonl")
    me, tr = cfg.method, cfg.training
    assert (me.name, cfg.quantization, me.double_quant) == ("qlora", "fp4", False)
    assert me.target_modules == ["q_proj", "v_proj"]
    assert (me.lora_rank, me.lora_alpha, me.lora_dropout) == (8, 4, 0.1)
    assert (tr.optimizer, tr.gradient_checkpointing, tr.precision) == ("adamw", True, "bf16")
    assert (tr.micro_batch, cfg.model.attn_implementation) == (2, "eager")
