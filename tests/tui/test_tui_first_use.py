"""An offline model named in the app for the first time is converted there, with its progress,
before the model step reads its shape (issue 16 point 4, in the app as on the command line).

The conversion itself (torch, a 270 MB GGUF) cannot run in a test; what is faked is the child
process at its boundary (`subprocess.Popen`) and whether the package is installed and converted.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.widgets import Static

from affiner.planner.errors import AffinerError
from affiner.tui.app import AffinerApp
from affiner.tui.services import _make_model_ready
from tests.tui.test_tui_assistant_states_snapshots import planning_services, settle
from tests.tui_pilot import wait_for


async def test_the_model_step_shows_the_conversion_then_goes_on(tmp_path: Path) -> None:
    release = threading.Event()
    calls: list[str] = []

    def make_ready(ref, progress, cancelled):
        calls.append(ref)
        progress(" 10%  reading the GGUF file")
        progress(" 60%  writing safetensors")
        release.wait(10)
        return "SmolLM2"

    services = planning_services(tmp_path, "4090")
    services.make_model_ready = make_ready
    app = AffinerApp(services)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press(*"7B", "enter")
        status = lambda: app.screen.query("#model-status")  # noqa: E731
        await wait_for(
            pilot,
            lambda: status() and "60%  writing safetensors" in str(status().first(Static).content),
        )
        assert "used for the first time here" in str(status().first(Static).content)
        release.set()
        await wait_for(pilot, lambda: not status() and app.screen.flow.spec is not None)
        assert calls == ["7B"]


def fake_offline(monkeypatch: pytest.MonkeyPatch, ready: Path | None) -> None:
    model = SimpleNamespace(key="smollm2-135m-instruct", title="SmolLM2-135M-Instruct")
    monkeypatch.setattr(
        "affiner.tui.cli.provisioning.offline_model_named", lambda ref, base_dir=None: model
    )
    monkeypatch.setattr("affiner.planner.models.source_path", lambda m: Path("/pkg"))
    monkeypatch.setattr("affiner.planner.models.ready_path", lambda m: ready)


def fake_child(monkeypatch: pytest.MonkeyPatch, script: str) -> list[list[str]]:
    """`subprocess.Popen` runs `script` instead of the conversion; the commands asked for."""
    asked: list[list[str]] = []
    real = subprocess.Popen

    def popen(command, **kwargs):
        asked.append(command)
        return real([sys.executable, "-c", script], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    return asked


def test_the_conversion_runs_in_a_child_and_passes_its_progress_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_offline(monkeypatch, ready=None)
    asked = fake_child(
        monkeypatch,
        "import sys; print(' 10%  reading', file=sys.stderr); "
        "print('a library warning', file=sys.stderr); print(' 100%  done', file=sys.stderr)",
    )
    lines: list[str] = []
    assert _make_model_ready("smollm2", lines.append) == "SmolLM2-135M-Instruct"
    assert asked == [
        [sys.executable, "-m", "affiner.runner.demo.provision", "smollm2-135m-instruct"]
    ]
    assert lines == ["10%  reading", "100%  done"]  # progress only, not the library's chatter


def test_a_ready_model_or_another_name_converts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_offline(monkeypatch, ready=Path("/cache/smollm2"))
    asked = fake_child(monkeypatch, "raise SystemExit(1)")
    assert _make_model_ready("smollm2", print) is None and asked == []
    monkeypatch.setattr(
        "affiner.tui.cli.provisioning.offline_model_named", lambda ref, base_dir=None: None
    )
    assert _make_model_ready("./my-model", print) is None and asked == []


def test_a_failed_conversion_says_why_in_the_childs_words(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_offline(monkeypatch, ready=None)
    fake_child(
        monkeypatch,
        "import sys; print('error: no space left on device', file=sys.stderr); sys.exit(2)",
    )
    with pytest.raises(AffinerError, match="no space left on device") as failed:
        _make_model_ready("smollm2", print)
    assert "python -m affiner.runner.demo.provision smollm2-135m-instruct" in failed.value.hint
