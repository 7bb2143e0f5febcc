"""Models whose structure changes what LoRA and bitsandbytes can do, caught before they surprise.

- Mixture-of-experts models with fused 3-D expert weights (transformers 5's Mixtral): peft
  adapts the experts under ``all-linear`` only without dropout. The planner plans dropout 0, a
  run.toml that asks for dropout is refused at its line, and the loader says the same for a
  model the check could not read.
- Old Falcon's projections are a custom linear class that bitsandbytes does not replace: a
  QLoRA load would quietly give a full-size base, so the loader refuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.errors import AffinerError
from bench.memory_probe import TINY_CONFIGS

#: The tiny shapes the component bench measures (bench/memory_probe.py).
MIXTRAL = {"model_type": "mixtral", **TINY_CONFIGS["mixtral"]}
FALCON = {"model_type": "falcon", **TINY_CONFIGS["falcon"]}


def _save(config: dict, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(folder)
    return folder


def _config(folder: Path, method: str, dropout: float):
    from affiner.runner.config.schema import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = str(folder)
    cfg.method.name = method
    cfg.method.lora_dropout = dropout
    cfg.data.train = str(folder / "train.jsonl")
    return cfg


def _load(cfg):
    from affiner.runner.training.modeling import load_model, resolve_precision

    precision = resolve_precision("fp32", "cpu")
    return load_model(cfg, SimpleNamespace(pad_token_id=0), device="cpu", precision=precision)


def test_the_planner_plans_moe_lora_without_dropout() -> None:
    from affiner.planner.hardware.device import target_from_catalog
    from affiner.planner.models.sizes import spec_from_size
    from affiner.planner.recommend import PlanRequest, plan

    report = plan(spec_from_size("8x7B"), target_from_catalog("H100"), PlanRequest())
    lora = [c for c in report.candidates if c.settings.uses_lora]
    assert lora and all(c.settings.lora_dropout == 0 for c in lora)
    assert all(any("without dropout" in r for r in c.reasons) for c in lora)
    dense = plan(spec_from_size("7B"), target_from_catalog("H100"), PlanRequest())
    assert all(c.settings.lora_dropout > 0 for c in dense.candidates if c.settings.uses_lora)


def test_run_toml_asking_moe_dropout_is_refused_at_its_line(tmp_path: Path) -> None:
    from affiner.runner.config.io import ConfigError, load_config, validate_config

    model = tmp_path / "mixtral"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(MIXTRAL), "utf-8")
    toml = tmp_path / "run.toml"
    text = (
        f'[model]\nname_or_path = "{model}"\n\n[method]\nname = "lora"\nlora_dropout = 0.1\n\n'
        '[data]\ntrain = "train.jsonl"\n'
    )
    toml.write_text(text, "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(toml)
    assert "run.toml:6" in str(caught.value) and "lora_dropout" in str(caught.value)
    assert "lora_dropout = 0" in (caught.value.hint or "")
    toml.write_text(text.replace("lora_dropout = 0.1", "lora_dropout = 0.0"), "utf-8")
    validate_config(load_config(toml))  # no error


@pytest.mark.slow
def test_the_loader_explains_moe_dropout_and_trains_without_it(tmp_path: Path) -> None:
    import torch

    folder = _save(MIXTRAL, tmp_path / "mixtral")
    with pytest.raises(AffinerError) as caught:
        _load(_config(folder, "lora", 0.05))
    assert caught.value.where == "[method].lora_dropout"
    model = _load(_config(folder, "lora", 0.0)).model
    expert_adapters = [n for n, p in model.named_parameters() if p.requires_grad and "experts" in n]
    assert expert_adapters, "all-linear adapts the experts"
    ids = torch.randint(3, 512, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in expert_adapters)


@pytest.mark.slow
def test_a_quantized_load_that_quantizes_nothing_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    folder = _save(FALCON, tmp_path / "falcon")
    with pytest.raises(AffinerError) as caught:
        _load(_config(folder, "qlora", 0.05))
    assert "quantized none" in str(caught.value) and 'method = "lora"' in (caught.value.hint or "")
    assert _load(_config(folder, "lora", 0.05)).model is not None
