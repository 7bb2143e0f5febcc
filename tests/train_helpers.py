"""Run folders for the training tests: the tiny Llama, a learnable data set and a run.toml.

The causal data is one sentence pattern repeated with small variations, so even a 2-layer
model with 64 hidden units halves its loss in a few dozen steps; the classification data
separates its two classes by vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from affiner.runner.config.io import dumps_config
from affiner.runner.config.schema import RunConfig
from affiner.runner.run.events import iter_event_dicts
from affiner.runner.run.rundir import RunDir
from tests.tiny_models import write_jsonl

PATTERNS = (
    "the cat sat on a mat and the dog ran to the park",
    "the sun rises in the east and sets in the west",
    "what is your name my name is affiner",
)
POSITIVE = "great loved brilliant fresh good film".split()
NEGATIVE = "awful hated boring rotten bad plot".split()


def pattern_rows(n: int = 64) -> list[dict[str, str]]:
    """Learnable text: each row is one of three sentences, repeated."""
    return [{"text": PATTERNS[i % 3]} for i in range(n)]


def sentiment_rows(n: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """Two classes a model tells apart by their words alone."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "good" if i % 2 == 0 else "bad"
        words = POSITIVE if label == "good" else NEGATIVE
        rows.append({"text": " ".join(rng.choice(words) for _ in range(6)), "label": label})
    return rows


def make_run(
    tmp: Path,
    model: Path,
    *,
    method: str = "lora",
    task: str = "causal_lm",
    rows: list[dict[str, Any]] | None = None,
    eval_rows: list[dict[str, Any]] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    **more_sections: dict[str, Any],
) -> RunDir:
    """A run folder with data files and a ``run.toml``; `sections` (and keyword sections such
    as ``training={...}``) override config fields."""
    rd = RunDir(tmp / "run")
    rd.path.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = sentiment_rows() if task == "classification" else pattern_rows()
    train = write_jsonl(tmp / "data" / "train.jsonl", rows)
    cfg = RunConfig()
    cfg.model.name_or_path = str(model)
    cfg.model.task = task
    cfg.method.name = method
    cfg.method.lora_rank = 8
    cfg.method.lora_alpha = 16
    cfg.method.lora_dropout = 0.0
    cfg.method.trainable_layers = 1
    cfg.data.train = str(train)
    cfg.data.max_seq_len = 64
    cfg.data.dedupe = False
    if eval_rows is not None:
        cfg.data.eval = str(write_jsonl(tmp / "data" / "eval.jsonl", eval_rows))
    else:
        cfg.data.eval_fraction = 0.125
    cfg.training.max_steps = 30
    cfg.training.learning_rate = 3e-3
    cfg.training.micro_batch = 4
    cfg.training.logging_steps = 5
    cfg.training.warmup_ratio = 0.0
    cfg.training.lr_scheduler = "constant"
    cfg.training.precision = "fp32"
    cfg.training.device = "cpu"
    cfg.training.preflight = False
    cfg.eval.every_steps = 10
    cfg.checkpoint.every_steps = 10
    cfg.checkpoint.keep_last = 2
    for name, values in {**(sections or {}), **more_sections}.items():
        section = getattr(cfg, name)
        for key, value in values.items():
            setattr(section, key, value)
    rd.config.write_text(dumps_config(cfg), encoding="utf-8")
    return rd


def events_of(rd: RunDir) -> list[dict[str, Any]]:
    """Every line of the event log, parsed (fails the test if a line is not JSON)."""
    lines = rd.events.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines] if lines else []


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def dict_events(rd: RunDir) -> list[dict[str, Any]]:
    return list(iter_event_dicts(rd.path))


def classifier_run(tmp_path: Path, tiny_llama: Path) -> Path:
    """A LoRA classifier run whose run.toml lists no labels (training detected good/bad)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    rd = make_run(tmp_path, tiny_llama, task="classification")
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=2, dtype=torch.float32
    )
    model.config.pad_token_id = 0
    config = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]
    )
    get_peft_model(model, config).save_pretrained(rd.adapter)
    return rd.path
