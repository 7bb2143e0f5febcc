"""``affiner model``: the JSON contract, the tables, errors as exit 2, and no torch on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affiner.tui.cli.entry import main
from tests.model_configs import GPT2_SMALL, MIXTRAL_8X7B

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "textual", "peft", "bitsandbytes", "datasets", "accelerate")


@pytest.fixture
def gpt2_config(tmp_path: Path) -> Path:
    file = tmp_path / "config.json"
    file.write_text(json.dumps(GPT2_SMALL))
    return file


def test_json(gpt2_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", str(gpt2_config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params_total"] == data["params_trainable_full"] == 124_439_808
    assert data["tied_embeddings"] is True and data["architecture"] == "GPT2LMHeadModel"
    assert sum(data["modules"].values()) == data["params_total"] and data["modules"]["head"] == 0
    c_attn = next(t for t in data["lora_targets"] if t["name"] == "c_attn")
    assert c_attn == {
        "name": "c_attn",
        "in_features": 768,
        "out_features": 2304,
        "count": 12,
        "bias": True,
        "kind": "conv1d",
        "part": "attention",
        "params": 12 * (768 * 2304 + 2304),
    }
    assert "raw_config" not in data and data["source"] == "config"


def test_tables(gpt2_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", str(gpt2_config)]) == 0
    out = capsys.readouterr().out
    for text in ("GPT2LMHeadModel", "124,439,808", "Parameters by part", "LoRA targets"):
        assert text in out
    assert "c_attn" in out and "768 → 2304" in out and "Conv1D" in out
    assert "45.5%" in out  # the MLP's share of GPT-2 small
    assert "tied to embeddings" in out


def test_mixture_of_experts_shows_active_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL_8X7B))
    assert main(["model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "46.7B" in out and "12.9B" in out and "2 of 8 experts" in out and "per expert" in out


def test_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "0.5b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "size" and "representative" in data["name"]


def test_mistakes_exit_2_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["model", "acme/missing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("affiner: acme/missing is not in the local Hugging Face cache")
    assert "hint: on a machine with internet run `hf download acme/missing`" in err
    assert "Traceback" not in err


def test_config_json_path_imports_nothing_heavy(gpt2_config: Path) -> None:
    code = (
        "import json, sys\n"
        "from affiner.tui.cli.entry import main\n"
        f"code = main(['model', {str(gpt2_config)!r}, '--json'])\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    lines = result.stdout.strip().splitlines()
    printed = json.loads("\n".join(lines[:-1]))
    status = json.loads(lines[-1])
    assert printed["params_total"] == 124_439_808
    assert status == {"code": 0, "heavy": []}
