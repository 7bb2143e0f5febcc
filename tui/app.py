"""The affiner application: the screens, the keys that move between them, and its services.

Screens are Textual modes installed by name, each created the first time it is shown:
``assistant`` (the first screen), ``hardware``, ``runs``, ``monitor`` and ``playground``.
Every action is a `Binding` on an F-key with a ctrl alternate (the assistant has a text
input, so plain letters are never global); ctrl+l stays the terminal's redraw. F1 opens the
help of the screen shown (`affiner.tui.screens.help`). Secondary commands with an argument
live in the command palette (`affiner.tui.commands`); Textual's own "Keys" and "Screenshot"
commands are replaced by F1's help and a screenshot that says where it saved.

The footer keeps the screen keys F1-F6 at its left on every screen, whatever the screen's
own keys: they are one `Binding.Group` (`NAV`) whose keys carry their names, placed first
by ``app.tcss``; the screen's keys follow in what room is left.

Quitting leaves training running (a run is its own process): the exit message says which
runs go on and how to come back, and opening the app again points at a live run.

The app takes its collaborators as a `Services` (tests pass fakes); nothing here imports
torch or transformers, so the first screen draws in well under a second.

Public methods other screens call: `open_monitor(run_dir)`, `open_playground(run_dir)`,
`open_runs()`, `open_hardware()`, `set_plan_target(target)`; and the attribute
`plan_target` (assigning it tells every screen through `PlanTargetChanged`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen

from affiner.planner.errors import AffinerError
from affiner.planner.hardware import DeviceTarget
from affiner.planner.units import format_bytes
from affiner.tui.commands import AffinerCommands
from affiner.tui.messages import PlanTargetChanged
from affiner.tui.services import Services

SCREEN_NAMES = ("assistant", "hardware", "runs", "monitor", "playground")


#: The footer's screen keys: one group, so ``app.tcss`` can place them first (see the module doc).
NAV = Binding.Group("", compact=True)

#: Keys Textual binds itself that the help lists with the app's (as `BindingType`s).
TEXTUAL_KEYS: tuple[Binding, ...] = (
    Binding("ctrl+c", "help_quit", "Copy the selected text (quit is ctrl+q)"),
)

#: What each mode is called in the help's title.
SCREEN_TITLES = {
    "assistant": "Assistant",
    "hardware": "Hardware",
    "runs": "Runs",
    "monitor": "Monitor",
    "playground": "Chat",
}


def _nav(keys: str, action: str, name: str, tooltip: str) -> Binding:
    """A screen key in `NAV`. A grouped footer key shows only its key, so the key shows its
    name too (``f2 Assist``); the help writes keys its own way and is not affected."""
    first = keys.split(",")[0]
    return Binding(keys, action, name, key_display=f"{first} {name}", tooltip=tooltip, group=NAV)


class AffinerApp(App[int]):
    """The terminal assistant. See the module docstring for its screens and keys."""

    CSS_PATH = "app.tcss"
    TITLE = "affiner"
    COMMANDS = App.COMMANDS | {AffinerCommands}
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (30, "-tall")]
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        _nav("f1", "help", "Help", "What this screen shows, its keys, what to type"),
        _nav("f2,ctrl+t", "show('assistant')", "Assist", "The guided assistant"),
        _nav("f3,ctrl+g", "show('hardware')", "Hardware", "GPUs, CPU, RAM, disk and their load"),
        _nav("f4,ctrl+o", "show('runs')", "Runs", "Past and live runs"),
        _nav("f5,ctrl+f", "show('monitor')", "Monitor", "The open run, live"),
        _nav("f6,ctrl+y", "show('playground')", "Chat", "Chat with the tuned model"),
        # In the help, not the footer: ctrl+q is every Textual app's quit, and 80 columns
        # are kept for the screen keys above and the screen's own.
        Binding("ctrl+q,f10", "quit", "Quit (training keeps running)", show=False),
        Binding("ctrl+l", "redraw", "Redraw the screen", show=False),
        Binding(
            "ctrl+p",
            "command_palette",
            "",
            show=False,
            priority=True,
            tooltip="Commands: open a run, plan as if for a GPU, screenshot, theme",
        ),
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
        #: ``default_data``, ``settings`` (a dict of `affiner.tui.assistant.flow.Settings` fields)
        #: and ``recipe`` (the demo's other run.toml settings, `assistant_preset`).
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
            recipe = options.pop("recipe", None) or {}
            screen = AssistantScreen(services, **options)
            screen.flow.eval_path = eval_path
            screen.flow.recipe = dict(recipe)  # the demo's run.toml beyond the settings
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
        else:
            self._find_live_runs()

    @work(thread=True, group="live-runs", name="find-live-runs", exit_on_error=False)
    def _find_live_runs(self) -> None:
        """A run left training when the app last quit: say so, and let F5 open it."""
        runs = self.services.live_runs(self.services.runs_root)
        if runs:
            self.call_from_thread(self._point_at_live_runs, runs)

    def _point_at_live_runs(self, runs: list[Any]) -> None:
        newest = runs[0]
        if self.current_run is None:
            self.current_run = Path(newest.path)
        more = f" (and {len(runs) - 1} more: F4 lists them)" if len(runs) > 1 else ""
        self.notify(
            f"Run {newest.run_id} is {newest.state}{more}. F5 shows it live.",
            title="A run is going",
            timeout=8,
        )

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

    def action_help(self) -> None:
        """F1: the help of the screen shown (F1 or Esc on the help closes it)."""
        from affiner.tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        self.push_screen(HelpScreen(self.help_content()))

    def help_content(self) -> Any:
        """What F1 shows for the screen on top (`affiner.tui.screens.help.HelpContent`)."""
        from affiner.tui.screens.help import help_content

        mode = self.current_mode
        commands: tuple[tuple[str, str], ...] = ()
        if mode == "assistant" and self.screen is self._screens.get("assistant"):
            from affiner.tui.assistant import answers

            commands = tuple(answers.PHRASES)
        title = SCREEN_TITLES.get(mode, type(self.screen).__name__)
        return help_content(
            self.screen, self, title=title, extra_app_keys=TEXTUAL_KEYS, commands=commands
        )

    def action_redraw(self) -> None:
        """ctrl+l, as in a shell: draw the whole screen again (after another program wrote on it)."""
        self.screen.refresh(layout=True, repaint=True)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    # -- quit and screenshot ---------------------------------------------------------------

    async def action_quit(self) -> None:
        """Quit; a run still training goes on, and the message after exit says how to come back."""
        self.exit(message=self.quit_message())

    def quit_message(self) -> str | None:
        """Which runs go on after the app quits and how to see them again; None when none do."""
        try:
            runs = self.services.live_runs(self.services.runs_root)
        except Exception:  # quitting must never fail on a damaged run folder
            return None
        if not runs:
            return None
        lines = [
            f"Run {run.run_id} is still {run.state}: it goes on without the app. "
            f"Follow it with `affiner attach {run.run_id}`, or open affiner again."
            for run in runs
        ]
        return "\n".join(lines)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's commands, with F1's help for "Keys" and a screenshot that says where it saved."""
        for command in super().get_system_commands(screen):
            if command.title == "Keys":  # Textual's key panel: the focused input's keys first
                yield SystemCommand(
                    "Keys",
                    "This screen's help: what it shows, its keys, what to type (F1)",
                    self.action_help,
                )
            elif command.title == "Screenshot":
                yield SystemCommand(
                    "Screenshot",
                    f"Save an SVG picture of this screen in {self.screenshot_dir()}",
                    lambda: self.set_timer(0.1, self.save_screenshot_here),
                )
            else:
                yield command

    def screenshot_dir(self) -> Path:
        """Beside the runs folder (``./screenshots`` for the default ``./runs``)."""
        return Path(self.services.runs_root).expanduser().absolute().parent / "screenshots"

    def save_screenshot_here(self) -> Path | None:
        """Save the screen as SVG in `screenshot_dir` and say where, or why it could not.

        Textual's own command writes to ~/Downloads, fails when that folder is missing, and
        says only "Failed to save screenshot"; this one makes the folder and names the file.
        """
        folder = self.screenshot_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.services.clock()))
        path = folder / f"affiner-{self.current_mode or 'screen'}-{stamp}.svg"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(self.export_screenshot(), encoding="utf-8")
        except OSError as error:
            self.notify(
                f"Could not save the screenshot to {path}: {error.strerror or error}",
                title="Screenshot",
                severity="error",
            )
            return None
        self.notify(f"Saved to {path}", title="Screenshot", timeout=6)
        return path

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
        self.notify(
            f"Plans are now made as if for the catalog GPU {target.name} "
            f"({format_bytes(target.memory_total)}).",
            timeout=3,
        )

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
