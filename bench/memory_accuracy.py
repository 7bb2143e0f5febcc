"""How close is the planner's memory model to reality?

CPU mode (the default without a GPU): for a tiny model of every family and the methods
full / LoRA / freeze (and QLoRA where bitsandbytes runs on the CPU), measure exactly the
parameter, gradient and optimizer-state bytes after a step and the bytes saved for backward
(`bench.memory_probe`), next to `affiner.planner.memory.peak.estimate_memory`'s matching terms.

On a GPU the parts cannot be caught one by one as cheaply, and what matters there is their
sum: ``--cuda`` runs the real-size matrix of `bench/memory_peak.py` (``--device cuda``:
three shapes, full/LoRA/QLoRA/freeze, seq 512/2048, batch 1/4, checkpointing off and on),
which compares the allocated peak and the reserved peak plus CUDA context with the plan.

    PYTHONPATH=. python bench/memory_accuracy.py [--json] [--cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from affiner.planner.memory import estimate_memory
from affiner.planner.models import spec_from_config
from affiner.planner.settings import TrainSettings
from bench import memory_probe as probe
from bench.peak_models import CPU_TARGET

FAMILIES = tuple(probe.TINY_CONFIGS)
CPU = CPU_TARGET  # the memory model reads the device's kind only; the settings carry precision


def _error(pred: int, meas: int) -> float:
    if meas == 0:
        return 0.0 if pred == 0 else float("inf")
    return (pred - meas) / meas


def apply_method(model, spec, settings: TrainSettings):
    """Set trainable parameters as the runner does: peft LoRA, or freeze all but the last blocks."""
    if settings.uses_lora:
        from peft import LoraConfig, get_peft_model

        targets = list(settings.lora_targets)
        cfg = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM" if spec.is_decoder else None,
        )
        return get_peft_model(model, cfg)
    if settings.method == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        layers = probe.decoder_layers(model)
        for layer in layers[len(layers) - settings.trainable_layers :]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in model.get_output_embeddings().parameters():
            p.requires_grad_(True)
        for name, module in model.named_modules():
            if (
                name.endswith(("norm", "final_layer_norm", "ln_f", "norm_f"))
                and "layers" not in name
            ):
                for p in module.parameters():
                    p.requires_grad_(True)
    return model


def cpu_cell(
    family: str,
    method: str,
    *,
    batch: int = 2,
    seq: int = 48,
    checkpointing: bool = False,
    padded: bool = False,
    lora_dropout: float = 0.0,
) -> dict:
    """Measure one tiny-model cell on the CPU and compare with the estimate."""
    config = probe.tiny_config(family)
    spec = spec_from_config(config, name=f"tiny-{family}")
    attn = "eager" if family == "gemma2" else "sdpa"
    settings = TrainSettings(
        method=method,
        precision="fp32",
        micro_batch=batch,
        seq_len=seq,
        gradient_checkpointing=checkpointing,
        padded=padded,
        lora_rank=8,
        lora_dropout=lora_dropout,
        trainable_layers=1,
        attention=attn if attn == "eager" else "sdpa",
    )
    est = estimate_memory(spec, settings, CPU)
    model = probe.build_model(config, attn=attn)
    model.train()
    model = apply_method(model, spec, settings)
    if checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if settings.uses_lora:
            model.enable_input_require_grads()
    batch_t = probe.make_batch(spec.vocab_size, batch, seq, padded=padded)
    saved = probe.saved_for_backward(model, batch_t)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    out = model(**batch_t)
    out.loss.backward()
    grads = probe.grad_bytes(model)
    opt.step()
    measured = {
        "weights": probe.param_bytes(model),
        "gradients": grads,
        "optimizer": probe.optimizer_bytes(opt),
        "activations": saved.activations + saved.checkpoint_inputs,
        "logits": saved.logits,
    }
    d = est.details
    predicted = {
        "weights": est.weights,
        "gradients": est.trainable_params * 4,
        "optimizer": est.optimizer,
        "activations": d["activations_saved"],
        "logits": d["logits_saved"],
    }
    return {
        "family": family,
        "method": method,
        "batch": batch,
        "seq": seq,
        "checkpointing": checkpointing,
        "padded": padded,
        "lora_dropout": lora_dropout,
        "measured": measured,
        "predicted": predicted,
        "error": {k: _error(predicted[k], measured[k]) for k in measured},
    }


CPU_MATRIX = (
    [(f, m, {}) for f in FAMILIES for m in ("full", "lora", "freeze")]
    + [(f, "full", {"checkpointing": True}) for f in ("llama", "gpt2", "bert")]
    + [(f, "full", {"padded": True}) for f in ("llama", "qwen2")]
    + [(f, "lora", {"lora_dropout": 0.05}) for f in ("llama", "gpt2", "phi3")]
)


def run_cpu(families: tuple[str, ...] = FAMILIES) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for family, method, extra in CPU_MATRIX:
        if family not in families:
            continue
        try:
            rows.append(cpu_cell(family, method, **extra))
        except Exception as exc:  # a cell that cannot run is reported, not hidden
            rows.append(
                {
                    "family": family,
                    "method": method,
                    **extra,
                    "skipped": f"{type(exc).__name__}: {exc}",
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="planner vs measured (CPU, fp32, tiny models): error per component")
    for col in ("family", "method", "case", "weights", "grads", "optim", "activations", "logits"):
        table.add_column(col)
    for row in rows:
        case = ",".join(k for k in ("checkpointing", "padded", "lora_dropout") if row.get(k)) or "-"
        if "skipped" in row:
            table.add_row(row["family"], row["method"], case, row["skipped"][:60], "", "", "", "")
            continue
        err = row["error"]
        cells = []
        for key in ("weights", "gradients", "optimizer", "activations", "logits"):
            e = err[key]
            colour = "green" if abs(e) <= 0.05 else "red"
            cells.append(f"[{colour}]{e * 100:+.1f}%[/]")
        table.add_row(row["family"], row["method"], case, *cells)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--cuda", action="store_true", help="run bench/memory_peak.py's real-size GPU matrix"
    )
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--family", action="append", help="limit to these families")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.cuda:
        from bench.memory_peak import main as peak_main

        rest = ["--json"] if args.json else []
        return peak_main(["--device", "cuda", *rest, *(["--out", args.out] if args.out else [])])
    rows = run_cpu(tuple(args.family) if args.family else FAMILIES)
    result = {
        "mode": "cpu",
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
