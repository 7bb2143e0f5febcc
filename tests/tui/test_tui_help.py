"""F1: the help of the screen shown, built from that screen (its text, its keys, then the app's).

The help must follow a screen's own BINDINGS and HELP without naming them, so these tests
also give a screen of their own and check its help follows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from affiner.tui.app import AffinerApp, build_app
from affiner.tui.assistant import answers
from affiner.tui.screens.assistant import AssistantScreen
from affiner.tui.screens.hardware import HardwareScreen
from affiner.tui.screens.help import HelpScreen, describe, help_content, key_words, screen_about
from tests.tui_fakes import fake_services
from tests.tui_pilot import wait_for


def screen_text(app: App) -> str:
    """The terminal's text as drawn now, one line per row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def rows(content_rows: list) -> list[tuple[str, str]]:
    return [(" · ".join(row.keys), row.description) for row in content_rows]


def test_key_words() -> None:
    assert key_words("f2") == "F2"
    assert key_words("escape") == "Esc"
    assert key_words("pageup") == "PgUp"
    assert key_words("ctrl+home") == "ctrl+home"
    assert key_words("ctrl+r") == "ctrl+r"


def test_describe_joins_word_and_tooltip() -> None:
    assert describe(Binding("x", "a", "Runs", tooltip="Past and live runs")) == (
        "Runs: past and live runs"
    )
    assert describe(Binding("x", "a", "Hardware", tooltip="GPUs and RAM")) == (
        "Hardware: GPUs and RAM"
    )
    assert describe(Binding("x", "a", "Chat", tooltip="Chat with it")) == "Chat with it"
    assert describe(Binding("x", "a", "", tooltip="Commands")) == "Commands"
    assert describe(Binding("x", "go", "")) == "go"


class Toy(Screen):
    """A screen for the test: its docstring is its help when it has no HELP."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x,f9", "explode", "Explode", tooltip="Blow it all up"),
        Binding("y", "hidden_now", "Never now", show=False),
        Binding("f2", "own_f2", "Toy's own F2", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static("toy")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return action != "hidden_now"


def test_help_content_follows_the_screen_it_covers() -> None:
    app = App()
    screen = Toy()
    content = help_content(screen, app, title="Toy")
    assert content.about == "A screen for the test: its docstring is its help when it has no HELP."
    # Its own keys first, hidden ones too, but not what check_action says is off now.
    assert rows(content.screen_keys) == [
        ("x · F9", "Explode: blow it all up"),
        ("F2", "Toy's own F2"),
    ]
    screen.HELP = "Toy help, written for people."  # type: ignore[attr-defined]
    assert screen_about(screen) == "Toy help, written for people."


def test_app_keys_skip_the_ones_a_screen_takes() -> None:
    services, _ = fake_services(Path("/nonexistent"))
    app = AffinerApp(services)
    content = help_content(Toy(), app, title="Toy")
    app_rows = dict(rows(content.app_keys))
    # The toy screen binds F2 itself: the app's F2 is listed without it.
    assert app_rows["ctrl+t"] == "Assist: the guided assistant"
    assert app_rows["F3 · ctrl+g"].startswith("Hardware")
    assert app_rows["ctrl+q · F10"] == "Quit (training keeps running)"
    assert app_rows["ctrl+l"] == "Redraw the screen"
    assert app_rows["ctrl+p"].startswith("Commands")


async def test_f1_on_the_hardware_screen(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3", "f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        content = help_screen.content
        assert content.title == "Hardware"
        assert content.about == HardwareScreen.HELP
        # The screen's keys, from its BINDINGS, come before the app's.
        assert rows(content.screen_keys)[0][0] == "p"
        assert [row.keys[0] for row in content.app_keys][:6] == ["F1", "F2", "F3", "F4", "F5", "F6"]
        assert not content.commands  # phrases belong to the assistant
        await pilot.pause()
        text = screen_text(app)
        assert text.index("Keys on this screen") < text.index("Keys everywhere")
        assert "Help: Hardware" in text and "Esc/F1 close" in text
        # It fits the terminal and scrolls inside.
        body = help_screen.query_one("#help-body", VerticalScroll)
        assert body.region.height <= 24 and body.region.width <= 80
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HardwareScreen))
        await pilot.press("f1", "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HardwareScreen))


async def test_f1_on_the_assistant_lists_what_it_understands(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, AssistantScreen)
        await pilot.press("f1")  # the assistant's input has the focus: F1 still works
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        content = app.screen.content
        assert tuple(content.commands) == tuple(answers.PHRASES)
        body = app.screen.query_one("#help-body", VerticalScroll)
        await pilot.pause()
        assert body.max_scroll_y > 0  # longer than 80x24: it scrolls
        await pilot.press("end")
        await wait_for(pilot, lambda: body.scroll_y == body.max_scroll_y)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, AssistantScreen))


async def test_the_palettes_keys_command_opens_this_help(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        commands["Keys"].callback()
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert app.screen.content.title == "Runs"
