"""The hardware screen: what this machine has, and a picker to plan "as if" for another GPU.

Each GPU gets a memory gauge (green, yellow, red as it fills), its compute capability,
bf16 support, temperature, power, utilisation and the processes holding its memory; then
the CPU, RAM and the disk the runs are written to. With no GPU it says why, in words a
person can act on. The probe runs in a thread worker and re-arms after it finishes (no
overlapping probes), only while the screen is shown; a reading the driver refuses is "N/A".
"""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Label, Select, Static

from affiner.planner.errors import AffinerError
from affiner.planner.hardware import GpuInfo, HardwareReport
from affiner.planner.units import format_bytes
from affiner.tui.messages import HardwareRead, PlanTargetChanged
from affiner.tui.widgets.gauge import Gauge

#: The picker's value for "plan for this machine".
THIS_MACHINE = "__this_machine__"


def gpu_summary(gpu: GpuInfo) -> str:
    """``GPU 0  NVIDIA H100 80GB HBM3  cc 9.0  bf16 yes  41°C  120/700 W  util 35%``."""
    cc = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "N/A"
    temp = f"{gpu.temperature_c}°C" if gpu.temperature_c is not None else "N/A °C"
    if gpu.power_w is None:
        power = "N/A W"
    elif gpu.power_limit_w:
        power = f"{gpu.power_w:.0f}/{gpu.power_limit_w:.0f} W"
    else:
        power = f"{gpu.power_w:.0f} W"
    util = f"{gpu.utilization_percent}%" if gpu.utilization_percent is not None else "N/A"
    bf16 = "yes" if gpu.bf16 else "no"
    return f"GPU {gpu.index}  {gpu.name}  cc {cc}  bf16 {bf16}  {temp}  {power}  util {util}"


def holders_line(gpu: GpuInfo) -> str:
    """Who holds the GPU's memory, biggest first (``1234 python 40.0 GiB``)."""
    if not gpu.processes:
        return "  no processes hold memory"
    ordered = sorted(gpu.processes, key=lambda p: p.used_bytes or 0, reverse=True)
    shown = [f"{p.pid} {p.name} {format_bytes(p.used_bytes)}" for p in ordered[:3]]
    more = f" (+{len(ordered) - 3} more)" if len(ordered) > 3 else ""
    return "  held by " + ", ".join(shown) + more


def host_lines(report: HardwareReport) -> list[str]:
    cpu = report.cpu
    cores = f"{cpu.physical_cores or 'N/A'} cores / {cpu.logical_cores} threads"
    lines = [f"CPU  {cpu.model}  {cores}  bf16 {'yes' if cpu.bf16 else 'no'}"]
    if report.driver_version or report.cuda_driver_version:
        lines.append(
            f"Driver {report.driver_version or 'N/A'}  CUDA {report.cuda_driver_version or 'N/A'}"
        )
    return lines


class GpuCard(Vertical):
    """One GPU: its summary line, memory and utilisation gauges, and who holds its memory."""

    DEFAULT_CSS = """
    GpuCard { height: auto; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(classes="hw-gpu", **kwargs)  # type: ignore[arg-type]
        self.title = Static(classes="hw-gpu-title")
        self.memory = Gauge("memory", classes="hw-gpu-memory")
        self.util = Gauge("util", as_bytes=False, classes="hw-gpu-util")
        self.holders = Static(classes="hw-gpu-holders")

    def compose(self) -> ComposeResult:
        yield self.title
        yield self.memory
        yield self.util
        yield self.holders

    def show(self, gpu: GpuInfo) -> None:
        self.title.update(gpu_summary(gpu))
        self.memory.set_reading(gpu.memory_used, gpu.memory_total)
        self.util.set_reading(gpu.utilization_percent, 100)
        self.holders.update(holders_line(gpu))


class HardwareScreen(Screen):
    """GPUs, CPU, RAM and disk, refreshed while shown; the "plan as if" picker."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r,f9", "refresh", "Refresh"),
        Binding("p", "pick_gpu", "Plan as if…"),
    ]

    def __init__(self, services: object, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.services = services
        self.report: HardwareReport | None = None
        self._shown_at_least_once = False
        self._active = False
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="hw-body"):
            yield Static("Looking at this machine…", id="hw-gpu-reason")
            yield Vertical(id="hw-gpus")
            yield Static(id="hw-host")
            yield Gauge("RAM", id="hw-ram")
            yield Gauge("Disk", id="hw-disk")
            yield Static(id="hw-disk-path")
        with Horizontal(id="hw-plan"):
            yield Label("Plan as if:", id="hw-plan-label")
            yield Select(
                self._catalog_options(), value=THIS_MACHINE, allow_blank=False, id="hw-target"
            )
        yield Footer(compact=True)

    def _catalog_options(self) -> list[tuple[str, str]]:
        options = [("this machine", THIS_MACHINE)]
        try:
            names = list(self.services.gpu_catalog())  # type: ignore[attr-defined]
        except (ImportError, AffinerError):
            names = []
        return options + [(name, name) for name in names]

    # -- polling --------------------------------------------------------------------------

    def on_screen_resume(self) -> None:
        self._active = True
        self._probe()

    def on_screen_suspend(self) -> None:
        self._active = False

    def action_refresh(self) -> None:
        self._probe()

    @work(thread=True, exclusive=True, group="hardware", name="probe-hardware", exit_on_error=False)
    def _probe(self) -> None:
        try:
            report = self.services.probe_hardware()  # type: ignore[attr-defined]
        except Exception as error:  # a probe must never take the screen down
            self.post_message(HardwareRead(report=None, error=f"{type(error).__name__}: {error}"))
            return
        self.post_message(HardwareRead(report=report))

    @on(HardwareRead)
    def _read(self, message: HardwareRead) -> None:
        if message.report is not None:
            self.report = message.report
            self._draw(message.report)
        elif message.error:
            self.query_one("#hw-gpu-reason", Static).update(
                f"Could not read the hardware: {message.error}"
            )
        if self._active:
            interval = getattr(self.services, "hardware_poll_seconds", 3.0)
            # One pending re-poll at most, however many refreshes were asked for.
            if self._timer is not None:
                self._timer.stop()
            self._timer = self.set_timer(interval, self._rearm, name="hardware-poll")

    def _rearm(self) -> None:
        if self._active:
            self._probe()

    # -- drawing --------------------------------------------------------------------------

    def _draw(self, report: HardwareReport) -> None:
        reason = self.query_one("#hw-gpu-reason", Static)
        if report.gpus:
            reason.update(report.gpu_reason or "")
            reason.set_class(not report.gpu_reason, "-hidden")
        else:
            reason.set_class(False, "-hidden")
            reason.update(f"No GPU: {report.gpu_reason or 'none found'}. Plans use the CPU.")
        self._draw_gpus(report)
        self.query_one("#hw-host", Static).update("\n".join(host_lines(report)))
        ram_used = report.ram_total - report.ram_available
        self.query_one("#hw-ram", Gauge).set_reading(ram_used, report.ram_total)
        disk_used = report.disk_total - report.disk_free
        self.query_one("#hw-disk", Gauge).set_reading(disk_used or None, report.disk_total or None)
        self.query_one("#hw-disk-path", Static).update(
            f"Runs folder {report.disk_path}: {format_bytes(report.disk_free)} free"
        )

    def _draw_gpus(self, report: HardwareReport) -> None:
        box = self.query_one("#hw-gpus", Vertical)
        cards = list(box.query(GpuCard).results(GpuCard))
        if len(cards) != len(report.gpus):
            box.remove_children()
            cards = [GpuCard(id=f"hw-gpu-{gpu.index}") for gpu in report.gpus]
            box.mount_all(cards)
        for card, gpu in zip(cards, report.gpus, strict=True):
            card.show(gpu)

    # -- plan as if -----------------------------------------------------------------------

    def action_pick_gpu(self) -> None:
        select = self.query_one("#hw-target", Select)
        select.focus()
        select.action_show_overlay()

    @on(Select.Changed, "#hw-target")
    def _target_picked(self, event: Select.Changed) -> None:
        name = event.value
        if name in (THIS_MACHINE, Select.BLANK):
            self.app.set_plan_target(None)  # type: ignore[attr-defined]
            return
        try:
            target = self.services.catalog_target(str(name))  # type: ignore[attr-defined]
        except AffinerError as error:
            self.notify(str(error), severity="error")
            return
        self.app.set_plan_target(target)  # type: ignore[attr-defined]
        self.notify(f"Plans are now made as if for a {target.name}.", timeout=3)

    @on(PlanTargetChanged)
    def _target_changed(self, message: PlanTargetChanged) -> None:
        """Keep the picker in step when the target changes elsewhere (the command palette)."""
        select = self.query_one("#hw-target", Select)
        wanted = THIS_MACHINE if message.target is None else message.target.name
        values = {value for _, value in self._catalog_options()}
        if wanted in values and select.value != wanted:
            with select.prevent(Select.Changed):
                select.value = wanted
