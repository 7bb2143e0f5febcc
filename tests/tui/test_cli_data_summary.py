"""`affiner train` and `affiner preflight` say what the data is before they start: the format
detected, the rows, duplicates removed, leakage, token-length percentiles and truncation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import affiner.runner.run as run_face
from affiner.tui.cli.entry import main
from tests.model_configs import LLAMA_3_8B
from tests.tiny_models import write_jsonl

RUN_TOML = """\
[model]
name_or_path = "model"

[data]
train = "train.jsonl"
eval = "eval.jsonl"
max_seq_len = 16

[training]
device = "cpu"
max_steps = 2
"""


@pytest.fixture
def run_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Llama-shaped config.json with a word-level tokenizer.json; 20 instruction rows of
    2..21 words, two of them twice, and an eval file with one training row in it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AFFINER_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    small = dict(LLAMA_3_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    (model / "config.json").write_text(json.dumps(small | {"vocab_size": 64}))
    vocab = {w: i for i, w in enumerate(["[UNK]", "say", "word", "ok"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(model / "tokenizer.json"))
    rows = [{"instruction": "say " + "word " * i, "output": "ok"} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", rows + rows[:2])
    write_jsonl(tmp_path / "eval.jsonl", [rows[5], {"instruction": "say ok", "output": "ok"}])
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML)
    return path


def _summary(err: str) -> list[str]:
    lines = err.splitlines()
    start = lines.index("Data, as the run will read it:")
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]


def test_train_prints_the_data_summary_before_it_starts(
    run_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    launched: list[Any] = []
    monkeypatch.setattr(run_face, "launch_worker", lambda rd, **kw: launched.append(rd))
    assert main(["train", str(run_toml)]) == 0
    out, err = capsys.readouterr()
    summary = _summary(err)
    assert summary[0] == "format: instruction (detected)"
    assert summary[1] == "rows: 20 training, 1 held out (eval.jsonl)"
    assert "duplicates removed: 2 in train" in summary
    assert (
        "leakage: 1 held-out rows are also training rows and were left out of the evaluation"
        in summary
    )
    tokens = next(line for line in summary if line.startswith("tokens a row:"))
    # instruction + output words, one token each: "say", 0..19 words and "ok": 2..21
    assert tokens.startswith("tokens a row: p50 11, p95 20, p99 21, longest 21")
    assert "chat template not counted" in tokens
    truncated = next(line for line in summary if line.startswith("truncated:"))
    assert truncated.startswith("truncated: 5 of 20 rows are longer than max_seq_len 16")
    assert "\x1b[" not in err, "plain text when the output is not a terminal"
    assert len(launched) == 1 and "Started run" in out  # the summary came before the start


def test_preflight_prints_it_too_and_says_when_nothing_is_cut(
    run_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from affiner.runner.run.events import Preflight

    run_toml.write_text(RUN_TOML.replace("max_seq_len = 16", "max_seq_len = 32"))
    monkeypatch.setattr(
        run_face,
        "run_preflight_process",
        lambda cfg, **kw: Preflight(
            device="cpu",
            measured_peak_bytes=1,
            predicted_peak_bytes=1,
            measured_step_seconds=0.1,
            predicted_step_seconds=0.1,
        ),
    )
    assert main(["preflight", str(run_toml), "--json"]) == 0
    summary = _summary(capsys.readouterr().err)
    assert "truncated: none (every row fits max_seq_len 32)" in summary


def test_without_a_tokenizer_it_says_why_lengths_are_missing(
    run_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (run_toml.parent / "model" / "tokenizer.json").unlink()
    monkeypatch.setattr(run_face, "launch_worker", lambda rd, **kw: None)
    assert main(["train", str(run_toml)]) == 0
    summary = _summary(capsys.readouterr().err)
    assert any(line.startswith("tokens: not counted here (token lengths need") for line in summary)
