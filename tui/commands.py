"""Secondary commands for the command palette (ctrl+p): open a run, plan as if, theme.

The F-keys cover the screens; everything that needs an argument (which run, which GPU)
lives here, searchable by typing part of its name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from affiner.planner.units import format_bytes
from affiner.runner.run import list_run_dirs


def _memory(services: object, name: str) -> str:
    """`` (24.0 GiB)`` for a catalog GPU, empty when its entry cannot be read."""
    try:
        target = services.catalog_target(name)  # type: ignore[attr-defined]
    except Exception:  # the palette must open even if one entry is broken
        return ""
    return f" ({format_bytes(target.memory_total)})"


class AffinerCommands(Provider):
    """Open run…, plan as if GPU…, plan for this machine, toggle dark/light."""

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = self.app
        commands: list[tuple[str, Callable[[], object], str]] = [
            (
                "Toggle dark/light theme",
                app.action_toggle_theme,
                "Switch between the dark and light theme",
            ),  # type: ignore[attr-defined]
            (
                "Plan for this machine",
                partial(app.set_plan_target, None),
                "Plan against the detected GPU, or the CPU",
            ),  # type: ignore[attr-defined]
        ]
        services = app.services  # type: ignore[attr-defined]
        for run in list_run_dirs(services.runs_root)[:50]:
            commands.append(
                (
                    f"Open run {run.run_id}",
                    partial(app.open_monitor, run.path),
                    "Show it in the monitor",
                )  # type: ignore[attr-defined]
            )
        try:
            names = list(services.gpu_catalog())
        except Exception:  # the palette must open even if the catalog cannot be read
            names = []
        for name in names:
            commands.append(
                (
                    f"Plan as if GPU: {name}",
                    partial(app.plan_as_if, name),
                    f"Plans assume this GPU{_memory(services, name)}, the whole card free",
                )  # type: ignore[attr-defined]
            )
        return commands

    async def discover(self) -> Hits:
        for text, callback, help_text in self._commands()[:2]:
            yield DiscoveryHit(text, callback, help=help_text)
        yield DiscoveryHit(
            "Open run…", self.app.open_runs, help="Type 'open run' and part of an id"
        )  # type: ignore[attr-defined]
        yield DiscoveryHit(
            "Plan as if GPU…", self.app.open_hardware, help="Type 'plan as if' and a GPU name"
        )  # type: ignore[attr-defined]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, text=text, help=help_text)
