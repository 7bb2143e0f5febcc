"""The hardware screen: what this machine has, how busy it is, and what plans are made for.

One sentence on top says which device plans assume now (GPU 0, the CPU, or a catalog GPU
picked here with p) and how to change it. Each GPU gets a memory gauge (green, yellow, red
as it fills), a utilisation gauge and the processes holding its memory with their CPU use
and resident memory, as nvitop lists them; then the CPU's use and load average, the
busiest processes, RAM and the runs disk: enough to see why a pre-flight ran slower than
predicted (another process had the CPU or the GPU). Last, the catalog GPUs a plan can
assume, with their memory. With no GPU it says why, in words a person can act on.

The probe and the load reading run in one thread worker that re-arms after it finishes
(no overlapping polls), every `Services.hardware_poll_seconds`, only while the screen is
shown; a reading the driver or the OS refuses is "N/A".
"""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Label, Select, Static

from affiner.planner.errors import AffinerError
from affiner.planner.hardware import DeviceTarget, GpuInfo, HardwareReport, HostLoad
from affiner.planner.units import format_bytes
from affiner.tui.messages import HardwareRead, PlanTargetChanged
from affiner.tui.screens.hardware_text import (
    busiest_lines,
    catalog_lines,
    gpu_summary,
    holders_line,
    host_lines,
    load_average_text,
    no_gpu_reason,
    plan_sentence,
)
from affiner.tui.widgets.gauge import Gauge

__all__ = [
    "COMPACT_FROM",
    "THIS_MACHINE",
    "GpuCard",
    "HardwareScreen",
    "gpu_summary",
    "holders_line",
]

#: The picker's value for "plan for this machine".
THIS_MACHINE = "__this_machine__"


#: From this many GPUs on, each card puts its two gauges on one line (``-compact``): eight
#: GPUs then take four lines each instead of five, as nvitop folds its panel on a full box.
COMPACT_FROM = 4


class GpuCard(Vertical):
    """One GPU: its summary line, memory and utilisation gauges, and who holds its memory."""

    DEFAULT_CSS = """
    GpuCard { height: auto; }
    GpuCard > .hw-gpu-gauges { height: auto; layout: vertical; }
    GpuCard.-compact > .hw-gpu-gauges { layout: horizontal; }
    GpuCard.-compact .hw-gpu-memory { width: 3fr; }
    GpuCard.-compact .hw-gpu-util { width: 2fr; margin-left: 2; }
    """

    def __init__(self, *, compact: bool = False, **kwargs: object) -> None:
        classes = "hw-gpu -compact" if compact else "hw-gpu"
        super().__init__(classes=classes, **kwargs)  # type: ignore[arg-type]
        self.title = Static(classes="hw-gpu-title")
        self.memory = Gauge("memory", classes="hw-gpu-memory")
        # beside the memory gauge, the label needs no padding to line up with it
        width = 4 if compact else 8
        self.util = Gauge("util", as_bytes=False, label_width=width, classes="hw-gpu-util")
        self.holders = Static(classes="hw-gpu-holders")

    def compose(self) -> ComposeResult:
        yield self.title
        with Container(classes="hw-gpu-gauges"):
            yield self.memory
            yield self.util
        yield self.holders

    def show(self, gpu: GpuInfo, load: HostLoad | None = None) -> None:
        self.title.update(gpu_summary(gpu))
        self.memory.set_reading(gpu.memory_used, gpu.memory_total)
        self.util.set_reading(gpu.utilization_percent, 100)
        self.holders.update(holders_line(gpu, load))


class HardwareScreen(Screen):
    """This machine's GPUs, CPU, RAM and disk with their live load, and what plans assume.

    Press p to plan as if for a catalog GPU (or for this machine again); the assistant
    re-plans at once. The readings refresh every two seconds while the screen is shown.
    """

    HELP = (
        "This machine's GPUs (memory, use, and the processes holding them), the CPU's use "
        "and load with the busiest processes, RAM and the runs disk, refreshed every two "
        "seconds. The first line says what plans are made for; p plans as if for a catalog "
        "GPU from the list at the bottom, with its memory."
    )

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "p",
            "pick_gpu",
            "Plan as if…",
            tooltip="Pick a catalog GPU; the assistant re-plans for it",
        ),
        # Readings refresh by themselves every two seconds: the key is in the help only.
        Binding("ctrl+r,f9", "refresh", "Read the hardware again now", show=False),
    ]

    def __init__(self, services: object, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.services = services
        self.report: HardwareReport | None = None
        self.load: HostLoad | None = None
        self._active = False
        self._timer: Timer | None = None
        self._catalog: list[tuple[str, DeviceTarget | None]] | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="hw-body"):
            yield Static(plan_sentence(None, None), id="hw-plan-for")
            yield Static("", id="hw-gpu-reason", classes="-hidden")
            yield Vertical(id="hw-gpus")
            yield Static(id="hw-host")
            yield Gauge("CPU use", as_bytes=False, id="hw-cpu")
            yield Static("load N/A", id="hw-load")
            yield Gauge("RAM", id="hw-ram")
            yield Gauge("Disk", id="hw-disk")
            yield Static(id="hw-disk-path")
            yield Static("Busiest processes (CPU; 100% is one core)", classes="hw-heading")
            yield Static("  reading…", id="hw-busiest")
            yield Static("Catalog GPUs a plan can assume (p)", classes="hw-heading")
            yield Static("\n".join(catalog_lines(self.catalog())), id="hw-catalog")
        with Horizontal(id="hw-plan"):
            yield Label("Plan as if:", id="hw-plan-label")
            yield Select(
                self._catalog_options(), value=THIS_MACHINE, allow_blank=False, id="hw-target"
            )
        yield Footer(compact=True)

    def catalog(self) -> list[tuple[str, DeviceTarget | None]]:
        """Every catalog GPU with its target (for the memory), read once."""
        if self._catalog is None:
            try:
                names = list(self.services.gpu_catalog())  # type: ignore[attr-defined]
            except (ImportError, AffinerError):
                names = []
            entries: list[tuple[str, DeviceTarget | None]] = []
            for name in names:
                try:
                    entries.append((name, self.services.catalog_target(name)))  # type: ignore[attr-defined]
                except AffinerError:
                    entries.append((name, None))
            self._catalog = entries
        return self._catalog

    def _catalog_options(self) -> list[tuple[str, str]]:
        return [("this machine", THIS_MACHINE)] + [(name, name) for name, _ in self.catalog()]

    # -- polling --------------------------------------------------------------------------

    def on_screen_resume(self) -> None:
        self._active = True
        self._show_plan_sentence()
        self._probe()

    def on_screen_suspend(self) -> None:
        self._active = False

    def action_refresh(self) -> None:
        self._probe()

    @work(thread=True, exclusive=True, group="hardware", name="probe-hardware", exit_on_error=False)
    def _probe(self) -> None:
        services = self.services
        report: HardwareReport | None = None
        error: str | None = None
        try:
            report = services.probe_hardware()  # type: ignore[attr-defined]
        except Exception as exc:  # a probe must never take the screen down
            error = f"{type(exc).__name__}: {exc}"
        load: HostLoad | None = None
        load_error: str | None = None
        read_load = getattr(services, "read_load", None)
        if read_load is not None:
            try:
                load = read_load()
            except Exception as exc:  # psutil refusing must not hide the hardware
                load_error = f"{type(exc).__name__}: {exc}"
        self.post_message(HardwareRead(report, error, load=load, load_error=load_error))

    @on(HardwareRead)
    def _read(self, message: HardwareRead) -> None:
        if message.load is not None:
            self.load = message.load
        if message.report is not None:
            self.report = message.report
            self._draw(message.report)
        elif message.error:
            reason = self.query_one("#hw-gpu-reason", Static)
            reason.update(f"Could not read the hardware: {message.error}")
            reason.set_class(False, "-hidden")
        self._draw_load(message.load_error)
        if self._active:
            interval = getattr(self.services, "hardware_poll_seconds", 2.0)
            # One pending re-poll at most, however many refreshes were asked for.
            if self._timer is not None:
                self._timer.stop()
            self._timer = self.set_timer(interval, self._rearm, name="hardware-poll")

    def _rearm(self) -> None:
        if self._active:
            self._probe()

    # -- drawing --------------------------------------------------------------------------

    def _show_plan_sentence(self) -> None:
        target = getattr(self.app, "plan_target", None)
        self.query_one("#hw-plan-for", Static).update(plan_sentence(self.report, target))

    def _draw(self, report: HardwareReport) -> None:
        self._show_plan_sentence()
        reason = self.query_one("#hw-gpu-reason", Static)
        if report.gpus:
            # Some GPUs read, others not: say which could not be.
            reason.update(report.gpu_reason or "")
            reason.set_class(not report.gpu_reason, "-hidden")
        else:
            # Why, without the CLI's advice: the sentence above says what plans use instead.
            reason.update(f"No GPU: {no_gpu_reason(report)}.")
            reason.set_class(False, "-hidden")
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
            compact = len(report.gpus) >= COMPACT_FROM
            cards = [GpuCard(id=f"hw-gpu-{gpu.index}", compact=compact) for gpu in report.gpus]
            box.mount_all(cards)
        for card, gpu in zip(cards, report.gpus, strict=True):
            card.show(gpu, self.load)

    def _draw_load(self, error: str | None) -> None:
        load = self.load
        cpu = self.query_one("#hw-cpu", Gauge)
        busiest = self.query_one("#hw-busiest", Static)
        if load is None:
            cpu.set_reading(None, 100)
            if error:
                busiest.update(f"  CPU load N/A: {error}")
            elif getattr(self.services, "read_load", None) is None:
                busiest.update("  not read (this app was started without a load reader)")
            else:
                busiest.update("  reading…")
            return
        cpu.set_reading(load.cpu_percent, 100)
        self.query_one("#hw-load", Static).update(load_average_text(load))
        busiest.update("\n".join(busiest_lines(load)))

    # -- plan as if -----------------------------------------------------------------------

    def action_pick_gpu(self) -> None:
        select = self.query_one("#hw-target", Select)
        select.focus()
        select.action_show_overlay()

    @on(Select.Changed, "#hw-target")
    def _target_picked(self, event: Select.Changed) -> None:
        name = event.value
        if name in (THIS_MACHINE, Select.BLANK):
            if getattr(self.app, "plan_target", None) is not None:
                self.notify("Plans are made for this machine again.", timeout=3)
            self.app.set_plan_target(None)  # type: ignore[attr-defined]
            return
        try:
            target = self.services.catalog_target(str(name))  # type: ignore[attr-defined]
        except AffinerError as error:
            self.notify(str(error), severity="error")
            return
        self.app.set_plan_target(target)  # type: ignore[attr-defined]
        self.notify(
            f"Plans are now made as if for the catalog GPU {target.name} "
            f"({format_bytes(target.memory_total)}).",
            timeout=3,
        )

    @on(PlanTargetChanged)
    def _target_changed(self, message: PlanTargetChanged) -> None:
        """Keep the picker and the sentence in step when the target changes elsewhere."""
        select = self.query_one("#hw-target", Select)
        wanted = THIS_MACHINE if message.target is None else message.target.name
        values = {value for _, value in self._catalog_options()}
        if wanted in values and select.value != wanted:
            with select.prevent(Select.Changed):
                select.value = wanted
        target = message.target
        self.query_one("#hw-plan-for", Static).update(plan_sentence(self.report, target))
