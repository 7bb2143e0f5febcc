"""The model card (``README.md`` in the run folder): what was trained, on what, and how well.

A fine-tune travels without its run folder: the card says which base model it needs, what
data and settings made it, what the held-out evaluation found, and what it should not be
used for, so the next person does not have to guess.

The card says only what the run knows, and says it with its step: the evaluation of the base
model before training (step 0) beside the one of the weights saved, never one for the other.
A run that stopped or failed says so first, before anything that reads like a result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from affiner.planner.units import format_duration
from affiner.runner.config import RunConfig
from affiner.runner.run import RunDir
from affiner.runner.run.events import EvalResult
from affiner.runner.training.base_model import BaseModelName, describe_base

_METHOD_WORDS = {
    "full": "full fine-tuning (every weight trained)",
    "freeze": "layer-wise freezing (only the last blocks, final norm and head trained)",
    "lora": "LoRA adapter on a frozen base",
    "qlora": "QLoRA: LoRA adapter on a 4-bit quantized base",
    "lora8": "LoRA adapter on an 8-bit quantized base",
}

#: Held-out metrics in the order the card lists them, with the words it uses for each.
#: Precision, recall and F1 are macro-averaged over the classes (`classification_scores`);
#: for one label per row, accuracy is what a micro-averaged F1 would be.
METRIC_WORDS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("perplexity", "perplexity"),
    ("accuracy", "accuracy (= micro F1)"),
    ("precision", "precision (macro)"),
    ("recall", "recall (macro)"),
    ("f1", "F1 (macro)"),
)


@dataclass
class CardFacts:
    """What the card reports besides the configuration, as the run found it.

    Attributes:
        state: ``finished``, ``stopped`` or ``failed``.
        steps: optimizer steps done.
        train_rows, eval_rows: examples trained and evaluated on, after the split and the
            removal of duplicates and invalid rows.
        total_steps: the steps training was planned to take (None when not known).
        message: the ending's own words (why it stopped or failed).
        adapter_step: the step whose weights ``adapter/`` holds; None when this attempt saved
            none.
        data_format: the data format as detected (never ``auto``).
        rows_read: rows read from each split's file, before anything was left out.
        duplicates_removed: exact duplicates dropped, per split.
        dropped: invalid rows left out.
        leaked: held-out rows also found in the training rows (left out of the eval split).
        eval_source: where the held-out rows came from.
        evals: the run's evaluations in step order, as its event log keeps them.
        best_eval_loss, best_step: the checkpoint kept in ``checkpoints/best/``.
        labels: class names in id order (classification).
        chat_template: whether the tokenizer has a chat template (a causal LM's snippet asks
            through it, as training rendered the rows; else in the plain layout).
        base_head_trained: whether the base already had a trained classification head (None:
            not known, or not a classifier).
    """

    state: str
    steps: int
    train_rows: int
    eval_rows: int
    total_steps: int | None = None
    message: str = ""
    adapter_step: int | None = None
    data_format: str = ""
    rows_read: dict[str, int] = field(default_factory=dict)
    duplicates_removed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    leaked: int = 0
    eval_source: str = ""
    train_tokens: int | None = None
    trainable_params: int = 0
    total_params: int = 0
    device: str = ""
    precision: str = ""
    train_seconds: float | None = None
    evals: list[EvalResult] = field(default_factory=list)
    best_eval_loss: float | None = None
    best_step: int | None = None
    labels: list[str] = field(default_factory=list)
    chat_template: bool = False
    merged: bool = False
    base_head_trained: bool | None = None


def render_model_card(cfg: RunConfig, facts: CardFacts, run_id: str) -> str:
    """Markdown text of the card."""
    base = describe_base(cfg.model.name_or_path)
    m = cfg.method
    of_total = f" of {facts.total_steps}" if facts.total_steps else ""
    lines = [f"# {run_id}", ""]
    lines += _banner(facts, run_id)
    lines += [
        f"A fine-tune of `{base.name}` made with affiner ({_METHOD_WORDS.get(m.name, m.name)}). "
        f"Run state: **{facts.state}** after {facts.steps}{of_total} steps.",
        "",
        f"- Base model: `{base.name}`" + (f" ({base.note})" if base.note else ""),
    ]
    if facts.adapter_step is not None:
        lines.append(f"- `adapter/` holds the weights of step {facts.adapter_step}.")
    lines += _best_lines(facts)
    lines.append("")
    if facts.adapter_step is not None:
        lines += _loading(cfg, facts, base)
    else:
        lines += [
            "## How to load it",
            "",
            "Nothing to load from this attempt: it saved no final weights. `checkpoints/` "
            "holds what was saved before it ended, if anything.",
            "",
        ]
    lines += _merged_lines(cfg, facts)
    lines += _data_lines(cfg, facts)
    lines += _training_lines(cfg, facts)
    lines += _evaluation_lines(facts, classification=cfg.model.task == "classification")
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


def _banner(facts: CardFacts, run_id: str) -> list[str]:
    """The first thing a reader sees of a run that did not finish."""
    if facts.state == "stopped":
        held = (
            f"`adapter/` holds the weights of step {facts.adapter_step}, "
            if facts.adapter_step is not None
            else ""
        )
        return [
            f"> **Stopped before the end of training** (step {facts.steps}"
            f"{f' of {facts.total_steps}' if facts.total_steps else ''}): {held}"
            f"not a finished fine-tune. Continue it with `affiner train --resume {run_id}`.",
            "",
        ]
    if facts.state == "failed":
        held = (
            f"`adapter/` holds the weights of step {facts.adapter_step}."
            if facts.adapter_step is not None
            else "This attempt saved no final weights."
        )
        return [
            f"> **This run failed at step {facts.steps}**: {facts.message or 'see train.log'} "
            f"{held}",
            "",
        ]
    return []


def _best_lines(facts: CardFacts) -> list[str]:
    if facts.best_step is None or facts.best_eval_loss is None:
        return []
    lines = [
        f"- `checkpoints/best/` holds the weights of step {facts.best_step}, the lowest held-out "
        f"loss ({facts.best_eval_loss:.4f}) among the evaluations after training began."
    ]
    base = _at_step(facts.evals, 0)
    if base is not None and base.loss is not None and base.loss < facts.best_eval_loss:
        lines.append(
            f"- The base model before training (step 0) had a lower held-out loss still "
            f"({base.loss:.4f}): by that measure training has not improved on it."
        )
    return lines


def _loading(cfg: RunConfig, facts: CardFacts, base: BaseModelName) -> list[str]:
    """The loading snippet: it runs as written from this folder (the run folder)."""
    auto = _auto_class(cfg)
    lines = [
        "## How to load it",
        "",
        "Run this from the folder that holds this card (elsewhere, give `adapter/` by its path).",
        "",
        "```python",
    ]
    classification = cfg.model.task == "classification"
    if cfg.uses_lora:
        lines += ["from peft import PeftModel", f"from transformers import AutoTokenizer, {auto}"]
        lines += ["", *base.load_lines]
        lines.append('tokenizer = AutoTokenizer.from_pretrained("adapter")')
        if classification:
            names = ", ".join(json.dumps(name) for name in facts.labels)
            lines += [
                f"labels = [{names}]  # class ids 0, 1, ... as trained",
                f"base = {auto}.from_pretrained(",
                "    BASE,",
                "    num_labels=len(labels),",
                "    id2label=dict(enumerate(labels)),",
                "    label2id={name: i for i, name in enumerate(labels)},",
                "    pad_token_id=tokenizer.pad_token_id,",
                ")",
            ]
        else:
            lines.append(f"base = {auto}.from_pretrained(BASE)")
        lines.append('model = PeftModel.from_pretrained(base, "adapter").eval()')
    else:
        lines += [
            f"from transformers import AutoTokenizer, {auto}",
            "",
            f'model = {auto}.from_pretrained("adapter").eval()',
            'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        ]
    if classification:
        example = "an example to classify"
        lines += [
            "",
            f'inputs = tokenizer("{example}", return_tensors="pt")',
            "predicted = model(**inputs).logits.argmax(-1).item()",
            "print(model.config.id2label[predicted])",
        ]
    else:
        lines += ["", *_asking_lines(facts)]
    lines += ["```", ""]
    return lines


def _asking_lines(facts: CardFacts) -> list[str]:
    """How to ask the tuned causal LM a question with the prompt training put before the loss:
    the chat template's generation prompt, the plain layout without a template, or raw text
    for a model trained on plain text."""
    from affiner.runner.data.render import PLAIN_HEADERS, PLAIN_SEPARATOR

    question = "Hello! What can you do?"
    if facts.data_format == "text":
        lines = [f"inputs = tokenizer({question!r}, return_tensors='pt')  # trained on plain text"]
    elif facts.chat_template:
        lines = [
            f'messages = [{{"role": "user", "content": {question!r}}}]',
            "# the chat template, as training rendered every row",
            "prompt = tokenizer.apply_chat_template(",
            "    messages, tokenize=False, add_generation_prompt=True",
            ")",
            'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)',
        ]
    else:
        prompt = PLAIN_HEADERS["user"] + question + PLAIN_SEPARATOR + PLAIN_HEADERS["assistant"]
        lines = [
            f"prompt = {prompt!r}  # the layout training used (no chat template)",
            'inputs = tokenizer(prompt, return_tensors="pt")',
        ]
    return [
        *lines,
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
    ]


def _merged_lines(cfg: RunConfig, facts: CardFacts) -> list[str]:
    if not facts.merged:
        return []
    return [
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


def _data_lines(cfg: RunConfig, facts: CardFacts) -> list[str]:
    train_name = Path(cfg.data.train).name or cfg.data.train
    read = facts.rows_read.get("train")
    removed = facts.duplicates_removed.get("train", 0)
    counts = []
    if read is not None:
        counts.append(f"{read:,} rows read")
    if facts.dropped:
        counts.append(f"{facts.dropped:,} invalid left out")
    counts.append(f"{removed:,} duplicates removed" if cfg.data.dedupe else "[data].dedupe is off")
    if not cfg.data.eval and facts.eval_rows:
        counts.append(f"{facts.eval_rows:,} held out for evaluation")
    evaluation = (
        f"`{Path(cfg.data.eval).name}`"
        if cfg.data.eval
        else f"{cfg.data.eval_fraction:.0%} held out from `{train_name}`"
    )
    eval_notes = []
    if facts.duplicates_removed.get("eval"):
        eval_notes.append(f"{facts.duplicates_removed['eval']:,} duplicates removed")
    if facts.leaked:
        eval_notes.append(f"{facts.leaked:,} rows also in the training data left out")
    fmt = facts.data_format or cfg.data.format
    detected = " (detected)" if cfg.data.format == "auto" and facts.data_format else ""
    lines = [
        "## Data",
        "",
        f"- Training: `{train_name}` — {facts.train_rows:,} examples "
        f"{'after the split and de-duplication' if cfg.data.dedupe else 'after the split'} "
        f"({'; '.join(counts)})"
        + (f", {facts.train_tokens:,} tokens" if facts.train_tokens else ""),
        f"- Evaluation: {evaluation} — {facts.eval_rows:,} examples"
        + (f" ({'; '.join(eval_notes)})" if eval_notes else ""),
        f"- Format: {fmt}{detected}; task: {cfg.model.task}; "
        f"max sequence length {cfg.data.max_seq_len}",
    ]
    if facts.labels:
        ids = ", ".join(str(i) for i in range(len(facts.labels)))
        lines.append(f"- Labels: {', '.join(facts.labels)} (class ids {ids})")
    return lines


def _training_lines(cfg: RunConfig, facts: CardFacts) -> list[str]:
    m, t = cfg.method, cfg.training
    lines = [
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
    if cfg.uses_lora:
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
        f"| steps done | {facts.steps}"
        + (f" of {facts.total_steps}" if facts.total_steps else "")
        + " |",
        f"| learning rate | {t.learning_rate} ({t.lr_scheduler}, warmup {t.warmup_ratio}) |",
        f"| batch | {t.micro_batch} x {t.grad_accum} accumulation |",
        f"| optimizer | {t.optimizer}, weight decay {t.weight_decay}, grad clip {t.max_grad_norm} |",
        f"| precision / device | {facts.precision} / {facts.device} |",
        f"| seed | {t.seed} |",
    ]
    if facts.train_seconds is not None:
        lines.append(f"| training time | {format_duration(facts.train_seconds)} |")
    return lines


def _evaluation_lines(facts: CardFacts, *, classification: bool) -> list[str]:
    """Before → after on every held-out metric, each column named by its step."""
    lines = ["", "## Evaluation", ""]
    if not facts.evals:
        lines.append(
            "No evaluation was run (no held-out data)."
            if not facts.eval_rows
            else "The run made no evaluation on its held-out set."
        )
        return lines
    columns: list[tuple[str, EvalResult]] = []
    first = facts.evals[0]
    columns.append(("before training" if first.step == 0 else "first evaluation", first))
    after = _at_step(facts.evals, facts.adapter_step) if facts.adapter_step is not None else None
    if after is not None and after is not first:
        columns.append(("`adapter/`", after))
    best = _at_step(facts.evals, facts.best_step) if facts.best_step is not None else None
    if best is not None and all(best is not shown for _, shown in columns):
        columns.append(("`checkpoints/best/`", best))
    last = facts.evals[-1]
    if all(last is not shown for _, shown in columns):
        columns.append(("last evaluation", last))
    where = f" ({facts.eval_rows:,} examples)" if facts.eval_rows else ""
    lines += [f"On the held-out set{where}, each column at the step it was evaluated:", ""]
    header = " | ".join(f"{name}, step {e.step}" for name, e in columns)
    lines += [f"| metric | {header} |", "| --- |" + " --- |" * len(columns)]
    for key, words in METRIC_WORDS:
        values = [getattr(e, key) for _, e in columns]
        if all(v is None for v in values):
            continue
        cells = " | ".join("N/A" if v is None else f"{v:.4f}" for v in values)
        lines.append(f"| {words} | {cells} |")
    if facts.adapter_step is not None and after is None:
        lines += [
            "",
            f"The weights in `adapter/` (step {facts.adapter_step}) were not evaluated: the "
            f"last evaluation was at step {last.step}"
            + (" (the base model, before training)." if last.step == 0 else "."),
        ]
    if classification and first.step == 0 and facts.base_head_trained is False:
        lines += [
            "",
            "Step 0 scores the base model with the new classification head it was given "
            "before training (randomly initialised), so its numbers are near chance.",
        ]
    if any(e.precision is not None for e in facts.evals):
        lines += [
            "",
            "Precision, recall and F1 are macro averages: the mean over the classes, each "
            "class counted equally. With one label per example, accuracy equals the "
            "micro-averaged F1.",
        ]
    return lines


def _at_step(evals: list[EvalResult], step: int | None) -> EvalResult | None:
    """The last evaluation made at `step` (None when there was none)."""
    found = [e for e in evals if e.step == step]
    return found[-1] if found else None


def _auto_class(cfg: RunConfig) -> str:
    if cfg.model.task == "classification":
        return "AutoModelForSequenceClassification"
    return "AutoModelForCausalLM"


def write_model_card(run_dir: RunDir, cfg: RunConfig, facts: CardFacts) -> Path:
    """Write ``README.md`` into the run folder, and the same card into ``adapter/``.

    ``adapter/`` is the folder a user uploads or copies elsewhere, and PEFT leaves a placeholder
    card there whose metadata names the base by this machine's folder
    (``base_model: /root/.cache/...``); the hub reads that metadata to link the base model.
    """
    card = render_model_card(cfg, facts, run_dir.run_id)
    run_dir.model_card.write_text(card, encoding="utf-8")
    if run_dir.adapter.is_dir():
        (run_dir.adapter / "README.md").write_text(adapter_card(cfg, card), encoding="utf-8")
    return run_dir.model_card


def adapter_card(cfg: RunConfig, card: str) -> str:
    """The run's card with hub metadata in front, for ``adapter/README.md``."""
    base = describe_base(cfg.model.name_or_path)
    meta = ["---"]
    if base.hub_id:
        meta.append(f"base_model: {base.hub_id}")
    if cfg.uses_lora:
        meta.append("library_name: peft")
    meta.append("tags:")
    if base.hub_id and cfg.uses_lora:
        meta.append(f"- base_model:adapter:{base.hub_id}")
    meta += ["- affiner", f"- {cfg.method.name}", "---", ""]
    preface = (
        "This folder is the model of the run described below, copied from the run folder's "
        "card; the paths in it (`adapter/`, `checkpoints/`) are relative to that run folder, "
        "one level up.\n\n"
    )
    return "\n".join(meta) + "\n" + preface + card
