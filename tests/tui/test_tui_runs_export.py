"""The runs screen's ``e``: it exports the highlighted run through the export child and says
where it wrote and what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from affiner.tui.app import build_app
from affiner.tui.screens.runs import RunsScreen
from tests.tui.test_cli_export import saved_full_run
from tests.tui_fakes import fake_services
from tests.tui_pilot import wait_for

pytestmark = pytest.mark.slow


async def test_e_exports_the_highlighted_run(
    runs_dir: Path, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama.cpp converter anywhere
    rd = saved_full_run(runs_dir, tiny_llama)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("e")

        def said(words: str) -> bool:
            return any(words in n.message for n in app._notifications)

        await pilot.press("e")  # again while the first runs (the child takes seconds)
        assert said("An export is running: wait for it to finish.")

        await wait_for(pilot, lambda: said("Exported to"), timeout=60)
        assert said(f"Exported to {rd.path / 'export'}: merged.")
        assert said("Missing: GGUF: llama.cpp's convert_hf_to_gguf.py was not found")
    assert (rd.path / "export" / "merged" / "model.safetensors").exists()
