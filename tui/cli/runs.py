"""``affiner train | preflight | runs | attach | stop``: runs from the command line.

``train`` writes the run folder and starts the training process detached, then returns: the
run survives the terminal and the SSH connection. ``attach`` follows it, ``stop`` ends it with a
checkpoint, ``train --resume`` continues it, ``runs`` lists them all. None of them imports
torch: ``preflight`` measures in a child process (`affiner.runner.run.run_preflight_process`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from affiner.planner.errors import AffinerError


def register(subparsers: Any) -> None:
    """Add the run commands to the ``affiner`` parser."""
    train = subparsers.add_parser(
        "train",
        help="start a training run in the background (or --resume one)",
        description=(
            "Check RUN_TOML, write a run folder under the runs root and start training as a "
            "detached process that survives closing the terminal. Prints the run id and how to "
            "follow it."
        ),
    )
    train.add_argument("config", nargs="?", metavar="RUN_TOML", help="the run configuration")
    train.add_argument(
        "--resume", metavar="RUN", help="continue a stopped, failed or interrupted run"
    )
    train.add_argument(
        "--foreground",
        action="store_true",
        help="stream the training log here and wait for the end",
    )
    train.add_argument(
        "--no-preflight", action="store_true", help="skip the pre-flight memory and speed check"
    )
    train.add_argument(
        "--run-id", metavar="ID", help="name the run folder (default: time-method-model)"
    )
    train.add_argument(
        "--node-rank",
        type=int,
        default=None,
        metavar="K",
        help="this machine's place in a multi-node run ([distributed].node_rank; 0 = main)",
    )
    train.set_defaults(func=cmd_train)

    pre = subparsers.add_parser(
        "preflight",
        help="measure peak memory and step time for a few steps, next to the estimate",
        description="Run a few real training steps of RUN_TOML here and compare with the planner.",
    )
    pre.add_argument("config", metavar="RUN_TOML")
    pre.add_argument("--json", action="store_true", help="print the result as JSON")
    pre.set_defaults(func=cmd_preflight)

    runs = subparsers.add_parser("runs", help="list runs: state, progress, best eval, age")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    runs.add_argument("--limit", type=int, default=0, metavar="N", help="show the newest N only")
    runs.set_defaults(func=cmd_runs)

    attach = subparsers.add_parser(
        "attach",
        help="follow a run live (Ctrl-C detaches; the run keeps going)",
        description="Follow RUN: progress, loss, speed, memory, evaluations and warnings.",
    )
    attach.add_argument("run", metavar="RUN", help="run id, unique part of one, or its folder")
    attach.set_defaults(func=cmd_attach)

    stop = subparsers.add_parser(
        "stop",
        help="stop a run gracefully (it saves a checkpoint; resume later)",
        description="Send SIGTERM to RUN's training process and wait until it has saved and ended.",
    )
    stop.add_argument("run", metavar="RUN", help="run id, unique part of one, or its folder")
    stop.add_argument(
        "--force",
        action="store_true",
        help="SIGKILL the process if it has not ended after a grace period",
    )
    stop.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds to wait")
    stop.set_defaults(func=cmd_stop)


def _out() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def cmd_train(args: argparse.Namespace) -> int:
    from affiner.runner.run import check_resumable, launch_worker, prepare_run

    if args.resume and args.config:
        raise AffinerError(
            "give either RUN_TOML (a new run) or --resume RUN, not both",
            hint="to change a run's settings, edit its run.toml, then resume it",
        )
    if args.resume:
        if args.run_id:
            raise AffinerError("--run-id names a new run; a resumed run keeps its id")
        if args.node_rank is not None:
            raise AffinerError(
                "--node-rank goes with a new run; a resumed run keeps its node's place",
                where="--node-rank",
            )
        rd, message = check_resumable(args.resume)
        if args.foreground:
            print(f"Resuming run {rd.run_id}: {message}", flush=True)
            code = launch_worker(rd, resume=True, foreground=True, message=message)
            _print_outcome(rd)
            return code
        # said once the worker holds the run: a resume that lost a race says only that
        launch_worker(rd, resume=True, message=message)
        print(f"Resuming run {rd.run_id}: {message}", flush=True)
        _print_follow(rd)
        return 0
    if not args.config:
        raise AffinerError(
            "no run configuration given",
            hint=(
                "`affiner train run.toml` (write one with `affiner plan --model M --data"
                " train.jsonl --save run.toml`, by hand from the README's run.toml section, or"
                " run `affiner` and accept a plan), or `affiner train --resume RUN`"
            ),
        )
    from affiner.tui.cli.data_summary import print_data_summary
    from affiner.tui.cli.provisioning import ensure_for_run_toml

    # an offline model is converted here, on first use, where the user sees it (never by the worker)
    ensure_for_run_toml(args.config)
    # The model's config and every data row are checked before a run folder exists (a large
    # file takes a moment): a mistake is an exit code 2 here, not a failed run found later.
    print(f"Checking {args.config}: its model and every data row…", file=sys.stderr, flush=True)
    prepared = prepare_run(
        args.config,
        run_id=args.run_id,
        preflight=False if args.no_preflight else None,
        node_rank=args.node_rank,
    )
    for warning in prepared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print_data_summary(prepared.config)
    rd = prepared.run_dir
    if args.foreground:
        print(f"Run {rd.run_id} in {rd.path}", flush=True)
        code = launch_worker(rd, foreground=True)
        _print_outcome(rd)
        return code
    launch_worker(rd)
    print(f"Started run {rd.run_id}")
    _print_follow(rd)
    _print_node_commands(prepared.config, rd)
    return 0


def _print_node_commands(cfg: Any, rd: Any) -> None:
    """A run over several machines waits for the others: say exactly what each one runs."""
    from affiner.runner.run import node_commands

    d = cfg.distributed
    if d.nodes <= 1 or d.node_rank != 0:
        return
    print(
        f"This run spans {d.nodes} nodes and waits for them at {d.main_address}:{d.main_port}. "
        "Run on each other node (same run.toml, model and data paths there; also in "
        f"{rd.command}):"
    )
    for node, command in enumerate(node_commands(cfg, rd)[1:], start=1):
        print(f"  node {node}: {command}")


def _print_follow(rd: Any) -> None:
    rid = rd.run_id
    print(f"  folder  {rd.path}")
    print(f"  log     {rd.log}")
    print(f"  follow  affiner attach {rid}")
    print(f"  stop    affiner stop {rid}")
    print(f"  resume  affiner train --resume {rid}")
    print("It keeps running after you close this terminal or SSH session.")


def _print_outcome(rd: Any) -> None:
    from affiner.runner.run import summarize

    summary = summarize(rd)
    line = f"Run {rd.run_id} {summary.state}"
    if summary.best_eval_loss is not None:
        line += f" · best eval loss {summary.best_eval_loss:.4f}"
    if summary.message:
        line += f" · {summary.message}"
    print(line)


# --------------------------------------------------------------------------- preflight


def cmd_preflight(args: argparse.Namespace) -> int:
    from affiner.runner.config import load_config
    from affiner.runner.run import run_preflight_process
    from affiner.tui.cli.data_summary import print_data_summary
    from affiner.tui.cli.provisioning import ensure_for_run_toml

    ensure_for_run_toml(args.config)  # an offline model converted here, on first use
    cfg = load_config(args.config)
    print_data_summary(cfg)
    print(
        f"Pre-flight for {args.config}: loading the model and timing a few steps…", file=sys.stderr
    )
    # In a child process whose progress bars and logs go to its own train.log; a failure comes
    # back as an AffinerError naming that log, and Ctrl-C here stops the child.
    result = run_preflight_process(cfg)
    source = "plan"
    if result.predicted_peak_bytes is None or result.predicted_step_seconds is None:
        peak, step, source = planner_estimate(cfg, result)
        if result.predicted_peak_bytes is None:
            result.predicted_peak_bytes = peak
        if result.predicted_step_seconds is None:
            result.predicted_step_seconds = step
    if args.json:
        data = result.to_dict()
        data["estimate_source"] = source
        print(json.dumps(data, indent=2))
        return 0
    _out().print(render_preflight(result, cfg, source=source))
    return 0


def planner_estimate(cfg: Any, result: Any) -> tuple[int | None, float | None, str]:
    """What the planner predicts for the batch the pre-flight measured: (peak bytes, step s, source).

    A ``run.toml`` written by hand has no ``[plan]`` figures, so the comparison is made here
    against the same memory and time model `affiner plan` uses, for the same micro-batch,
    sequence length and device.
    """
    from affiner.planner.hardware import probe
    from affiner.planner.memory import estimate_memory
    from affiner.planner.models import resolve_model
    from affiner.planner.recommend import default_precision
    from affiner.planner.settings import ALL_LINEAR, ATTENTIONS, TrainSettings
    from affiner.planner.timing import estimate_time
    from affiner.runner.config import effective_device

    try:
        spec = resolve_model(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        report = probe()
        if effective_device(cfg.training.device) == "cuda" and report.gpus:
            from affiner.planner.hardware import resolve_target

            device = resolve_target(report)
        else:
            from affiner.planner.hardware import cpu_target

            device = cpu_target(report)
        precision = default_precision(device, cfg.training.precision)
        targets = cfg.method.target_modules
        settings = TrainSettings(
            method=cfg.method.name,
            precision=precision,
            quantization=cfg.method.quantization,
            double_quant=cfg.method.double_quant,
            optimizer=cfg.training.optimizer,
            micro_batch=result.micro_batch,
            seq_len=max(1, result.seq_len or cfg.data.max_seq_len),
            grad_accum=result.grad_accum,
            gradient_checkpointing=cfg.training.gradient_checkpointing,
            attention=cfg.model.attn_implementation
            if cfg.model.attn_implementation in ATTENTIONS
            else "sdpa",
            padded=True,
            lora_rank=cfg.method.lora_rank,
            lora_alpha=cfg.method.lora_alpha,
            lora_dropout=cfg.method.lora_dropout,
            lora_targets=ALL_LINEAR if isinstance(targets, str) else tuple(targets),
            trainable_layers=cfg.method.trainable_layers,
        )
        memory = estimate_memory(spec, settings, device)
        timing = estimate_time(spec, settings, device)
    except AffinerError as exc:
        return None, None, f"no estimate ({exc.message})"
    return memory.peak_bytes, timing.step_seconds, f"planner, {device.name}"


def render_preflight(result: Any, cfg: Any, *, source: str = "plan") -> Any:
    """Measured beside estimated, and what was adjusted (a rich renderable).

    Args:
        source: where the estimate comes from (the run's ``[plan]`` or the planner just now).
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from affiner.planner.units import format_bytes, format_duration
    from affiner.runner.run import peak_basis

    table = Table(
        title=f"pre-flight on {result.device or 'this machine'}",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("measured", justify="right")
    table.add_column("estimate", justify="right")
    table.add_column("measured/estimate", justify="right")
    table.add_row(
        f"peak memory ({peak_basis(result.device or 'cpu')})",
        format_bytes(result.measured_peak_bytes),
        format_bytes(result.predicted_peak_bytes),
        _ratio(result.measured_peak_bytes, result.predicted_peak_bytes),
    )
    table.add_row(
        "step time",
        format_duration(result.measured_step_seconds),
        format_duration(result.predicted_step_seconds),
        _ratio(result.measured_step_seconds, result.predicted_step_seconds),
    )
    if result.eval_peak_bytes is not None:
        table.add_row("eval peak memory", format_bytes(result.eval_peak_bytes), "", "")
    table.add_row("saving a checkpoint", "ok" if result.save_ok else "FAILED", "", "")
    lines = Text()
    lines.append(f"estimate from: {source}\n", style="dim")
    lines.append(
        f"micro_batch {result.micro_batch} · grad_accum {result.grad_accum} · seq_len {result.seq_len}"
    )
    if result.adjusted:
        # the event's own record of where it started (cfg may already hold the adjusted batch)
        micro = getattr(result, "from_micro_batch", None) or cfg.training.micro_batch
        accum = getattr(result, "from_grad_accum", None) or cfg.training.grad_accum
        lines.append(
            f"\nadjusted from micro_batch {micro} · grad_accum {accum}"
            " so the run fits (the same effective batch)",
            style="bold yellow",
        )
    peaks = list(getattr(result, "rank_peaks", None) or [])
    if peaks:  # a multi-process check: the run's peak is its largest rank's
        per_rank = " · ".join(f"{rank}: {format_bytes(peak)}" for rank, peak in enumerate(peaks))
        lines.append(
            f"\npeak per rank ({len(peaks)} processes, the estimate is per GPU): {per_rank}"
        )
    for note in result.notes:
        lines.append(f"\n• {note}")
    return Group(table, lines)


def _ratio(measured: float | None, predicted: float | None) -> str:
    if not measured or not predicted:
        return "N/A"
    return f"{measured / predicted:.2f}×"


# --------------------------------------------------------------------------- runs / attach / stop


def cmd_runs(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from affiner.runner.run import list_runs, runs_root
    from affiner.tui.screens.run_facts import RunSettings

    summaries = list_runs()
    if args.limit and args.limit > 0:
        summaries = summaries[: args.limit]
    # the layout run.toml asked for ([distributed]): 1 process, 1 node, no strategy when absent
    settings = {s.run_id: RunSettings.read(s.path) or RunSettings() for s in summaries}
    if args.json:
        rows = []
        for s in summaries:
            row, laid = s.to_dict(), settings[s.run_id]
            row.update(world_size=laid.world_size, nodes=laid.nodes, strategy=laid.strategy)
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return 0
    if not summaries:
        print(f"No runs in {runs_root()}. Start one with `affiner train run.toml`.")
        return 0
    console = _out()
    wide = console.width >= 110  # the id already names method and model; show more if room
    table = Table(
        title=f"runs in {runs_root()}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # the id is what every other command takes: kept whole, on one line, so it can be copied
    longest = max(len(s.run_id) for s in summaries)
    table.add_column("run", no_wrap=True, min_width=longest)
    table.add_column("state", no_wrap=True)
    table.add_column("progress", justify="right", no_wrap=True)
    table.add_column("best eval", justify="right", no_wrap=True)
    # only when a run has several processes: a single-process list keeps its columns
    layouts = any(settings[s.run_id].layout for s in summaries)
    if layouts:
        table.add_column("layout", no_wrap=True)
    if wide:
        table.add_column("model · method", overflow="fold")
    table.add_column("updated", justify="right")  # the one that wraps when 80 columns are tight
    for s in summaries:
        cells = [
            s.run_id,
            _state_cell(s),
            _progress_cell(s),
            "" if s.best_eval_loss is None else f"{s.best_eval_loss:.4f}",
        ]
        if layouts:
            cells.append(settings[s.run_id].layout)
        if wide:
            cells.append(" · ".join(x for x in (s.model, s.method) if x))
        cells.append(_age(s.updated))
        table.add_row(*cells)
    console.print(table)
    return 0


def _state_cell(s: Any) -> Any:
    from rich.text import Text

    from affiner.tui.cli.states import STATE_STYLES

    text = Text(s.state, style=STATE_STYLES.get(s.state, ""))
    if s.warnings:
        text.append(f" ⚠{s.warnings}", style="yellow")
    return text


def _progress_cell(s: Any) -> str:
    if s.total_steps:
        return f"{s.step}/{s.total_steps} {s.progress:.0%}"
    return str(s.step) if s.step else ""


def _age(when: float | None) -> str:
    from affiner.planner.units import format_duration

    if not when:
        return ""
    return f"{format_duration(max(0.0, time.time() - when))} ago"


def cmd_attach(args: argparse.Namespace) -> int:
    from affiner.runner.run import resolve_run
    from affiner.tui.cli.attach import attach

    return attach(resolve_run(args.run))


def cmd_stop(args: argparse.Namespace) -> int:
    from affiner.runner.run import stop_run

    if args.timeout is not None and args.timeout < 0:
        raise AffinerError("--timeout must be zero or more seconds")
    result = stop_run(args.run, timeout=args.timeout, force=args.force)
    sent = f" (sent {', '.join(result.signalled)})" if result.signalled else ""
    print(f"{result.message}{sent}")
    return 0 if result.stopped else 1
