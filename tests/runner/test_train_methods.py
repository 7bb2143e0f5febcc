"""Full, freeze and LoRA runs on the tiny Llama: the loss falls, the log is well formed, the
outputs load. In-process `run_training`, a few dozen steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.runner.run.events import EVENT_TYPES, effective_events, read_events, read_status
from affiner.runner.train import EXIT_FINISHED, run_training
from tests.train_helpers import events_of, make_run, of_type

pytestmark = pytest.mark.slow

#: LoRA on a random 2-layer model learns slowly unless its updates are scaled up (alpha/r = 8).
SETTINGS = {
    "full": {"training": {"learning_rate": 3e-3}},
    "freeze": {"training": {"learning_rate": 3e-3}},
    "lora": {"training": {"learning_rate": 3e-3}, "method": {"lora_alpha": 64}},
}


def assert_well_formed(events: list[dict]) -> None:
    """Every line parsed (events_of did), types known, steps never go back, run_finished last."""
    assert events, "no events written"
    assert all(e["type"] in EVENT_TYPES for e in events)
    steps = [e["step"] for e in of_type(events, "train_log")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert events[-1]["type"] == "run_finished"
    assert len(of_type(events, "run_started")) == 1


@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_method_lowers_the_loss_and_leaves_a_loadable_model(
    method: str, tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(tmp_path, tiny_llama, method=method, sections=SETTINGS[method])

    assert run_training(rd.path) == EXIT_FINISHED

    events = events_of(rd)
    assert_well_formed(events)
    started = of_type(events, "run_started")[0]
    assert (
        started["total_steps"] == 30 and started["train_rows"] == 56 and started["eval_rows"] == 8
    )
    logs = of_type(events, "train_log")
    assert [e["step"] for e in logs] == [1, 5, 10, 15, 20, 25, 30]
    assert all(e["tokens_per_second"] and e["tokens_per_second"] > 0 for e in logs)
    assert logs[-1]["eta_seconds"] == 0
    evals = of_type(events, "eval")
    assert [e["step"] for e in evals] == [10, 20, 30]  # one event per evaluation, not two
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.1
    assert evals[-1]["perplexity"] == pytest.approx(2.718281828 ** evals[-1]["loss"], rel=1e-6)
    finished = events[-1]
    assert finished["state"] == "finished" and finished["step"] == 30
    assert finished["best_eval_loss"] == pytest.approx(min(e["loss"] for e in evals))

    status = read_status(rd.path)
    assert status is not None and status.state == "finished" and status.step == 30
    assert (rd.path / "versions.json").exists()
    versions = json.loads(rd.versions.read_text())
    assert versions["transformers"] and versions["peft"] and versions["python"]
    assert rd.command.read_text().strip() == f"affiner train {rd.config} --foreground"
    card = rd.model_card.read_text()
    assert method in card and "Intended use and limitations" in card and "56 examples" in card
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == [
        "best",
        "checkpoint-20",
        "checkpoint-30",
    ]
    assert json.loads((rd.best / "affiner_best.json").read_text())["step"] == 30
    assert effective_events(read_events(rd.path))[-1].type == "run_finished"

    _check_outputs(method, rd.adapter, tiny_llama)


def _check_outputs(method: str, adapter: Path, base_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 33, 60, 81]])
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    with torch.no_grad():
        before = base(input_ids=ids).logits
    if method == "lora":
        from peft import PeftModel

        assert (adapter / "adapter_model.safetensors").exists()
        tuned = PeftModel.from_pretrained(base, adapter)
    else:
        assert (adapter / "model.safetensors").exists()
        tuned = AutoModelForCausalLM.from_pretrained(adapter, dtype=torch.float32)
    with torch.no_grad():
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-3


def test_freeze_trains_only_the_last_block_and_the_head(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from affiner.runner.training.modeling import find_blocks, freeze_all_but_last

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    name, blocks = find_blocks(model)
    assert name == "model.layers" and len(blocks) == 2
    trainable = freeze_all_but_last(model, 1)
    assert any(n.startswith("model.layers.1.") for n in trainable)
    assert not any(n.startswith("model.layers.0.") for n in trainable)
    assert "lm_head.weight" in trainable and "model.norm.weight" in trainable
    assert "model.embed_tokens.weight" not in trainable


def test_merge_writes_plain_weights(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        training={"max_steps": 6},
        eval={"every_steps": 3},
        output={"merge": True},
    )
    assert run_training(rd.path) == EXIT_FINISHED
    merged = AutoModelForCausalLM.from_pretrained(rd.merged, dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (rd.merged / "tokenizer.json").exists()
