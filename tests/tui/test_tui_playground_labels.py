"""The playground with a classifier (label names, an untrained base head), its generation
settings, aligned side-by-side turns, and following the run the monitor shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from textual.widgets import Input

from affiner.runner.inference import ChatSession, detected_labels
from affiner.tui.app import AffinerApp, build_app
from affiner.tui.screens.playground import (
    ChatPane,
    GenerationSettings,
    PlaygroundScreen,
)
from affiner.tui.widgets.side_by_side import Transcript, TurnRow
from tests.train_helpers import classifier_run
from tests.tui.test_tui_playground import services_with, wait_playground
from tests.tui_fakes import fake_services, finished_run, lm_run
from tests.tui_pilot import wait_for


def test_labels_come_from_the_data_when_run_toml_lists_none(
    tiny_llama: Path, tmp_path: Path
) -> None:
    run = classifier_run(tmp_path, tiny_llama)
    assert "labels = []" in (run / "run.toml").read_text(encoding="utf-8")
    assert sorted(detected_labels(run, run / "adapter")) == ["bad", "good"]
    # a whole-model run's config names them; LABEL_n names say nothing and are passed over
    folder = tmp_path / "whole"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    assert detected_labels(run, folder) == ["neg", "pos"]
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0"}}))
    assert sorted(detected_labels(run, folder)) == ["bad", "good"]


async def test_classifier_answers_use_label_names_and_the_base_head_is_called_chance(
    tiny_llama: Path, tmp_path: Path
) -> None:
    run = classifier_run(tmp_path, tiny_llama)

    def chat_session(run_dir: Path) -> ChatSession:
        return ChatSession.from_run(run_dir, device="cpu")

    app = AffinerApp(services_with(chat_session, tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_playground(run)
        await wait_playground(pilot)
        screen = app.screen
        assert isinstance(screen, PlaygroundScreen)
        assert screen.session.base_head_untrained is True  # the tiny Llama is no classifier
        info = str(screen.query_one("#run-info").render())
        assert "labels" in info and "good" in info and "bad" in info
        note = str(screen.query_one("#head-note").render())
        assert "untrained" in note and "chance (about 1/2 each)" in note
        await pilot.press(*"loved this film", "enter")
        await wait_playground(pilot)
        tuned = screen.query_one("#pane-tuned", ChatPane).turns[1][1]
        base = screen.query_one("#pane-base", ChatPane).turns[1][1]
        assert tuned.split()[0] in ("good", "bad") and "LABEL_" not in tuned
        assert base.startswith("chance, untrained head  (") and "LABEL_" not in base


class RecordingChat:
    """A chat stand-in that answers at different lengths and records its settings."""

    task = "causal_lm"
    base = "base-model"
    adapter = "adapter/"

    def __init__(self, run_dir: Path, calls: list[tuple[Path, float, int]]) -> None:
        self.run_dir, self.calls = run_dir, calls

    def load(self) -> RecordingChat:
        return self

    def stream(self, messages, use_adapter=True, max_new_tokens=256, temperature=0.7):
        self.calls.append((self.run_dir, temperature, max_new_tokens))
        words = "a long answer " * (12 if use_adapter else 1)
        yield from words.split(" ")


async def test_generation_settings_are_shown_and_changed(tmp_path: Path) -> None:
    calls: list[tuple[Path, float, int]] = []
    run = tmp_path / "runs" / "r-ab12"
    app = AffinerApp(services_with(lambda rd: RecordingChat(rd, calls), tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_playground(run)
        await wait_playground(pilot)
        info = app.screen.query_one("#run-info")
        assert "temperature 0.7, max 256 new tokens" in str(info.render())
        await pilot.press(*"/temp 0", "enter")
        await pilot.press(*"/max 32", "enter")
        await pilot.press(*"/max lots", "enter")  # refused, in words; kept there to mend
        ask = app.screen.query_one("#ask", Input)
        assert ask.value == "/max lots"
        assert "greedy, max 32 new tokens" in str(info.render())
        ask.value = ""
        await pilot.press(*"hello", "enter")
        await wait_playground(pilot)
        assert calls == [(run, 0.0, 32), (run, 0.0, 32)]


def test_settings_refuse_values_out_of_range() -> None:
    settings = GenerationSettings()
    with pytest.raises(ValueError, match="from 0 to 2"):
        settings.change("/temp 5")
    with pytest.raises(ValueError, match="whole number"):
        settings.change("/max 1.5")
    with pytest.raises(ValueError, match="/temp X and /max N"):
        settings.change("/top 3")
    assert settings == GenerationSettings()


async def test_turns_stay_side_by_side_after_answers_of_different_lengths(
    tmp_path: Path,
) -> None:
    calls: list[tuple[Path, float, int]] = []
    app = AffinerApp(services_with(lambda rd: RecordingChat(rd, calls), tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_playground(tmp_path / "runs" / "r-ab12")
        await wait_playground(pilot)
        for question in ("first", "second"):
            await pilot.press(*question, "enter")
            await wait_playground(pilot)
        await pilot.pause()
        rows = list(app.screen.query(TurnRow))
        assert len(rows) == 4  # question, answer, question, answer
        second = rows[2]
        tuned, base = second.query_one(".cell-tuned"), second.query_one(".cell-base")
        # the tuned side's first answer is many lines, the base side's one: the next
        # question still starts on the same line on both sides
        assert tuned.region.y == base.region.y
        assert tuned.region.y > rows[1].region.y + 2
        # PgUp / PgDn scroll the transcript while the question field keeps the keys
        transcript = app.screen.query_one(Transcript)
        assert transcript.max_scroll_y > 0 and transcript.scroll_y == transcript.max_scroll_y
        await pilot.press("pageup")
        await wait_for(pilot, lambda: transcript.scroll_y < transcript.max_scroll_y)
        await pilot.press("pagedown")
        await wait_for(pilot, lambda: transcript.scroll_y == transcript.max_scroll_y)


async def test_the_playground_follows_the_run_the_monitor_shows(runs_dir: Path) -> None:
    first = finished_run(runs_dir, "20261123-090000-lora-old-c3d4")
    second = lm_run(runs_dir, upto=40)
    calls: list[tuple[Path, float, int]] = []
    services, _ = fake_services(runs_dir)
    loads: list[Path] = []

    def chat_session(run_dir: Path) -> RecordingChat:
        loads.append(Path(run_dir))
        return RecordingChat(Path(run_dir), calls)

    services.chat_session = chat_session
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(first.path)
        await pilot.press("p")  # the monitor's "chat with it"
        await wait_playground(pilot)
        assert isinstance(app.screen, PlaygroundScreen) and app.screen.run_dir == first.path
        app.open_monitor(second.path)  # the monitor moves to another run
        await pilot.press("f6")
        await wait_for(pilot, lambda: app.screen.run_dir == second.path)
        await wait_playground(pilot)
        assert loads == [first.path, second.path]
        assert second.path.name in str(app.screen.query_one("#run-info").render())


def test_the_chat_child_says_the_labels_and_the_untrained_head_when_ready(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import io

    from affiner.runner.chat import _Channel, _load

    run = classifier_run(tmp_path, tiny_llama)
    out = io.StringIO()
    assert _load(run, "cpu", _Channel(out)) is not None
    ready = json.loads(out.getvalue())
    assert ready["type"] == "ready"
    assert sorted(ready["labels"]) == ["bad", "good"]
    assert ready["base_head_untrained"] is True


class FakeClassifier:
    """A classifier session with fixed answers: names from the data, a random base head."""

    task = "classification"
    base = "sentence-transformers/all-MiniLM-L6-v2"
    adapter = "adapter/"
    labels: ClassVar[list[str]] = ["negative", "positive"]
    base_head_untrained = True

    def load(self) -> FakeClassifier:
        return self

    def classify(self, texts, use_adapter=True):
        from affiner.runner.inference import Prediction

        tuned = {"positive": 0.93, "negative": 0.07}
        base = {"negative": 0.51, "positive": 0.49}
        return [Prediction(*(("positive", tuned) if use_adapter else ("negative", base)))]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_classifier_playground_snapshot(snap_compare, tmp_path: Path, size) -> None:
    from tests.tui.test_tui_assistant_snapshots import settle

    run = tmp_path / "runs" / "20261125-120000-lora-minilm-cd34"

    async def run_before(pilot) -> None:
        pilot.app.open_playground(run)
        await settle(pilot)
        await pilot.press(*"a warm, funny film", "enter")
        await settle(pilot)

    app = AffinerApp(services_with(lambda rd: FakeClassifier(), tmp_path))
    assert snap_compare(app, terminal_size=size, run_before=run_before)
