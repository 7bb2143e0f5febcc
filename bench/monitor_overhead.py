"""Monitor overhead: the same training with the event log and the system sampler on and off.

Issue 14, point 5: what watching a run costs the run. The bar: at most 2% of the step time.

Both ways are built here, in this process, from the runner's own pieces, as
`affiner.runner.train` wires them: the model loaded by `load_model` (LoRA, fp32, CPU), the
batching the runner decides for it (`decide_batching`, `trainer_arguments`, `build_collator`),
`build_training_args` from a `RunConfig` with the runner's defaults (``logging_steps`` above
all), and `CountingTrainer`. The way called "on" adds what a real run adds: `EventCallback`
writing ``events.jsonl`` and ``status.json`` into a run folder (``status.json`` is rewritten,
with an fsync, at every log), and the `SystemSampler` thread at the runner's interval. "off"
is the bare `CountingTrainer`. The model is a Llama built from a config with random weights and
a tokenizer trained here (`tests.tiny_models`): no download.

Timing: a callback, in both ways, notes the time at each step's end; a step is the time from
one step's end to the next (data, forward, backward, optimizer, every callback, the log writes,
whatever the sampler thread takes from the cores), the first `--warmup` steps left out. Each
repeat gives its mean step time (log steps included: the median of single steps would skip
them) and the median of its single steps; the ways run interleaved, the order swapped every
repeat (off-on, on-off, ...), and each way's figure is the median of its repeats. Overhead =
on / off - 1. The spread of the "off" repeats is reported beside it: on a shared machine, an
overhead inside that spread is noise, not cost. Two direct measurements back the difference up:
the time spent inside the event callback's hooks, per step, and what one system sample costs.

    PYTHONPATH=. python bench/monitor_overhead.py [--json] [--save bench/results/monitor_overhead_cpu]
    PYTHONPATH=. python bench/monitor_overhead.py --quick    # 2 steps each way: a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/monitor_overhead.py` from anywhere
    sys.path.insert(0, str(ROOT))

#: The bar: the monitor may cost at most this share of a step.
BAR = 0.02
WAYS = ("off", "on")


@dataclass(frozen=True)
class Shape:
    """The model and batch: sized so that a step takes ~50-200 ms on a 2-core CPU."""

    hidden: int = 128
    layers: int = 4
    micro_batch: int = 4
    #: rows are between a quarter of this and this many tokens, long-tailed (most short)
    seq_len: int = 128


@dataclass
class Repeat:
    """One timed run of one way."""

    way: str
    steps: int
    mean_step_ms: float
    median_step_ms: float
    #: time inside the event callback's hooks, per step (0 for "off"), and by hook
    callback_ms_per_step: float = 0.0
    hook_ms_per_step: dict[str, float] = field(default_factory=dict)
    events_written: int = 0
    system_samples: int = 0


@dataclass
class Report:
    """What `run_bench` measured; `summarize` fills the verdict."""

    machine: str
    when: str
    shape: dict[str, int]
    steps: int
    warmup: int
    logging_steps: int
    sampler_interval_s: float
    repeats: list[Repeat] = field(default_factory=list)
    sample_cost_ms: float | None = None
    #: one ``status.json`` rewrite (temp file, fsync, rename) in the run folders' file system
    status_write_ms: float | None = None
    load_after: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)


# -- the arithmetic (pure: tested without training) ------------------------------------------


def summarize(
    repeats: list[Repeat], sample_cost_ms: float | None, interval: float
) -> dict[str, Any]:
    """Per way the median of its repeats; overhead = on / off - 1, against the bar.

    Returns a dict with ``off_ms``, ``on_ms`` (medians of the repeats' mean step times),
    ``overhead`` (a fraction) and ``passes``; ``off_spread`` ((max - min) / median of the "off"
    repeats: the machine's noise in this run) and ``noisy`` when that spread exceeds the bar;
    and the direct measurement: ``callback_share`` (time in the event hooks over the "off"
    step), ``sampler_share`` (one sample's cost over the interval), their sum
    ``direct_share`` against the bar (``direct_passes``), and the costliest hook.
    """
    by_way = {way: [r for r in repeats if r.way == way] for way in WAYS}
    if not all(by_way.values()):
        raise ValueError("both ways need at least one repeat")
    off = statistics.median(r.mean_step_ms for r in by_way["off"])
    on = statistics.median(r.mean_step_ms for r in by_way["on"])
    off_all = [r.mean_step_ms for r in by_way["off"]]
    callback = statistics.median(r.callback_ms_per_step for r in by_way["on"])
    overhead = on / off - 1.0
    spread = (max(off_all) - min(off_all)) / off
    callback_share = callback / off
    sampler_share = None if sample_cost_ms is None else sample_cost_ms / 1000 / interval
    direct = callback_share + (sampler_share or 0.0)
    hooks: dict[str, list[float]] = {}
    for r in by_way["on"]:
        for name, ms in r.hook_ms_per_step.items():
            hooks.setdefault(name, []).append(ms)
    top = max(hooks, key=lambda name: statistics.median(hooks[name]), default=None)
    return {
        "off_ms": round(off, 3),
        "on_ms": round(on, 3),
        "off_median_step_ms": round(statistics.median(r.median_step_ms for r in by_way["off"]), 3),
        "on_median_step_ms": round(statistics.median(r.median_step_ms for r in by_way["on"]), 3),
        "overhead": round(overhead, 5),
        "off_spread": round(spread, 5),
        "callback_share": round(callback_share, 5),
        "sampler_share": None if sampler_share is None else round(sampler_share, 6),
        "top_hook": top,
        "top_hook_ms_per_step": None if top is None else round(statistics.median(hooks[top]), 4),
        "direct_share": round(direct, 5),
        "bar": BAR,
        "passes": overhead <= BAR,
        "direct_passes": direct <= BAR,
        #: the machine moved the off runs by more than the bar: the A/B verdict is noise
        "noisy": spread > BAR,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f}%"


def format_table(report: Report) -> str:
    """A markdown table: each way's step time, the overhead against the bar, and its parts."""
    s = report.summary
    top = s["top_hook"]
    hook = "" if top is None else f"most in {top}: {s['top_hook_ms_per_step']:.2f} ms a step"
    noise = " (the machine's noise is above the bar: rerun on a quiet one)" if s["noisy"] else ""
    rows = [
        ("what", "measured", "baseline (same run)", "bar"),
        ("---", "---", "---", "---"),
        (
            "step time, monitor on (events + status + sampler)",
            f"{s['on_ms']:.1f} ms (median step {s['on_median_step_ms']:.1f} ms)",
            f"off: {s['off_ms']:.1f} ms (median step {s['off_median_step_ms']:.1f} ms)",
            "",
        ),
        (
            "overhead = on / off - 1",
            _pct(s["overhead"]),
            f"spread of the off repeats: {s['off_spread'] * 100:.2f}%{noise}",
            f"<= {BAR * 100:.0f}%: {'yes' if s['passes'] else 'no'}"
            + (" (within noise)" if s["noisy"] else ""),
        ),
        (
            "overhead measured directly (hooks + sampler)",
            _pct(s["direct_share"]),
            "of the off step",
            f"<= {BAR * 100:.0f}%: {'yes' if s['direct_passes'] else 'no'}",
        ),
        ("  inside the event callback's hooks", _pct(s["callback_share"]), hook, ""),
        (
            "    of which status.json rewrites (fsync), one a log",
            _pct(s.get("status_write_share")),
            "" if report.status_write_ms is None else f"{report.status_write_ms:.2f} ms each",
            "",
        ),
        (
            f"  one system sample every {report.sampler_interval_s:g} s",
            _pct(s["sampler_share"]),
            "of the time"
            + ("" if report.sample_cost_ms is None else f" ({report.sample_cost_ms:.2f} ms each)"),
            "",
        ),
    ]
    head = (
        f"{report.steps} steps ({report.warmup} warm-up left out) x "
        f"{len(report.repeats) // 2} repeats a way, logging every {report.logging_steps} steps; "
        f"Llama {report.shape['layers']} layers x {report.shape['hidden']}, micro-batch "
        f"{report.shape['micro_batch']}, rows up to {report.shape['seq_len']} tokens; "
        f"{report.machine}"
    )
    return head + "\n\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def order(repeats: int) -> list[str]:
    """The ways interleaved, the order swapped every repeat, so drift falls on both alike."""
    out: list[str] = []
    for index in range(repeats):
        out.extend(WAYS if index % 2 == 0 else tuple(reversed(WAYS)))
    return out


# -- the runs ----------------------------------------------------------------------------------


def build_model(folder: Path, shape: Shape) -> Path:
    """The tiny Llama and its tokenizer, written once (`tests.tiny_models`)."""
    from tests.tiny_models import build_tiny_llama

    if not (folder / "config.json").exists():
        build_tiny_llama(folder, hidden=shape.hidden, layers=shape.layers)
    return folder


def make_config(model: Path, steps: int, micro_batch: int) -> Any:
    """The runner's defaults, with what this bench pins: LoRA, fp32 on the CPU, no eval, no save."""
    from affiner.runner.config import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = str(model)
    cfg.method.name = "lora"
    cfg.training.max_steps = steps
    cfg.training.micro_batch = micro_batch
    cfg.training.precision = "fp32"
    cfg.training.device = "cpu"
    cfg.training.preflight = False
    cfg.checkpoint.every_steps = steps + 1000  # no checkpoint inside the timed run
    return cfg


def make_rows(count: int, shape: Shape, vocab: int, seed: int = 0) -> Any:
    """Token rows of long-tailed lengths (most short, a few near the maximum), loss on all."""
    from datasets import Dataset

    rng = random.Random(seed)
    low = max(8, shape.seq_len // 4)
    ids = []
    for _ in range(count):
        length = min(shape.seq_len, int(low * rng.paretovariate(1.5)))
        ids.append([rng.randrange(8, vocab) for _ in range(length)])
    return Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": ids}
    )


def _step_clock() -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """The time at the first timed step's start and at every step's end."""

        def __init__(self, warmup: int) -> None:
            self.warmup = warmup
            self.start: float | None = None
            self.ends: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == self.warmup and self.start is None:
                self.start = time.perf_counter()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step > self.warmup:
                self.ends.append(time.perf_counter())
            return control

    return StepClock


def _timed(callback: Any, counting: Any) -> Any:
    """`callback` with its hooks' time added up (`elapsed`) while ``counting()`` says so; the
    hooks do what they did. Training's start and end are left out: once a run, not a step."""
    from transformers import TrainerCallback

    hooks = [name for name in vars(TrainerCallback) if name.startswith("on_")]

    class Timed(TrainerCallback):
        def __init__(self) -> None:
            self.elapsed = 0.0
            self.by_hook: dict[str, float] = {}

    def forward(name: str) -> Any:
        inner = getattr(callback, name)

        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            if name in ("on_train_begin", "on_train_end") or not counting():
                return inner(*args, **kwargs)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.elapsed += spent
                self.by_hook[name] = self.by_hook.get(name, 0.0) + spent

        return hook

    for name in hooks:
        setattr(Timed, name, forward(name))
    return Timed()


def run_way(way: str, cfg: Any, rows: Any, workdir: Path, warmup: int, interval: float) -> Repeat:
    """Train `cfg.training.max_steps` steps one way, from the same seed; time each step."""
    import torch
    from transformers import PrinterCallback

    from affiner.runner.run import EventWriter, RunDir, RunStatus
    from affiner.runner.training import (
        CountingTrainer,
        EventCallback,
        RunInfo,
        StopRequest,
        SystemSampler,
        TokenCounter,
        build_collator,
        build_training_args,
        decide_batching,
        load_model,
        load_tokenizer,
        resolve_precision,
        trainer_arguments,
    )

    torch.manual_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg)
    precision = resolve_precision(cfg.training.precision, "cpu")
    model = load_model(cfg, tokenizer, device="cpu", precision=precision).model
    batching = decide_batching(cfg, model, "cpu")
    run_dir = RunDir(Path(tempfile.mkdtemp(prefix=f"{way}-", dir=workdir)))
    args = build_training_args(
        cfg,
        output_dir=run_dir.checkpoints,
        device="cpu",
        precision=precision,
        has_eval=False,
        **trainer_arguments(batching),
    )
    tokens = TokenCounter()
    clock = _step_clock()(warmup)
    callbacks: list[Any] = []
    writer = sampler = events = None
    if way == "on":
        writer = EventWriter(run_dir.path)
        info = RunInfo(
            run_id=run_dir.run_id,
            model=cfg.model.name_or_path,
            method=cfg.method.name,
            device="cpu",
            epochs=cfg.training.epochs,
            train_rows=len(rows),
            eval_rows=0,
            packing=batching.packing,
            loss_kernel=batching.loss_kernel,
        )
        events = _timed(
            EventCallback(
                run_dir,
                writer,
                RunStatus(run_id=run_dir.run_id),
                info,
                tokens=tokens,
                stop=StopRequest(),
            ),
            counting=lambda: clock.start is not None,
        )
        callbacks.append(events)
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=build_collator(cfg, tokenizer, "cpu", packing=batching.packing),
        processing_class=tokenizer,
        callbacks=[*callbacks, clock],
        token_counter=tokens,
        packing=batching.packing,
        causal_lm=True,
    )
    trainer.remove_callback(PrinterCallback)
    if writer is not None:
        state = trainer.state
        sampler = SystemSampler(writer, interval=interval, step=lambda: state.global_step)
        sampler.start()
    try:
        trainer.train()
    finally:
        if sampler is not None:
            sampler.stop()
        if writer is not None:
            writer.close()
    if clock.start is None or not clock.ends:
        raise RuntimeError(f"no step was timed ({cfg.training.max_steps} steps, {warmup} warm-up)")
    starts = [clock.start, *clock.ends[:-1]]
    steps = [(end - start) * 1000 for start, end in zip(starts, clock.ends, strict=True)]
    repeat = Repeat(
        way=way,
        steps=len(steps),
        mean_step_ms=round(statistics.fmean(steps), 3),
        median_step_ms=round(statistics.median(steps), 3),
    )
    if events is not None:
        repeat.callback_ms_per_step = round(events.elapsed * 1000 / len(steps), 4)
        repeat.hook_ms_per_step = {
            name: round(spent * 1000 / len(steps), 4)
            for name, spent in sorted(events.by_hook.items(), key=lambda item: -item[1])
        }
        lines = run_dir.events.read_bytes().splitlines()
        repeat.events_written = len(lines)
        repeat.system_samples = sum(1 for line in lines if b'"type": "system"' in line)
    del trainer, model
    gc.collect()
    return repeat


def sample_cost_ms(count: int = 20) -> float:
    """What one `SystemSample` costs to take (psutil, NVML where there is one), in ms."""
    from affiner.runner.training.sampler import _Nvml, take_sample

    nvml = _Nvml()
    try:
        take_sample(nvml)
        start = time.perf_counter()
        for _ in range(count):
            take_sample(nvml)
        return (time.perf_counter() - start) * 1000 / count
    finally:
        nvml.close()


def status_write_ms(folder: Path, count: int = 20) -> float:
    """The median cost of one ``status.json`` rewrite, as `EventCallback` does at every log."""
    from affiner.runner.run import RunStatus, write_status

    folder.mkdir(parents=True, exist_ok=True)
    status = RunStatus(run_id=folder.name, state="running", step=1, total_steps=10)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        write_status(folder, status)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_bench(args: argparse.Namespace) -> Report:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from affiner.runner.config import RunConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = Shape(args.hidden, args.layers, args.micro_batch, args.seq_len)
    logging_steps = RunConfig().training.logging_steps
    report = Report(
        machine=f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"load {os.getloadavg()[0]:.1f} at start",
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        shape=asdict(shape),
        steps=args.steps,
        warmup=args.warmup,
        logging_steps=logging_steps,
        sampler_interval_s=args.interval,
    )
    with tempfile.TemporaryDirectory(prefix="monitor-overhead-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        model = build_model(workdir / "model", shape)
        cfg = make_config(model, args.steps, args.micro_batch)
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(model))
        rows = make_rows(args.steps * args.micro_batch * cfg.training.grad_accum, shape, vocab)
        for way in order(args.repeats):
            repeat = run_way(way, cfg, rows, workdir, args.warmup, args.interval)
            report.repeats.append(repeat)
            print(f"  {way}: {repeat.mean_step_ms:.1f} ms a step", file=sys.stderr, flush=True)
        report.status_write_ms = round(status_write_ms(workdir / "status-only"), 3)
    report.sample_cost_ms = round(sample_cost_ms(), 3)
    report.load_after = round(os.getloadavg()[0], 1)
    report.summary = summarize(report.repeats, report.sample_cost_ms, args.interval)
    if report.status_write_ms is not None:
        per_step = report.status_write_ms / report.logging_steps
        report.summary["status_write_share"] = round(per_step / report.summary["off_ms"], 5)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps a run")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each way")
    parser.add_argument("--interval", type=float, default=5.0, help="system sampler interval, s")
    parser.add_argument("--hidden", type=int, default=Shape.hidden)
    parser.add_argument("--layers", type=int, default=Shape.layers)
    parser.add_argument("--micro-batch", type=int, default=Shape.micro_batch)
    parser.add_argument("--seq-len", type=int, default=Shape.seq_len)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's own; on a loaded machine 1 is far steadier)",
    )
    parser.add_argument("--quick", action="store_true", help="2 steps each way, one repeat")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--save", default="", help="write STEM.json and STEM.md")
    parser.add_argument("--workdir", default="", help="keep the model and run folders here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 0, 1
        args.hidden, args.layers, args.seq_len = 64, 2, 32
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must be more than --warmup ({args.warmup})")
    if args.repeats < 1 or args.interval <= 0 or args.threads < 0:
        parser.error("--repeats must be at least 1, --interval above 0, --threads 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_bench(args)
    if args.save:
        stem = Path(args.save)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n", "utf-8")
        stem.with_suffix(".md").write_text(
            f"# Monitor overhead ({report.when})\n\n{format_table(report)}\n", "utf-8"
        )
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
