"""The affiner application: the screens, the keys that move between them, and its services.

Screens are Textual modes installed by name, each created the first time it is shown:
``assistant`` (the first screen), ``hardware``, ``runs``, ``monitor`` and ``playground``.
Every action is a `Binding` on an F-key with a ctrl alternate (the assistant has a text
input, so plain letters are never global). Secondary commands with an argument live in the
command palette (`affiner.tui.commands`).

The app takes its collaborators as a `Services` (tests pass fakes); nothing here imports
torch or transformers, so the first screen draws in well under a second.

Public methods other screens call: `open_monitor(run_dir)`, `open_playground(run_dir)`,
`open_runs()`, `open_hardware()`, `set_plan_target(target)`; and the attribute
`plan_target` (assigning it tells every screen through `PlanTargetChanged`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen

from affiner.planner.errors import AffinerError
from affiner.planner.hardware import DeviceTarget
from affiner.tui.commands import AffinerCommands
from affiner.tui.messages import PlanTargetChanged
from affiner.tui.services import Services

SCREEN_NAMES = ("assistant", "hardware", "runs", "monitor", "playground")


class AffinerApp(App[int]):
    """The terminal assistant. See the module docstring for its screens and keys."""

    CSS_PATH = "app.tcss"
    TITLE = "affiner"
    COMMANDS = App.COMMANDS | {AffinerCommands}
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (30, "-tall")]
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "toggle_help", "Help", tooltip="Show or hide every key of this screen"),
        Binding("f2,ctrl+t", "show('assistant')", "Assist", tooltip="The guided assistant"),
        Binding("f3,ctrl+g", "show('hardware')", "Hardware", tooltip="GPUs, CPU, RAM, disk"),
        Binding("f4,ctrl+o", "show('runs')", "Runs", tooltip="Past and live runs"),
        Binding("f5,ctrl+l", "show('monitor')", "Monitor", tooltip="The open run, live"),
        Binding("f6,ctrl+y", "show('playground')", "Chat", tooltip="Chat with the tuned model"),
        Binding("ctrl+q,f10", "quit", "Quit", tooltip="Quit (training keeps running)"),
    ]

    plan_target: reactive[DeviceTarget | None] = reactive(None, init=False)
    """The device plans are made for; None means this machine's own (GPU 0, else the CPU)."""

    def __init__(
        self,
        services: Services,
        *,
        initial_run: str | os.PathLike[str] | None = None,
        assistant: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.services = services
        #: Pre-filled answers for the assistant (``affiner demo``): ``default_model``,
        #: ``default_data`` and ``settings`` (a dict of `affiner.tui.assistant.flow.Settings` fields).
        self.assistant_options = dict(assistant or {})
        self.current_run: Path | None = Path(initial_run) if initial_run else None
        self._initial_run = self.current_run
        self._screens: dict[str, Screen] = {}
        for name in SCREEN_NAMES:
            self.add_mode(name, self._factory(name))

    # -- screens --------------------------------------------------------------------------

    def _factory(self, name: str) -> Callable[[], Screen]:
        def build() -> Screen:
            screen = self._build_screen(name)
            self._screens[name] = screen
            return screen

        return build

    def _build_screen(self, name: str) -> Screen:
        """Each screen's module is imported only when the screen is first shown."""
        services = self.services
        if name == "assistant":
            from affiner.tui.screens.assistant import AssistantScreen

            options = dict(self.assistant_options)
            settings = options.pop("settings", None) or {}
            eval_path = options.pop("default_eval", "")
            screen = AssistantScreen(services, **options)
            screen.flow.eval_path = eval_path
            for field_name, value in settings.items():
                setattr(screen.flow.settings, field_name, value)
            if "learning_rate" in settings:
                screen.flow.settings.learning_rate_set = True
            return screen
        if name == "hardware":
            from affiner.tui.screens.hardware import HardwareScreen

            return HardwareScreen(services)
        if name == "runs":
            from affiner.tui.screens.runs import RunsScreen

            return RunsScreen(services)
        if name == "monitor":
            from affiner.tui.screens.monitor import MonitorScreen

            return MonitorScreen(services, run_dir=self.current_run)
        if name == "playground":
            from affiner.tui.screens.playground import PlaygroundScreen

            return PlaygroundScreen(services, run_dir=self.current_run)
        raise ValueError(f"unknown screen {name!r}")

    def on_mount(self) -> None:
        self.switch_mode("assistant")
        if self._initial_run is not None:
            self.open_monitor(self._initial_run)

    def _available(self, name: str) -> bool:
        """A screen whose module is missing from this install says so instead of crashing."""
        import importlib.util

        if importlib.util.find_spec(f"affiner.tui.screens.{name}") is not None:
            return True
        self.notify(f"The {name} screen is not part of this installation.", severity="error")
        return False

    def action_show(self, name: str) -> None:
        if not self._available(name):
            return
        if name == "monitor" and self.current_run is None:
            self.notify("No run open yet: pick one on the runs screen (F4).", timeout=3)
        self.switch_mode(name)

    def action_toggle_help(self) -> None:
        from textual.widgets import HelpPanel

        panels = self.screen.query(HelpPanel)
        if panels:
            panels.remove()
        else:
            self.action_show_help_panel()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    # -- what other screens call ----------------------------------------------------------

    def open_monitor(self, run_dir: str | os.PathLike[str]) -> None:
        """Show ``run_dir`` live in the monitor (its whole history, then new events)."""
        self.current_run = Path(run_dir)
        self.switch_mode("monitor")
        monitor = self._screens.get("monitor")
        if monitor is not None and getattr(monitor, "run_dir", None) != self.current_run:
            monitor.show_run(self.current_run)  # type: ignore[attr-defined]

    def open_playground(self, run_dir: str | os.PathLike[str] | None = None) -> None:
        """Chat with a run's tuned model (and its base model) in the playground."""
        if run_dir is not None:
            self.current_run = Path(run_dir)
        if not self._available("playground"):
            return
        self.switch_mode("playground")
        playground = self._screens.get("playground")
        show = getattr(playground, "show_run", None)
        if (
            run_dir is not None
            and callable(show)
            and getattr(playground, "run_dir", None) != self.current_run
        ):
            show(self.current_run)

    def open_runs(self) -> None:
        self.switch_mode("runs")

    def open_hardware(self) -> None:
        self.switch_mode("hardware")

    def set_plan_target(self, target: DeviceTarget | None) -> None:
        self.plan_target = target

    def plan_as_if(self, name: str) -> None:
        """Plan for a catalog GPU by name (from the command palette)."""
        try:
            target = self.services.catalog_target(name)
        except AffinerError as error:
            self.notify(str(error), severity="error")
            return
        self.plan_target = target
        self.notify(f"Plans are now made as if for a {target.name}.", timeout=3)

    def watch_plan_target(self, target: DeviceTarget | None) -> None:
        """Tell every screen: the assistant re-plans, the hardware picker follows."""
        for screen in self._screens.values():
            screen.post_message(PlanTargetChanged(target))


def build_app(
    services: Services | None = None,
    *,
    runs_root: str | os.PathLike[str] | None = None,
    initial_run: str | os.PathLike[str] | None = None,
    assistant: dict[str, Any] | None = None,
) -> AffinerApp:
    """The one way the CLI and the tests make the app: real services unless given fakes.

    `assistant` pre-fills the guided assistant (see `AffinerApp.assistant_options`).
    """
    return AffinerApp(
        services or Services.default(runs_root), initial_run=initial_run, assistant=assistant
    )


def run_app(args: argparse.Namespace | None = None) -> int:
    """Run the TUI until the user quits (``affiner`` with no subcommand). Returns the exit code."""
    runs_dir = getattr(args, "runs_dir", None)
    run = getattr(args, "run", None)
    if run:
        from affiner.runner.run import resolve_run

        run = resolve_run(str(run), runs_dir).path
    app = build_app(runs_root=runs_dir, initial_run=run)
    result = app.run()
    return int(result or app.return_code or 0)
