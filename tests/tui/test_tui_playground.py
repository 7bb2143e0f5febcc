"""The playground: a tiny Llama with and without its adapter answers side by side, streamed."""

from __future__ import annotations

from pathlib import Path

from textual.worker import WorkerState

from affiner.runner.inference import ChatSession
from affiner.tui.app import AffinerApp
from affiner.tui.screens.playground import ChatPane, PlaygroundScreen, Streamed
from affiner.tui.services import Services
from tests.assistant_fakes import hardware, make_adapter


def services_with(chat_session, tmp_path: Path) -> Services:
    return Services(
        probe_hardware=hardware,
        resolve_model=lambda ref: None,
        make_plan=lambda *a: None,
        start_run=lambda cfg: None,
        stop_run=lambda run: None,
        runs_root=tmp_path / "runs",
        chat_session=chat_session,
        clock=lambda: 1_800_000_000.0,
    )


async def wait_playground(pilot) -> None:
    for _ in range(3):
        busy = [
            w
            for w in pilot.app.workers
            if (w.group or "").startswith("playground")
            and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]
        if busy:
            await pilot.app.workers.wait_for_complete(busy)
        await pilot.pause()


async def test_playground_streams_tuned_and_base_answers(tiny_llama: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "20261125-120000-lora-tiny-ab12"
    adapter = make_adapter(tiny_llama, run / "adapter")
    loads: list[Path] = []

    def chat_session(run_dir: Path) -> ChatSession:
        loads.append(run_dir)
        return ChatSession(tiny_llama, adapter, device="cpu")

    streamed: list[Streamed] = []

    def hook(message) -> None:
        if isinstance(message, Streamed):
            streamed.append(message)

    app = AffinerApp(services_with(chat_session, tmp_path))
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await pilot.pause()
        app.open_playground(run)
        await wait_playground(pilot)
        screen = app.screen
        assert isinstance(screen, PlaygroundScreen) and screen.run_dir == run
        await pilot.press(*"/max 16", "enter")  # enough tokens to see them streamed one by one
        await pilot.press(*"tell me a story", "enter")
        await wait_playground(pilot)
        tuned = screen.query_one("#pane-tuned", ChatPane).turns
        base = screen.query_one("#pane-base", ChatPane).turns
        assert tuned[0] == ("user", "tell me a story") == base[0]
        assert tuned[1][0] == base[1][0] == "assistant"
        assert tuned[1][1] and base[1][1] and tuned[1][1] != base[1][1]
        assert {m.side for m in streamed} == {"tuned", "base"}
        assert sum(m.side == "tuned" for m in streamed) > 1  # token by token, not one blob
        assert loads == [run]  # loaded once for both answers
        assert not screen.busy


async def test_playground_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    app = AffinerApp(services_with(lambda run_dir: None, tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_playground()
        await pilot.pause()
        assert "No run open" in str(app.screen.query_one("#run-info").render())


async def test_load_failures_are_shown_not_raised(tmp_path: Path) -> None:
    def broken(run_dir: Path):
        from affiner.planner.errors import AffinerError

        raise AffinerError(f"the run in {run_dir.name} has no saved weights yet")

    app = AffinerApp(services_with(broken, tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_playground(tmp_path / "runs" / "r1")
        await wait_playground(pilot)
        assert "Could not load the models: the run in r1 has no saved weights yet" in str(
            app.screen.query_one("#run-info").render()
        )


class SlowSession:
    """A session that streams slowly, so the user can start a new chat in the middle."""

    task = "causal_lm"
    base = "base"
    adapter = None
    labels = ()
    base_head_untrained = None

    def load(self) -> SlowSession:
        return self

    def stream(self, history, *, use_adapter: bool, **settings):
        import time

        for piece in ("one ", "two ", "three ", "four "):
            time.sleep(0.1)
            yield piece

    def close(self) -> None:
        pass


async def test_a_new_chat_mid_answer_drops_the_old_answer(tmp_path: Path) -> None:
    import asyncio

    run = tmp_path / "runs" / "20261125-120000-lora-tiny-ab12"
    run.mkdir(parents=True)
    app = AffinerApp(services_with(lambda run_dir: SlowSession(), tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_playground(run)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlaygroundScreen)
        await pilot.press(*"hello", "enter")
        await asyncio.sleep(0.25)  # the tuned side is mid-answer
        await pilot.press("ctrl+n")
        await asyncio.sleep(1.0)  # the old thread's pieces and ends arrive, and are dropped
        await pilot.pause()
        assert all(not pane.turns for pane in screen.query(ChatPane))
        assert not screen.busy
        await pilot.press(*"again", "enter")  # the next question is answered in full
        await wait_playground(pilot)
        tuned = screen.query_one("#pane-tuned", ChatPane).turns
        assert tuned == [("user", "again"), ("assistant", "one two three four ")]
