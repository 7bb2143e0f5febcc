"""``affiner demo [chat|classify]``: a real fine-tune end to end, offline, on whatever is here.

Without ``--headless`` the model and data are made ready here (with a progress bar), then the
TUI opens on the guided assistant with the demo's model, data and settings filled in (the
classify demo when no task is named): Enter walks the real flow (hardware, model, data, plan,
settings, pre-flight, launch, monitor), and the run is the headless demo's run.toml.

With ``--headless`` the same steps run in this terminal: provisioning, a data summary, the
plan (device, time estimate, what a GPU would need), the base model's held-out score, training
in a detached worker followed by the live attach view, then a summary of what was trained,
how long it took, the held-out metric before → after, where the adapter and model card are,
and how to chat with it. ``--rows/--eval-rows/--max-steps`` shrink it for a quick look.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_DEMO = "classify"


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``affiner`` parser."""
    demo = subparsers.add_parser(
        "demo",
        help="fine-tune a real model on real data on this machine, offline (chat or classify)",
        description=(
            "A first fine-tune in a few minutes with nothing downloaded: 'chat' tunes "
            "SmolLM2-135M-Instruct on question/answer pairs, 'classify' tunes all-MiniLM-L6-v2 "
            "to tell fresh from rotten movie reviews. Opens the guided assistant on it, or with "
            "--headless runs every step in this terminal."
        ),
    )
    demo.add_argument(
        "task",
        nargs="?",
        choices=("chat", "classify"),
        default=None,
        help=f"which demo (default: {DEFAULT_DEMO}, in the app and headless alike)",
    )
    demo.add_argument(
        "--headless", action="store_true", help="run every step here, without the TUI"
    )
    demo.add_argument(
        "--runs-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="folder for the run and the demo data (default: ./runs, or $AFFINER_RUNS)",
    )
    demo.add_argument("--rows", type=int, metavar="N", help="train on N rows only")
    demo.add_argument("--eval-rows", type=int, metavar="N", help="hold out N rows only")
    demo.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps")
    demo.add_argument(
        "--json", metavar="FILE", help="also write the summary as JSON to FILE (headless)"
    )
    demo.add_argument(
        "--no-samples",
        action="store_true",
        help="skip the held-out examples answered before and after (saves model loading)",
    )
    demo.set_defaults(func=cmd_demo)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _shrink(args: argparse.Namespace) -> dict[str, int | None]:
    from affiner.runner.demo import shrink_from_env

    shrink: dict[str, int | None] = dict(shrink_from_env())
    for key in ("rows", "eval_rows", "max_steps"):
        if getattr(args, key, None) is not None:
            shrink[key] = getattr(args, key)
    return shrink


def cmd_demo(args: argparse.Namespace) -> int:
    import os

    runs_dir = getattr(args, "runs_dir", None)
    if runs_dir:
        os.environ["AFFINER_RUNS"] = os.path.abspath(runs_dir)
    if not args.headless:
        return _open_tui(args, runs_dir)
    return run_headless(args.task or DEFAULT_DEMO, runs_dir, args)


def prepare_with_progress(key: str, runs_dir: str | None, shrink: dict, console: Any) -> Any:
    """`affiner.runner.demo.tasks.prepare_demo` with the model's progress while it is provisioned
    (`affiner.tui.cli.provisioning.progress_reporter`: the bar `affiner train` draws too)."""
    from affiner.runner.demo import get_preset, prepare_demo
    from affiner.tui.cli.provisioning import progress_reporter

    preset = get_preset(key)
    with progress_reporter(console, f"model {preset.model}") as report:
        return prepare_demo(key, workdir=runs_dir, progress=report, **shrink)


def _section(console: Any, number: int, title: str) -> None:
    console.print()
    console.rule(f"[bold]{number}. {title}", align="left")


def run_headless(key: str, runs_dir: str | None, args: argparse.Namespace) -> int:
    """Every step of the demo in this terminal; returns the exit code."""
    from affiner.runner.demo import collect_result
    from affiner.runner.run import launch_worker, new_run_id, prepare_run
    from affiner.tui.cli.attach import attach

    console = _console()
    started = time.monotonic()
    shrink = _shrink(args)
    console.print(
        f"[bold]affiner demo {key}[/] · everything runs on this machine; nothing is downloaded."
    )
    _section(console, 1, "Model")
    prepared = prepare_with_progress(key, runs_dir, shrink, console)
    console.print(f"  {prepared.preset.title}")
    console.print(f"  weights: {prepared.model_path}")
    _section(console, 2, "Data")
    for line in prepared.data_lines:
        console.print(f"  {line}")
    console.print(f"  files: {prepared.data.train.parent}")
    _section(console, 3, "Plan")
    for line in prepared.plan_lines:
        console.print(f"  {line}")
    cfg = prepared.config
    console.print(
        f"  settings: LoRA r={cfg.method.lora_rank} alpha={cfg.method.lora_alpha}, "
        f"lr {cfg.training.learning_rate:g} {cfg.training.lr_scheduler}, "
        f"batch {cfg.training.micro_batch}, max length {cfg.data.max_seq_len}, "
        + (
            f"{cfg.training.max_steps} steps"
            if cfg.training.max_steps > 0
            else f"{cfg.training.epochs:g} epoch{'' if cfg.training.epochs == 1 else 's'}"
        )
    )

    run = prepare_run(cfg, runs_root=prepared.runs_root, run_id=new_run_id(f"demo-{key}"))
    rd = run.run_dir
    _section(console, 4, "Before training")
    launch_worker(rd)
    before = _wait_with_phases(
        rd,
        console,
        f"The run first evaluates the base model on {prepared.data.eval_rows} held-out rows…",
    )
    if before is not None:
        console.print(f"  base model: {_metric_line(prepared.preset.metric, before)}")
    else:
        console.print(f"  the run ended before its first evaluation: see {rd.log}")

    _section(console, 5, "Training")
    console.print(f"  run {rd.run_id} in {rd.path}")
    attach(rd, console=console)
    from affiner.runner.run import summarize

    if summarize(rd).state in ("starting", "running"):
        return 0  # detached with Ctrl-C; attach has said how to come back

    _section(console, 6, "Result")
    samples = not args.no_samples
    status = "Asking the base and the tuned model about held-out examples…"
    with console.status(status if samples else "Reading the run…"):
        result = collect_result(
            prepared, rd, wall_seconds=time.monotonic() - started, samples=samples
        )
    render_result(console, result, runs_dir)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n", "utf-8")
        console.print(f"  summary written to {args.json}")
    return 0 if result.state == "finished" else 1


def _wait_with_phases(rd: Any, console: Any, status: str) -> Any:
    """Wait for the base model's evaluation, saying which silent phase the worker is in.

    In a terminal the spinner's text follows `RunHistory.phase_line` (its countdown moves
    between events); in a file or a pipe each phase gets a flushed line when it opens, even one
    that opened and ended between two reads, so a script's log is never silent for minutes.
    """
    from affiner.runner.demo import wait_for_baseline
    from affiner.runner.run import Progress, phase_words
    from affiner.tui.live.history import RunHistory

    history = RunHistory(run_id=rd.run_id)
    opened: list[str] = []

    def follow(events: list[Any]) -> None:
        history.add(events)
        if console.is_terminal:
            line = history.phase_line(time.time())
            spinner.update(f"{status} {line}" if line else status)
            return
        for event in events:
            if isinstance(event, Progress) and (not opened or opened[-1] != event.phase):
                opened.append(event.phase)
                console.print(f"  {phase_words(event.phase, event.step)[0]}")
                console.file.flush()

    with console.status(status) as spinner:
        return wait_for_baseline(rd, on_events=follow)


def _metric_line(metric: str, event: Any) -> str:
    if metric == "accuracy":
        return (
            f"accuracy {event.accuracy:.3f} · precision {event.precision:.3f} · "
            f"recall {event.recall:.3f} · F1 {event.f1:.3f} · loss {event.loss:.4f}"
        )
    from affiner.runner.run import is_language_model

    lm = event.perplexity is not None and is_language_model([event])  # never for a class head
    ppl = f" · perplexity {event.perplexity:.1f}" if lm else ""
    return f"held-out loss {event.loss:.4f}{ppl}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_result(console: Any, result: Any, runs_dir: str | None) -> None:
    """The summary: what was trained, time, before → after, where things are, what next."""
    from rich.table import Table

    from affiner.planner.units import format_duration

    ok = "[green]met[/]" if result.goal_met else "[red]not met[/]"
    console.print(f"  trained: {result.title}")
    console.print(
        f"  run {result.run_id}: {result.state} after {result.steps} steps · training "
        f"{format_duration(result.train_seconds)}{_planned(result)} · whole demo "
        f"{format_duration(result.wall_seconds)}"
    )
    table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
    table.add_column("held-out")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for name in result.after or result.before:
        digits = 4 if name in ("loss", "perplexity") else 3
        table.add_row(
            name,
            _fmt(result.before.get(name), digits),
            f"[bold]{_fmt(result.after.get(name), digits)}[/]",
        )
    console.print(table)
    change = "" if result.change is None else f" ({result.change:+.1%} {result.metric})"
    console.print(f"  goal: {result.goal}: {ok}{change}")
    for sample in result.samples:
        console.print(f"\n  [bold]{sample.input}[/]  [dim](reference: {sample.reference})[/]")
        if sample.base is not None:
            console.print(f"    base:  {sample.base}")
        console.print(f"    tuned: {sample.tuned}")
    console.print()
    # paths and commands are printed whole (soft wrap) so that they can be copied as they are
    console.print(f"  adapter:    {result.adapter or 'not saved'}", soft_wrap=True)
    console.print(f"  model card: {result.model_card or 'not written'}", soft_wrap=True)
    runs = f" --runs-dir {runs_dir}" if runs_dir else ""
    console.print(
        f"  chat with it: `affiner{runs}` → F4 runs → open {result.run_id} → F6 chat "
        "(base and tuned side by side)",
        soft_wrap=True,
    )
    console.print(f"  its history:  `affiner{runs} attach {result.run_id}`", soft_wrap=True)


def _planned(result: Any) -> str:
    """The plan's time beside the measured one: " (planned 7 min for 250 steps)"."""
    from affiner.planner.units import format_duration

    if not result.planned_train_seconds:
        return ""
    return (
        f" (planned {format_duration(result.planned_train_seconds)} for "
        f"{result.planned_steps} steps)"
    )


def _open_tui(args: argparse.Namespace, runs_dir: str | None) -> int:
    """Make the model and data ready here, then open the assistant pre-filled with them."""

    console = _console()
    prepared = prepare_with_progress(args.task or DEFAULT_DEMO, runs_dir, _shrink(args), console)
    app = _build_demo_app(prepared, runs_dir)
    return int(app.run() or app.return_code or 0)


def _build_demo_app(prepared: Any, runs_dir: str | None) -> Any:
    from affiner.tui.app import build_app
    from affiner.tui.assistant import assistant_preset

    return build_app(runs_root=runs_dir, assistant=assistant_preset(prepared))
