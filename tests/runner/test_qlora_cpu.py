"""QLoRA and 8-bit LoRA on the CPU, and the bitsandbytes repack trap.

On CPUs with AVX512-BF16, an eval-mode forward of a `Linear4bit` with a no-grad input repacks
its weight for inference, for good; training then runs through ``gemv_4bit``, which has no
autograd, and LoRA gradients that flow through the base layers are silently lost. The first
test shows the trap (without the guard, gradients after an evaluation differ from those of a
model never evaluated) and that `disable_cpu_inference_repack` keeps them identical, also when
a repack already happened. The run test proves, inside a real QLoRA run, that after the
mid-run evaluation every LoRA weight still gets a non-zero gradient and still changes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from affiner.runner.train import EXIT_FINISHED, run_training
from tests.train_helpers import events_of, make_run, of_type

pytestmark = pytest.mark.slow


def _cpu_has_avx512_bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def _quantized_lora(model_path: Path) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qconfig = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=qconfig, device_map="cpu", dtype=torch.float32
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(0)
    # Random (not zero) B matrices, so every LoRA weight has a gradient from the first step.
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0
    )
    return get_peft_model(model, lora)


def _lora_grads(model: Any, ids: Any) -> dict[str, Any]:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _evaluate_once(model: Any, ids: Any) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


def _relative_change(reference: dict[str, Any], other: dict[str, Any]) -> float:
    """The largest ||g - g_ref|| / ||g_ref|| over the LoRA weights."""
    return max(float((other[n] - reference[n]).norm() / reference[n].norm()) for n in reference)


@pytest.mark.skipif(
    "not _cpu_has_avx512_bf16()", reason="the repack only happens on CPUs with AVX512-BF16"
)
def test_guard_keeps_lora_gradients_after_an_evaluation(tiny_llama: Path) -> None:
    import torch

    from affiner.runner.training.kbit import count_repacked, disable_cpu_inference_repack

    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))

    # With the guard: an evaluation changes nothing, gradients stay bit-identical.
    guarded = _quantized_lora(tiny_llama)
    assert disable_cpu_inference_repack(guarded) == 14  # 7 linear layers x 2 blocks
    reference = _lora_grads(guarded, ids)
    _evaluate_once(guarded, ids)
    assert count_repacked(guarded) == 0
    after = _lora_grads(guarded, ids)
    assert all(torch.equal(reference[n], after[n]) for n in reference)

    # Without it: the evaluation repacks every 4-bit layer and the gradients go wrong.
    model = _quantized_lora(tiny_llama)
    reference = _lora_grads(model, ids)
    _evaluate_once(model, ids)
    assert count_repacked(model) == 14
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gemv_4bit "no autograd kernel" warning
        broken = _lora_grads(model, ids)
    assert _relative_change(reference, broken) > 0.5, "the trap did not reproduce"

    # The guard also undoes a repack that already happened (a pre-flight evaluation, say).
    # The round trip re-quantizes block scales, so gradients come back close, not bit-exact.
    disable_cpu_inference_repack(model)
    assert count_repacked(model) == 0
    assert _relative_change(reference, _lora_grads(model, ids)) < 0.02


class _GradientProbe:
    """A TrainerCallback that records, for the first optimizer step after each evaluation,
    which LoRA weights have a zero or missing gradient, and snapshots LoRA weights."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        probe = self

        class Callback(TrainerCallback):
            def on_evaluate(self, args, state, control, model=None, **kwargs):
                probe.after_eval = True
                if not probe.at_eval:  # the first, mid-run evaluation
                    probe.at_eval = probe.snapshot(model)

            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if probe.after_eval:
                    probe.after_eval = False
                    probe.zero_grads.append(
                        [
                            n
                            for n, p in probe.lora(model)
                            if p.grad is None or not p.grad.abs().sum() > 0
                        ]
                    )

            def on_train_end(self, args, state, control, model=None, **kwargs):
                probe.at_end = probe.snapshot(model)
                probe.repacked = probe.count(model)

        self.callback = Callback()
        self.after_eval = False
        self.zero_grads: list[list[str]] = []
        self.at_eval: dict[str, Any] = {}
        self.at_end: dict[str, Any] = {}
        self.repacked = -1

    @staticmethod
    def lora(model: Any) -> list[tuple[str, Any]]:
        return [(n, p) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]

    def snapshot(self, model: Any) -> dict[str, Any]:
        return {n: p.detach().clone() for n, p in self.lora(model)}

    @staticmethod
    def count(model: Any) -> int:
        from affiner.runner.training.kbit import count_repacked

        return count_repacked(model)


def test_qlora_run_keeps_training_after_a_mid_run_evaluation(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import torch

    probe = _GradientProbe()
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="qlora",
        training={"max_steps": 8, "logging_steps": 2, "learning_rate": 3e-3},
        eval={"every_steps": 4},
        checkpoint={"every_steps": 4},
    )
    assert run_training(rd.path, callbacks=[probe.callback]) == EXIT_FINISHED

    assert probe.zero_grads, "no optimizer step followed an evaluation"
    assert probe.zero_grads[0] == [], (
        f"LoRA weights without gradient after eval: {probe.zero_grads[0][:3]}"
    )
    changed = [n for n in probe.at_eval if not torch.equal(probe.at_eval[n], probe.at_end[n])]
    assert len(changed) == len(probe.at_eval) > 0
    assert probe.repacked == 0
    events = events_of(rd)
    assert [e["step"] for e in of_type(events, "eval")] == [4, 8]
    assert events[-1]["state"] == "finished"
    assert (rd.adapter / "adapter_model.safetensors").exists()


def test_lora8_runs_on_the_cpu(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora8",
        training={"max_steps": 4, "logging_steps": 2},
        eval={"every_steps": 4},
        checkpoint={"every_steps": 4},
    )
    assert run_training(rd.path) == EXIT_FINISHED
    events = events_of(rd)
    logs = of_type(events, "train_log")
    assert logs and all(e["loss"] is not None for e in logs)
    assert of_type(events, "eval")[0]["loss"] is not None
    assert events[-1]["state"] == "finished"


@pytest.mark.parametrize("method", ["qlora", "lora8"])
def test_a_quantized_base_keeps_its_frozen_parts_in_the_compute_dtype(
    method: str, tiny_llama: Path, tmp_path: Path
) -> None:
    # issue 11: peft's k-bit preparation would make the embeddings, head and norms fp32 (and the
    # residual stream with them); frozen, they stay bf16 like LoRA's base, the adapters fp32
    from types import SimpleNamespace

    import torch

    from affiner.runner.config import load_config
    from affiner.runner.training import load_model, resolve_precision

    rd = make_run(tmp_path, tiny_llama, method=method, training={"precision": "bf16"})
    precision = resolve_precision("bf16", "cpu")
    model = load_model(
        load_config(rd.config), SimpleNamespace(pad_token_id=0), device="cpu", precision=precision
    ).model
    frozen = {
        n: p.dtype
        for n, p in model.named_parameters()
        if any(part in n for part in ("embed_tokens", "lm_head", "norm"))
    }
    assert frozen and set(frozen.values()) == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)


def test_a_bf16_qlora_run_lowers_the_loss(tiny_llama: Path, tmp_path: Path) -> None:
    # the 16-bit frozen parts train as well as peft's fp32 ones did (measured: eval loss
    # 5.03 -> 4.77 over 30 steps either way)
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="qlora",
        sections={
            "training": {"learning_rate": 3e-3, "precision": "bf16"},
            "method": {"lora_alpha": 64},
        },
    )
    assert run_training(rd.path) == EXIT_FINISHED
    evals = [e["loss"] for e in of_type(events_of(rd), "eval")]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.1
