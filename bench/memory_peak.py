"""Does the predicted peak hold over whole training steps? The planner's timeline, measured.

`bench/memory_accuracy.py` checks each part on its own (weights, gradients, optimizer state,
bytes saved for backward). A user meets their sum at one moment: the end of the forward, the
start of backward (the vocabulary-sized loss beside every saved activation), the end of backward
or the optimizer step. This bench runs three real optimizer steps of the runner's recipe
(`bench.step_recipe`: the model saved with random weights and loaded back through
`affiner.runner.training.modeling`, fused AdamW, clipping, autocast) and puts the measured peak next to
`estimate_memory`'s.

- ``--device cpu`` (the default): small decoders of five families (hidden 256, 4 blocks,
  vocabulary 8192), every method with and without checkpointing, mixed bf16 and fp32. The
  allocated peak is exact (`bench.peak_meters.CpuMeter`) and compared with ``allocated_peak``.
- ``--device cuda``: the issue's matrix of real shapes (Qwen2-0.5B- and 1.5B-like, Llama-3-8B-
  like), full / LoRA / QLoRA / freeze, sequence 512 and 2048, batch 1 and 4, checkpointing off
  and on, mixed bf16. Two comparisons per cell: the allocated peak (the memory model alone) and
  what ``nvidia-smi`` shows a user, peak reserved bytes plus the CUDA context, against the
  planner's ``peak_bytes`` (which adds its context and allocator-slack figures). The bar: within
  10%, never more than 5% under. Cells the planner says cannot fit are listed, not run.

Each model is built once; each method loads it once and runs all its shapes (checkpointing off
first: turning it on adds hooks that stay). ``--jsonl FILE`` appends every row as it is
measured and ``--resume`` skips the rows already there, so a run cut off by a time limit
(``--budget SECONDS`` stops starting new cells) can be finished by a second call.

    PYTHONPATH=. python bench/memory_peak.py [--device cpu|cuda] [--json] [--out FILE]
        [--model NAME ...] [--jsonl FILE [--resume]] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import estimate_memory
from affiner.planner.models import spec_from_config
from bench.peak_meters import CpuMeter, CudaMeter, meter_for
from bench.peak_models import CPU_TARGET, SHAPE_CONFIGS, SMALL_CONFIGS, cpu_cells, cuda_cells
from bench.step_recipe import (
    Cell,
    load_for,
    make_batch,
    release,
    save_random_model,
    set_checkpointing,
    train_steps,
)

#: The GPU bar of the planner: a prediction may be up to 10% over, and at most 5% under.
BAR = (-0.05, 0.10)
#: The planner's names for the moment of the peak, as the meters name the phases.
PHASE_NAMES = {
    "forward": "forward",
    "backward": "backward",
    "backward_end": "backward",
    "optimizer_step": "step",
}


def error(predicted: int, measured: int) -> float:
    return (predicted - measured) / measured if measured else 0.0


def within_bar(err: float) -> bool:
    return BAR[0] <= err <= BAR[1]


def groups(cells: Iterable[Cell]) -> dict[tuple[Any, ...], list[Cell]]:
    """Cells that share one loaded model (same model and method), checkpointing off first."""
    out: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        out.setdefault(cell.load_key, []).append(cell)
    return {key: sorted(group, key=lambda c: c.checkpointing) for key, group in out.items()}


def predict(cell: Cell, config: dict[str, Any], target: DeviceTarget) -> dict[str, Any]:
    spec = spec_from_config(config, name=cell.model)
    estimate = estimate_memory(spec, cell.settings(), target)
    row: dict[str, Any] = {
        **cell.to_json(),
        "predicted": estimate.details["allocated_peak"],
        "predicted_phase": estimate.phase,
    }
    if target.kind == "cuda":
        row["predicted_peak"] = estimate.peak_bytes
        row["predicted_context"] = estimate.details.get("cuda_context", 0)
        row["predicted_slack"] = estimate.details.get("allocator_slack", 0)
    return row


def measured_row(row: dict[str, Any], peak: Any) -> dict[str, Any]:
    """Add a meter's `Peak` to a predicted row, with the errors."""
    row = dict(row)
    row.update(
        measured=peak.allocated,
        measured_phase=peak.phase,
        measured_step=peak.step,
        error=error(row["predicted"], peak.allocated),
    )
    if peak.reserved is not None:
        row["reserved"] = peak.reserved
        row["context"] = peak.context
        row["slack"] = peak.reserved / peak.allocated - 1 if peak.allocated else 0.0
        if peak.context is not None:
            row["measured_peak"] = peak.reserved + peak.context
            row["peak_error"] = error(row["predicted_peak"], row["measured_peak"])
        if peak.note:
            row["note"] = peak.note
    return row


def run_matrix(
    cells: list[Cell],
    configs: dict[str, dict[str, Any]],
    target: DeviceTarget,
    meter: CpuMeter | CudaMeter,
    *,
    budget: float | None = None,
    done: set[str] = frozenset(),  # type: ignore[assignment]
    sink: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """Predict and measure every cell; a cell that cannot run is reported, not hidden."""
    device = meter.device
    started = time.monotonic()
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        sink(row)

    with tempfile.TemporaryDirectory(prefix="affiner-bench-") as tmp:
        saved: set[str] = set()
        for group in groups(c for c in cells if c.key not in done).values():
            first = group[0]
            todo = []
            for cell in group:
                row = predict(cell, configs[cell.model], target)
                if target.kind == "cuda" and row["predicted_peak"] > target.memory_total * 1.05:
                    need, have = row["predicted_peak"] / 2**30, target.memory_total / 2**30
                    emit(row | {"skipped": f"predicted {need:.1f} GiB > {have:.1f} GiB here"})
                elif budget is not None and time.monotonic() - started > budget:
                    emit(row | {"skipped": f"time budget of {budget:.0f} s spent"})
                else:
                    todo.append((cell, row))
            if not todo:
                continue
            folder = Path(tmp) / first.model
            model = None
            try:
                if first.model not in saved:
                    save_random_model(configs[first.model], folder, device=device)
                    saved.add(first.model)
                model = load_for(first, folder, device)
                vocab = model.config.vocab_size
                for cell, row in todo:
                    if budget is not None and time.monotonic() - started > budget:
                        emit(row | {"skipped": f"time budget of {budget:.0f} s spent"})
                        continue
                    emit(_measure(model, vocab, cell, row, meter))
            except Exception as exc:  # the load failed: every cell of the group says why
                reached = {r["key"] for r in rows}
                for cell, row in todo:
                    if cell.key not in reached:
                        emit(row | {"failed": _failure(exc)})
            finally:
                del model
                release(device)
    return rows


def _measure(model: Any, vocab: int, cell: Cell, row: dict[str, Any], meter: Any) -> dict:
    """One cell on an already loaded model."""
    try:
        if cell.checkpointing:
            set_checkpointing(model, True)
        batch = make_batch(vocab, cell, meter.device)
        peak = meter.measure(
            lambda after: train_steps(model, batch, cell, after_phase=after), model, batch
        )
        return measured_row(row, peak)
    except Exception as exc:  # out of memory is a result too
        model.zero_grad(set_to_none=True)
        return row | {"failed": _failure(exc)}
    finally:
        batch = None
        release(meter.device)


def _failure(exc: BaseException) -> str:
    from affiner.runner.training import is_oom

    if is_oom(exc):
        return "out of memory"
    first = str(exc).strip().splitlines()[:1] or [""]
    return f"{type(exc).__name__}: {first[0][:200]}"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _coloured(err: float) -> str:
    return f"[{'green' if within_bar(err) else 'red'}]{err * 100:+.1f}%[/]"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """One line a cell: prediction, measurement and error (and on a GPU, the peak users see)."""
    from rich.console import Console
    from rich.table import Table

    cuda = any("predicted_peak" in r for r in rows)
    table = Table(title=title)
    table.add_column("cell")
    for col in ("predicted", "measured", "error"):
        table.add_column(col, justify="right")
    if cuda:
        table.add_column("with context", justify="right")
    table.add_column("peak at")
    for row in rows:
        shape = f"{row['seq']}×{row['batch']}" + (" pad" if row.get("padded") else "")
        ckpt = " ckpt" if row["checkpointing"] else ""
        name = f"{row['model']} {row['method']} {row['precision']} {shape}{ckpt}"
        reason = row.get("failed") or row.get("skipped")
        extra = [""] if cuda else []
        if reason is not None:
            table.add_row(name, _size(row["predicted"]), "", "", *extra, reason[:40])
            continue
        if cuda:
            extra = [_coloured(row["peak_error"]) if "peak_error" in row else "n/a"]
        pred, meas = PHASE_NAMES.get(row["predicted_phase"], "?"), row["measured_phase"]
        where = pred if pred == meas else f"{pred} / {meas}"
        table.add_row(
            name,
            _size(row["predicted"]),
            _size(row["measured"]),
            _coloured(row["error"]),
            *extra,
            f"{where} {row['measured_step']}",
        )
    Console().print(table)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst errors both ways and how many cells meet the bar (within 10%, never 5% under)."""
    out: dict[str, Any] = {
        "cells": len(rows),
        "skipped": sum(1 for r in rows if "skipped" in r),
        "failed": sum(1 for r in rows if "failed" in r),
    }
    for name, key in (("allocated", "error"), ("peak", "peak_error")):
        errors = [r[key] for r in rows if key in r]
        if errors:
            out[name] = {
                "measured": len(errors),
                "within_bar": sum(1 for e in errors if within_bar(e)),
                "most_under": min(errors),
                "most_over": max(errors),
            }
    slack = [r["slack"] for r in rows if "slack" in r]
    context = [r["context"] for r in rows if r.get("context") is not None]
    if slack:
        out["allocator_slack"] = {"min": min(slack), "max": max(slack)}
    if context:
        out["cuda_context"] = {"min": min(context), "max": max(context)}
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text("utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off when the last run was killed
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the result as JSON here")
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    parser.add_argument("--jsonl", help="append each row here as soon as it is measured")
    parser.add_argument("--resume", action="store_true", help="skip the rows --jsonl holds")
    parser.add_argument("--budget", type=float, help="start no cell after this many seconds")
    args = parser.parse_args(argv)
    configs = SHAPE_CONFIGS if args.device == "cuda" else SMALL_CONFIGS
    unknown = sorted(set(args.model or ()) - set(configs))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(configs)}")
    if args.resume and not args.jsonl:
        parser.error("--resume reads the rows of --jsonl: name that file")
    models = tuple(args.model or configs)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(
                "--device cuda needs an NVIDIA GPU with a driver; none was found", file=sys.stderr
            )
            return 2
        from affiner.planner.hardware import probe, resolve_target

        target, cells = resolve_target(probe(), measure=False), cuda_cells(models)
    else:
        target, cells = CPU_TARGET, cpu_cells(models)
    _quiet_transformers()
    earlier = _read_jsonl(Path(args.jsonl)) if args.jsonl and args.resume else []
    sink = _appender(Path(args.jsonl)) if args.jsonl else (lambda row: None)
    started = time.perf_counter()
    rows = run_matrix(
        cells,
        configs,
        target,
        meter_for(args.device),
        budget=args.budget,
        done={r["key"] for r in earlier if "skipped" not in r},
        sink=sink,
    )
    keep = {r["key"]: r for r in earlier if "skipped" not in r} | {r["key"]: r for r in rows}
    rows = [keep[c.key] for c in cells if c.key in keep]
    result = {
        "mode": f"{args.device}-peak",
        "device": target.name,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary(rows),
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(rows, f"predicted vs measured peak over 3 steps ({target.name})")
        print(json.dumps(result["summary"]))
    return 0


def _appender(path: Path) -> Callable[[dict[str, Any]], None]:
    """Append rows one line each; a line left unfinished by a killed run is ended first."""
    if path.exists() and path.stat().st_size:
        with path.open("rb") as fh:
            fh.seek(-1, 2)
            torn = fh.read(1) != b"\n"
        if torn:
            with path.open("a", encoding="utf-8") as fh:
                fh.write("\n")

    def append(row: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    return append


def _quiet_transformers() -> None:
    """No progress bars or config warnings in the bench's output: the table is the result."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
