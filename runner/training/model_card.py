"""The model card (``README.md`` in the run folder): what was trained, on what, and how well.

A fine-tune travels without its run folder: the card says which base model it needs, what
data and settings made it, what the held-out evaluation found, and what it should not be
used for, so the next person does not have to guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from affiner.planner.units import format_duration
from affiner.runner.config import RunConfig
from affiner.runner.run import RunDir

_METHOD_WORDS = {
    "full": "full fine-tuning (every weight trained)",
    "freeze": "layer-wise freezing (only the last blocks, final norm and head trained)",
    "lora": "LoRA adapter on a frozen base",
    "qlora": "QLoRA: LoRA adapter on a 4-bit quantized base",
    "lora8": "LoRA adapter on an 8-bit quantized base",
}


@dataclass
class CardFacts:
    """What the card reports besides the configuration."""

    state: str
    steps: int
    train_rows: int
    eval_rows: int
    train_tokens: int | None = None
    trainable_params: int = 0
    total_params: int = 0
    device: str = ""
    precision: str = ""
    train_seconds: float | None = None
    final_eval: dict[str, float | None] = field(default_factory=dict)
    best_eval_loss: float | None = None
    best_step: int | None = None
    labels: list[str] = field(default_factory=list)
    merged: bool = False


def render_model_card(cfg: RunConfig, facts: CardFacts, run_id: str) -> str:
    """Markdown text of the card."""
    m, t = cfg.method, cfg.training
    lora = cfg.uses_lora
    lines = [
        f"# {run_id}",
        "",
        f"A fine-tune of `{cfg.model.name_or_path}` made with affiner "
        f"({_METHOD_WORDS.get(m.name, m.name)}). Run state: **{facts.state}** after {facts.steps} steps.",
        "",
        "## How to load it",
        "",
        "```python",
    ]
    if lora:
        lines += [
            "from peft import PeftModel",
            f"from transformers import {_auto_class(cfg)}, AutoTokenizer",
            f'base = {_auto_class(cfg)}.from_pretrained("{cfg.model.name_or_path}")',
            'model = PeftModel.from_pretrained(base, "adapter")',
            'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        ]
    else:
        lines += [
            f"from transformers import {_auto_class(cfg)}, AutoTokenizer",
            f'model = {_auto_class(cfg)}.from_pretrained("adapter")',
            'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        ]
    lines += ["```", ""]
    if facts.merged:
        lines += [
            "`merged/` holds the base with the adapter folded in (plain safetensors, no peft needed)."
            + (
                " The adapter was trained against a quantized base; for the merge the original"
                " base was loaded again unquantized (in the compute dtype), so the merged weights"
                " are full precision and differ from the trained model by the quantization error."
                if cfg.quantization != "none"
                else ""
            ),
            "",
        ]
    if facts.best_step is not None:
        lines += [
            f"`checkpoints/best/` holds the weights with the lowest evaluation loss "
            f"(step {facts.best_step}, loss {facts.best_eval_loss:.4f}); `adapter/` holds the last.",
            "",
        ]
    lines += [
        "## Data",
        "",
        f"- Training: `{cfg.data.train}` — {facts.train_rows:,} examples"
        + (f", {facts.train_tokens:,} tokens" if facts.train_tokens else ""),
        f"- Evaluation: `{cfg.data.eval or f'{cfg.data.eval_fraction:.0%} held out from training'}` — "
        f"{facts.eval_rows:,} examples",
        f"- Task: {cfg.model.task}; format: {cfg.data.format}; max sequence length {cfg.data.max_seq_len}",
    ]
    if facts.labels:
        lines.append(f"- Labels: {', '.join(facts.labels)}")
    lines += [
        "",
        "## Training",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| method | {m.name}"
        + (
            f" ({cfg.quantization}{', double quant' if m.double_quant else ''})"
            if cfg.quantization != "none"
            else ""
        )
        + " |",
    ]
    if lora:
        targets = (
            m.target_modules if isinstance(m.target_modules, str) else ", ".join(m.target_modules)
        )
        lines.append(
            f"| LoRA | r={m.lora_rank}, alpha={m.lora_alpha}, dropout={m.lora_dropout}, targets {targets} |"
        )
    if m.name == "freeze":
        lines.append(f"| trainable blocks | last {m.trainable_layers} |")
    lines += [
        f"| trainable parameters | {facts.trainable_params:,} of {facts.total_params:,} |",
        f"| epochs / max steps | {t.epochs} / {t.max_steps} |",
        f"| learning rate | {t.learning_rate} ({t.lr_scheduler}, warmup {t.warmup_ratio}) |",
        f"| batch | {t.micro_batch} x {t.grad_accum} accumulation |",
        f"| optimizer | {t.optimizer}, weight decay {t.weight_decay}, grad clip {t.max_grad_norm} |",
        f"| precision / device | {facts.precision} / {facts.device} |",
        f"| seed | {t.seed} |",
    ]
    if facts.train_seconds is not None:
        lines.append(f"| training time | {format_duration(facts.train_seconds)} |")
    lines += ["", "## Evaluation", ""]
    shown = {k: v for k, v in facts.final_eval.items() if v is not None}
    if shown:
        lines += ["Last evaluation on the held-out set:", ""]
        lines += [f"- {name}: {value:.4f}" for name, value in shown.items()]
    else:
        lines.append("No evaluation was run (no held-out data).")
    lines += [
        "",
        "## Intended use and limitations",
        "",
        f"Made for the task its data describes ({cfg.model.task}). It inherits the base model's "
        "licence, knowledge cut-off and biases, and adds whatever the training data holds. "
        "The evaluation above is on data from the same source as the training data; it says "
        "little about other inputs. Check outputs before relying on them, and evaluate on your "
        "own cases before any deployment.",
        "",
        "Reproduce: see `command.txt` and `versions.json` beside this card.",
        "",
    ]
    return "\n".join(lines)


def _auto_class(cfg: RunConfig) -> str:
    if cfg.model.task == "classification":
        return "AutoModelForSequenceClassification"
    return "AutoModelForCausalLM"


def write_model_card(run_dir: RunDir, cfg: RunConfig, facts: CardFacts) -> Path:
    """Write ``README.md`` into the run folder."""
    run_dir.model_card.write_text(render_model_card(cfg, facts, run_dir.run_id), encoding="utf-8")
    return run_dir.model_card
