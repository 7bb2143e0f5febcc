"""``affiner hw``: what this machine has for fine-tuning, for people (tables) and scripts (JSON).

Kept light on purpose: ``affiner hw --json`` imports neither torch, transformers nor
Textual, and never measures CPU throughput, so scripts and the SSH prompt get an answer in
well under a second. rich is imported only when tables are drawn. The one exception is asked
for by name: ``--remeasure-cpu`` times the CPU's matmul rate again (torch, about 1 s) and
measures the training process's baseline memory again (a child process that loads the
runner's libraries, 5-10 s), replacing the cached figures CPU plans use, e.g. after one was
measured on a busy machine or the libraries were upgraded.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from affiner.planner.units import format_bytes, format_bytes_of
from affiner.tui.cli.tables import house_table

if TYPE_CHECKING:
    from rich.console import Console

    from affiner.planner.hardware import CpuThroughput, GpuInfo, GpuModel, HardwareReport

BAR_WIDTH = 16
#: Memory-used fractions where a bar turns yellow, then red. The question here is "is there
#: room to train", so a half-full card is already worth a look.
WARN_AT, FULL_AT = 0.5, 0.8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hw",
        help="show the GPUs, CPU, RAM and disk affiner plans for",
        description="Show every NVIDIA GPU (memory in use, compute capability, bf16, driver, "
        "temperature, power, the processes holding memory), the CPU, RAM and the disk where "
        "runs are written. With no GPU, says why and that plans will be for the CPU.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--gpu",
        metavar="NAME",
        help="also show the catalog GPU NAME that plans would assume (e.g. 4090, a100-80)",
    )
    parser.add_argument(
        "--catalog", action="store_true", help="list the GPUs affiner knows and their figures"
    )
    add_remeasure_flag(parser)
    parser.set_defaults(func=run_hw)


def add_remeasure_flag(parser: argparse.ArgumentParser) -> None:
    """``--remeasure-cpu``, shared with ``affiner plan``."""
    parser.add_argument(
        "--remeasure-cpu",
        action="store_true",
        help="time this CPU's matmul rate again (about 1 s, needs torch) and measure the "
        "training process's baseline memory again (5-10 s), replacing the cached figures "
        "that CPU plans use",
    )


def remeasure_cpu(cpu: Any, *, to_stderr: bool) -> dict[str, Any]:
    """Measure the CPU again, say ``old → new`` (on stderr when stdout carries JSON).

    Returns:
        ``{"before": ..., "after": ..., "process_baseline": {"before": ..., "after": ...}}``:
        the matmul figures and the process baselines as JSON (before is None when nothing
        was cached, after when nothing could be measured).
    """
    from affiner.planner.hardware import process_baseline as pb
    from affiner.planner.hardware import remeasure_cpu_tflops, remeasure_message

    before, after = remeasure_cpu_tflops(cpu)
    base_before, base_after = pb.remeasure_process_baseline(cpu)
    for line in (remeasure_message(before, after), pb.remeasure_message(base_before, base_after)):
        if to_stderr:
            sys.stderr.write(line + "\n")
        else:
            _console().print(line, markup=False)
    return {
        "before": before.to_json() if before else None,
        "after": after.to_json() if after else None,
        "process_baseline": {
            "before": base_before.to_json() if base_before else None,
            "after": base_after.to_json() if base_after else None,
        },
    }


def run_hw(args: argparse.Namespace) -> int:
    """Probe and print. Exit 0 also with no GPU: that is information, not an error."""
    from affiner.planner.hardware import CATALOG, lookup

    if args.catalog:
        if args.json:
            _print_json([model.to_json() for model in CATALOG])
        else:
            _console().print(catalog_table(CATALOG))
        return 0
    model = lookup(args.gpu) if args.gpu else None  # an unknown name fails before probing

    from affiner.planner.hardware import probe
    from affiner.planner.locations import runs_root

    report = probe(runs_dir=runs_root())
    remeasured = remeasure_cpu(report.cpu, to_stderr=args.json) if args.remeasure_cpu else None
    if args.json:
        data: dict[str, Any] = report.to_json()
        if model is not None:
            from affiner.planner.hardware import target_from_catalog

            data["target"] = target_from_catalog(args.gpu).to_json()
        if remeasured is not None:
            data["process_baseline"] = remeasured.pop("process_baseline")
            data["cpu_throughput"] = remeasured
        _print_json(data)
        return 0
    if remeasured is not None:
        _console().print()
    render_report(report, _console(), catalog_gpu=model)
    return 0


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _na(value: Any, unit: str = "") -> str:
    return "N/A" if value is None else f"{value}{unit}"


def usage_colour(fraction: float) -> str:
    """green / yellow / red, as nvitop colours a memory gauge."""
    if fraction >= FULL_AT:
        return "red"
    if fraction >= WARN_AT:
        return "yellow"
    return "green"


def memory_bar(used: int, total: int, width: int = BAR_WIDTH) -> str:
    """A rich-markup gauge: ``[green]████░░░░[/] 12.0/80.0 GiB``."""
    if total <= 0:
        return "N/A"
    fraction = min(max(used / total, 0.0), 1.0)
    filled = round(fraction * width)
    colour = usage_colour(fraction)
    bar = "█" * filled + "[dim]" + "░" * (width - filled) + "[/dim]"
    return f"[{colour}]{bar}[/{colour}] {format_bytes_of(used, total)}"


def _power(gpu: GpuInfo) -> str:
    def watts(value: float | None) -> str:
        return "N/A" if value is None else f"{value:.0f}"

    if gpu.power_w is None and gpu.power_limit_w is None:
        return "N/A"
    return f"{watts(gpu.power_w)}/{watts(gpu.power_limit_w)} W"


def _yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[yellow]no[/yellow]"


def short_name(name: str) -> str:
    """``NVIDIA GeForce RTX 4090`` -> ``RTX 4090``: the brand words cost columns at 80x24."""
    for prefix in ("NVIDIA ", "GeForce "):
        name = name.removeprefix(prefix)
    return name


def gpu_table(report: HardwareReport) -> Any:
    """One row a GPU: name over its memory gauge, then the readings (fits 80 columns)."""

    driver = f"driver {_na(report.driver_version)} · CUDA {_na(report.cuda_driver_version)}"
    table = house_table(f"GPUs ({driver})")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("GPU / memory used", no_wrap=True)
    for column in ("CC", "bf16", "util", "temp", "power"):
        table.add_column(column, justify="right", no_wrap=True)
    for gpu in report.gpus:
        cc = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "N/A"
        gauge = memory_bar(gpu.memory_used, gpu.memory_total, width=12)
        if gpu.memory_total > 0:
            gauge += f", {format_bytes(gpu.memory_free)} free"
        table.add_row(
            str(gpu.index),
            f"[bold]{short_name(gpu.name)}[/bold]\n{gauge}",
            cc,
            _yes(gpu.bf16),
            _na(gpu.utilization_percent, "%"),
            _na(gpu.temperature_c, "°C"),
            _power(gpu),
        )
    return table


def process_table(report: HardwareReport) -> Any | None:
    """Every GPU with the processes holding its memory, biggest first, as nvitop lists them.

    A GPU without one says so in its row, so eight GPUs read as eight groups, never as a list
    that silently skips the idle ones; one whose memory is in use with no process listed
    (another container's) says that instead. None when there is no GPU.
    """
    from rich.markup import escape

    from affiner.tui.screens.hardware_text import hidden_holders, processes_by_memory

    if not report.gpus:
        return None
    table = house_table("Processes holding GPU memory")
    table.add_column("GPU", justify="right", no_wrap=True)
    table.add_column("PID", justify="right", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("memory", justify="right", no_wrap=True)
    for gpu in report.gpus:
        processes = processes_by_memory(gpu)
        if not processes:
            if hidden_holders(gpu):
                words = "[yellow]none listed (hidden from this container?)[/yellow]"
                table.add_row(str(gpu.index), "", words, "", format_bytes(gpu.memory_used))
            else:
                table.add_row(str(gpu.index), "", "[dim]no processes hold memory[/dim]", "", "")
            continue
        for number, proc in enumerate(processes):
            table.add_row(
                str(gpu.index) if number == 0 else "",
                str(proc.pid),
                escape(proc.name) if proc.name else "N/A",
                proc.kind,
                format_bytes(proc.used_bytes),
            )
    return table


def cpu_rate_line(speed: CpuThroughput | None) -> str:
    """The cached CPU matmul rate CPU plans use, or how to get one (read only, never measured)."""
    if speed is None:
        return "[dim]not measured yet: a CPU plan times it once, or --remeasure-cpu now[/dim]"
    if not speed.measured:
        return f"{speed.describe()} [dim](estimated)[/dim]"
    if speed.provisional:
        return (
            f"{speed.describe()} [yellow](provisional: measured with load "
            f"{speed.load_average} on {speed.cpu_count} CPUs)[/yellow]"
        )
    return f"{speed.describe()} [dim](measured)[/dim]"


def machine_table(report: HardwareReport, cpu_rate: CpuThroughput | None = None) -> Any:
    cpu = report.cpu
    table = house_table("Machine", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    cores = f"{_na(cpu.physical_cores)} physical, {cpu.logical_cores} logical"
    clock = f", {cpu.clock_mhz / 1000:.2f} GHz" if cpu.clock_mhz else ""
    table.add_row("CPU", f"{cpu.model} ({cores}{clock})")
    table.add_row(
        "CPU bf16", _yes(cpu.bf16) + (f"  [dim]{' '.join(cpu.flags)}[/dim]" if cpu.flags else "")
    )
    table.add_row("CPU matmul", cpu_rate_line(cpu_rate))
    ram_used = report.ram_total - report.ram_available
    table.add_row(
        "RAM",
        memory_bar(ram_used, report.ram_total)
        + f", {format_bytes(report.ram_available)} available",
    )
    disk_used = report.disk_total - report.disk_free
    table.add_row(
        "Disk",
        memory_bar(disk_used, report.disk_total)
        + f", {format_bytes(report.disk_free)} free at {report.disk_path}",
    )
    return table


def catalog_table(
    models: tuple[GpuModel, ...] | list[GpuModel], title: str = "GPU catalog (dense TFLOP/s)"
) -> Any:
    """Catalog GPUs; --gpu takes any name shown (or a looser spelling of it)."""
    table = house_table(title)
    for column in ("name", "memory", "CC", "bf16", "fp16", "fp32", "GB/s"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for model in models:
        table.add_row(
            model.name,
            format_bytes(model.memory),
            ".".join(map(str, model.compute_capability)),
            _na(model.tflops_bf16),
            _na(model.tflops_fp16),
            f"{model.tflops_fp32:.1f}",
            f"{model.bandwidth_gbs:g}",
        )
    return table


def render_report(
    report: HardwareReport, console: Console, *, catalog_gpu: GpuModel | None = None
) -> None:
    """Everything `affiner hw` shows, in the order a person scans it."""
    from affiner.tui.screens.hardware_text import hidden_holders, no_holders_text

    if report.gpus:
        console.print(gpu_table(report))
        processes = process_table(report)
        if processes is not None:
            console.print()
            console.print(processes)
        for gpu in report.gpus:
            if hidden_holders(gpu):
                console.print(f"[yellow]note:[/yellow] GPU {gpu.index}: {no_holders_text(gpu)}")
    else:
        console.print(f"[yellow]No GPU:[/yellow] {report.gpu_reason or 'none found'}")
    from affiner.planner.hardware import cached_cpu_tflops

    console.print()
    console.print(machine_table(report, cached_cpu_tflops(report.cpu)))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if catalog_gpu is not None:
        console.print()
        console.print(catalog_table([catalog_gpu], title="Plans with --gpu assume (dense TFLOP/s)"))
