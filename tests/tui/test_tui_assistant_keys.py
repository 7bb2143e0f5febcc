"""The assistant at 80x24 from the keyboard (issue 12, point 4 for the assistant).

The conversation scrolls with PgUp/PgDn while the input line has the focus, ctrl+t folds
the plan panel away (and back), a short terminal gets the compact layout, and every method
of a 7B plan shows in the panel on one line of its own, on a 4090 and on a CPU (whose step
times are the longest figures), at 80 columns. The real planner plans for fixed devices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from affiner.tui.app import AffinerApp
from affiner.tui.screens.assistant import AssistantScreen
from affiner.tui.widgets.conversation import Conversation
from affiner.tui.widgets.plan_bars import SHORT_NAMES, PlanBars, render_bars
from tests.tui.test_tui_assistant_states_snapshots import planning_services, to_the_plan
from tests.tui_pilot import wait_for


@pytest.mark.parametrize("device", ["4090", "cpu"])
async def test_every_method_row_shows_on_one_line_at_80_columns(
    tmp_path: Path, device: str
) -> None:
    app = AffinerApp(planning_services(tmp_path, device))
    async with app.run_test(size=(80, 24)) as pilot:
        await to_the_plan(pilot)
        screen = app.screen
        assert isinstance(screen, AssistantScreen)
        bars = screen.query_one(PlanBars)
        plan = screen.flow.plan
        assert len(plan.candidates) == 5
        width = bars.content_size.width
        assert width <= 76
        lines = render_bars(plan, screen.flow.device, None, width).plain.splitlines()
        assert len(lines) == len(plan.candidates) == bars.content_size.height
        for line, candidate in zip(lines, plan.candidates, strict=True):
            assert len(line) <= width, line
            assert line[2:].startswith(SHORT_NAMES[candidate.method] + " ")
            assert "█" in line or "░" in line  # the bar shrank, it did not go
        # what is drawn is those rows: every method's name on the screen, in its own row
        drawn = [strip.text for strip in screen._compositor.render_strips()]
        for name in SHORT_NAMES.values():
            assert any(f"│ ▶ {name} " in row or f"│   {name} " in row for row in drawn), name


def test_rows_too_narrow_for_a_bar_keep_every_method_whole() -> None:
    from tests.tui.test_assistant_wording import cpu, planned_flow

    flow = planned_flow("7B", cpu())
    for width in (30, 45, 50):
        lines = render_bars(flow.plan, flow.device, None, width).plain.splitlines()
        assert len(lines) == 5
        for line, candidate in zip(lines, flow.plan.candidates, strict=True):
            assert len(line) <= width and SHORT_NAMES[candidate.method] in line
            if width >= 45:  # no bar, but every figure and the verdict
                assert "█" not in line and "GiB" in line and "min" in line
                assert "too big" in line or "slow" in line


async def test_page_keys_scroll_the_conversation_while_typing(tmp_path: Path) -> None:
    app = AffinerApp(planning_services(tmp_path, "4090"))
    async with app.run_test(size=(80, 24)) as pilot:
        await to_the_plan(pilot)
        screen = app.screen
        prompt = screen.query_one("#prompt", Input)
        conversation = screen.query_one(Conversation)
        assert app.focused is prompt
        await wait_for(pilot, lambda: conversation.scroll_y == conversation.max_scroll_y > 0)
        bottom = conversation.scroll_y
        await pilot.press("pageup")
        await wait_for(pilot, lambda: conversation.scroll_y < bottom)
        assert app.focused is prompt  # still typing
        await pilot.press("ctrl+home")
        await wait_for(pilot, lambda: conversation.scroll_y == 0)
        await pilot.press("pagedown")
        await wait_for(pilot, lambda: conversation.scroll_y > 0)
        await pilot.press("ctrl+end")
        await wait_for(pilot, lambda: conversation.scroll_y == conversation.max_scroll_y)
        await pilot.press(*"x")
        assert prompt.value == "x"  # the keys did not type anything


async def test_ctrl_t_folds_the_plan_panel_and_brings_it_back(tmp_path: Path) -> None:
    app = AffinerApp(planning_services(tmp_path, "4090"))
    async with app.run_test(size=(80, 24)) as pilot:
        await to_the_plan(pilot)
        screen = app.screen
        bars = screen.query_one(PlanBars)
        conversation = screen.query_one(Conversation)
        rows_before = conversation.size.height
        assert bars.display and screen.has_class("-short")
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert not bars.display
        assert conversation.size.height >= rows_before + 7  # the panel's rows are conversation
        assert "LoRA" in str(screen.query_one("#summary").render())  # the summary line stays
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert bars.display and conversation.size.height == rows_before


async def test_a_tall_terminal_keeps_the_roomy_layout(tmp_path: Path) -> None:
    app = AffinerApp(planning_services(tmp_path, "4090"))
    async with app.run_test(size=(120, 40)) as pilot:
        await to_the_plan(pilot)
        assert not app.screen.has_class("-short")
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.screen.has_class("-short")
