"""Set-ups the `affiner plan` tests share: a small Llama-shaped model folder with its data,
a CPU whose speed is fixed instead of measured, and the plan as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.model_configs import LLAMA_3_8B
from tests.tiny_models import write_jsonl


def small_llama_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, str]] | None = None
) -> Path:
    """``model/config.json`` (no weights) and ``train.jsonl`` (`rows`, or 40 short instruction
    rows) in `tmp_path`, made the cwd, with affiner's cache, runs and the hub kept inside it."""
    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AFFINER_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    small = dict(
        LLAMA_3_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, vocab_size=1000
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(small))
    if rows is None:
        rows = [{"instruction": f"say {i} " + "word " * (i % 9), "output": "ok"} for i in range(40)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    return tmp_path


def fake_cpu_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU plan without timing this machine: a fixed matmul rate and process baseline."""
    import affiner.planner.hardware.cpu_throughput as ct
    import affiner.planner.hardware.process_baseline as pb

    monkeypatch.setattr(ct, "machine_load", lambda: (0.0, 4))
    monkeypatch.setattr(ct, "_time_rates", lambda cpu, size, s: (0.125, None, "fake"))
    monkeypatch.setattr(
        pb, "run_child", lambda timeout=0: {"rss": 400 << 20, "peak_rss": 500 << 20}
    )


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """``affiner plan ARGS --json``, parsed (the command must succeed)."""
    from affiner.tui.cli.entry import main

    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)
