"""How ``affiner plan`` prints a plan: the table of candidates with a memory bar each, the
recommendation and its reasons, what does not fit (`render_plan`), and the ``--max-seq-len``
answer in words (`longest_sequence_text`).

They live apart from the command (`affiner.tui.cli.plan`), which parses the flags and builds
the request, because drawing is one topic that grows with every column and note a plan
gains; `affiner.tui.cli.plan` imports them, so ``from affiner.tui.cli.plan import
render_plan`` works as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from affiner.planner.recommend import PlanReport
    from affiner.planner.sequence_fit import LongestSequence

BAR_WIDTH = 8


def longest_sequence_text(
    found: LongestSequence, device_name: str, plain: LongestSequence | None = None
) -> str:
    """`affiner plan --max-seq-len` in words: the answer first, then what it depends on, and
    the safety margin it kept. `plain` is the same question with padded batches and torch's
    loss, said when the levers make the answer longer or shorter."""
    from affiner.planner.units import format_bytes

    where = f"{found.method} at micro-batch {found.micro_batch} on {device_name}"
    margin = (
        f"  safety margin kept: {found.margin:.0%} of the free memory "
        f"({format_bytes(found.usable_bytes)} planned)"
    )
    if found.longest == 0:
        return f"No sequence fits {where}: the weights alone are too large.\n{margin}"
    lines = [f"{found.longest} tokens: the longest sequence that fits {where}"]
    s = found.settings
    if s is not None:
        levers = ("packed, " if s.packing else "") + f"loss kernel {s.loss_kernel}"
        lines.append(f"  optimizer {s.optimizer}, precision {s.precision}, {levers}")
    if plain is not None and plain.longest != found.longest:
        lines.append(f"  padded with torch's loss: {plain.longest} tokens")
    if found.needs_checkpointing:
        if found.without_checkpointing is None:
            lines.append("  with gradient checkpointing (as stated)")
        else:
            lines.append(
                f"  with gradient checkpointing; without it, {found.without_checkpointing} tokens"
            )
    else:
        lines.append("  without gradient checkpointing")
    if found.capped:
        lines.append("  (the model's context window: memory would allow longer)")
    lines.append(margin)
    return "\n".join(lines)


def memory_bar(used: int, total: int, width: int = BAR_WIDTH) -> str:
    """A bar of `used` against `total` in rich markup: green under 80 %, yellow to 100 %, red over."""
    share = used / total if total else 1.0
    filled = min(width, round(share * width))
    colour = "green" if share < 0.8 else ("yellow" if share <= 1.0 else "red")
    over = "+" if share > 1.0 else ""
    return f"[{colour}]{'█' * filled}[/][dim]{'░' * (width - filled)}[/]{over} {share:.0%}"


def layout_text(report: PlanReport) -> str | None:
    """The plan's multi-GPU layout in a line (None for one device): peaks are per GPU."""
    r = report.request
    if r.num_gpus <= 1:
        return None
    from affiner.planner.communication import STRATEGY_NAMES

    strategy = STRATEGY_NAMES.get(r.sharding, "DDP")
    unit = "processes" if report.device.is_cpu else "GPUs"
    where = f" on {r.nodes} nodes of {r.num_gpus // r.nodes}" if r.nodes > 1 else ""
    per = "process" if report.device.is_cpu else "GPU"
    return f"Layout: {r.num_gpus} {unit}{where} with {strategy}; every peak below is per {per}"


def render_plan(report: PlanReport, console: Console) -> None:
    from rich import box
    from rich.table import Table

    from affiner.planner.explain import METHOD_NAMES
    from affiner.planner.units import format_bytes, format_duration

    device = report.device
    kind = "RAM" if device.is_cpu else "VRAM"
    console.print(
        f"[bold]{report.spec.name}[/] on [bold]{device.name}[/]: {format_bytes(device.memory_free)} free {kind}, {format_bytes(report.usable_bytes)} planned (safety margin kept)"
    )
    layout = layout_text(report)
    if layout:
        console.print(layout, markup=False)
    table = Table(
        box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True, show_edge=False
    )
    for col in (
        "",
        "method",
        "precision",
        "optimizer",
        "batch",
        "ckpt",
        "peak (device, GiB)",
        f"of {kind}",
        "step",
    ):
        table.add_column(col, no_wrap=True, min_width=len(col) or 1)
    for i, c in enumerate(report.candidates):
        s = c.settings
        mark = "★" if i == report.recommended else ("✓" if c.fits else "✗")
        style = "bold" if i == report.recommended else ("" if c.fits else "dim")
        name = s.method + (f" r{s.lora_rank}" if s.uses_lora else "")
        table.add_row(
            mark,
            name,
            s.precision,
            s.optimizer,
            f"{s.micro_batch}x{s.grad_accum}",
            "on" if s.gradient_checkpointing else "off",
            format_bytes(c.peak_bytes),
            memory_bar(c.peak_bytes, report.usable_bytes),
            format_duration(c.time.step_seconds),
            style=style,
        )
    console.print(table)
    best = report.best
    if best is not None:
        console.print(f"[bold green]Recommended:[/] {METHOD_NAMES[best.method]}")
        for reason in best.reasons:
            console.print(f"  • {reason}")
        b = best.memory.breakdown
        console.print("  memory: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in b.items()))
        m = best.memory
        console.print(
            f"  peak (device) {format_bytes(m.peak_bytes)}; torch would show "
            f"max_memory_reserved {format_bytes(m.reserved_bytes)}, "
            f"max_memory_allocated {format_bytes(m.allocated_bytes)}"
        )
        for note in best.memory.notes:
            console.print(f"  [dim]memory: {note}[/]")
        for note in best.time.notes:
            console.print(f"  [dim]time: {note}[/]")
    else:
        console.print("[bold red]Nothing fits on this device.[/] What would:")
        for line in report.suggestions:
            console.print(f"  • {line}")
    if best is not None and report.layouts:
        console.print("[bold]Over several GPUs:[/]")
        for found in report.layouts:
            console.print(f"  • {found.text()}", markup=False)
    rejected = [c for c in report.candidates if not c.fits]
    if rejected:
        console.print("[bold]Does not fit:[/]")
        for c in rejected:
            console.print(f"  ✗ {c.reasons[0]}")
            for alt in c.alternatives:
                console.print(f"    would fit {alt.text}")
    for note in report.notes:
        console.print(f"[cyan]{note}[/]")
    console.print(
        "[dim]Peak memory and times are estimates (see `affiner plan --json` for every term).[/]"
    )
