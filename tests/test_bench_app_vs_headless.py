"""bench/demo_app_vs_headless.py's verdict: the same before → after, or the gap that says not."""

from __future__ import annotations

import json
from pathlib import Path

from bench.demo_app_vs_headless import compare, table


def fake_run(folder: Path, *, after_accuracy: float = 0.8, scheduler: str = "cosine") -> Path:
    folder.mkdir(parents=True)
    events = [
        {"type": "run_started", "step": 0},
        {"type": "eval", "step": 0, "loss": 0.69, "accuracy": 0.48, "f1": 0.47},
        {"type": "eval", "step": 50, "loss": 0.6, "accuracy": 0.7, "f1": 0.69},
        {"type": "eval", "step": 100, "loss": 0.5, "accuracy": after_accuracy, "f1": 0.79},
    ]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "run.toml").write_text(
        f'[training]\nlr_scheduler = "{scheduler}"\nseed = 42\n\n[eval]\nevery_steps = 50\n'
    )
    return folder


def test_one_recipe_gives_the_same_numbers(tmp_path: Path) -> None:
    report = compare(fake_run(tmp_path / "h"), fake_run(tmp_path / "a"))
    assert report["same"] and report["largest_gap"] == 0.0
    assert report["headless"]["before"] == {"loss": 0.69, "accuracy": 0.48, "f1": 0.47, "step": 0}
    assert report["headless"]["after"]["step"] == 100
    assert "same before → after (every gap <= 1e-06): yes" in table({"task": "x", **report})


def test_a_different_result_or_setting_is_named(tmp_path: Path) -> None:
    report = compare(fake_run(tmp_path / "h"), fake_run(tmp_path / "a", after_accuracy=0.79))
    assert not report["same"] and abs(report["largest_gap"] - 0.01) < 1e-9
    text = table({"task": "classify", **report})
    assert "after 100 accuracy" in text and text.endswith("NO")
    report = compare(fake_run(tmp_path / "h2"), fake_run(tmp_path / "a2", scheduler="linear"))
    assert report["settings_that_differ"] == {"training.lr_scheduler": ["cosine", "linear"]}
    assert not report["same"]
