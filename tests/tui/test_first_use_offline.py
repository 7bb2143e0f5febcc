"""An offline model named in a run.toml is made ready on first use, in the foreground.

`affiner train` and `affiner preflight` convert ``smollm2`` (any GGUF in the offline catalogue)
when it is not in affiner's cache yet, once, then go on; `affiner plan` plans its carried shape
without converting; a missing package is one clear message. The real conversion needs the
registry package's 93 MB GGUF and half a minute, so `provision_model` (the runner's face) is
replaced by one that writes the folder a conversion would, and counts its calls; the package
itself is a folder of this test's, put on the path under the catalogue entry's module name.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

import affiner.planner.models.offline as offline
import affiner.runner.demo as demo_face
import affiner.runner.run as run_face
from affiner.planner.models import converted_dir, find_offline_model
from affiner.tui.cli.entry import main
from affiner.tui.cli.provisioning import progress_reporter
from tests.model_configs import LLAMA_3_8B
from tests.tiny_models import write_jsonl

RUN_TOML = """\
[model]
name_or_path = "smollm2"

[method]
name = "lora"

[data]
train = "train.jsonl"
max_seq_len = 64

[training]
device = "cpu"
max_steps = 2
"""

WORDS = ["[UNK]", "hello", "there", "how", "are", "you"]


@pytest.fixture
def smollm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The catalogue's GGUF model, carried by a package folder of this test's (installed,
    not converted in an empty cache)."""
    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AFFINER_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    real = find_offline_model("smollm2")
    assert real is not None and real.kind == "gguf"
    package = tmp_path / "site" / "affiner_test_smollm_package"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / real.relative).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = dataclasses.replace(real, module="affiner_test_smollm_package")
    monkeypatch.setattr(offline, "OFFLINE_MODELS", (model,))
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hello there " * (i + 1)} for i in range(12)])
    (tmp_path / "run.toml").write_text(RUN_TOML)
    return model


@pytest.fixture
def conversions(smollm: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`provision_model` replaced at the runner's face: it writes what a conversion writes
    (a small config.json and a tokenizer.json) where the real one would, reporting progress."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    calls: list[str] = []

    def convert(model: Any, *, progress: Any = None) -> Path:
        calls.append(model.key)
        if progress is not None:
            progress("dequantizing the GGUF weights", 0.15)
            progress("writing safetensors", 0.85)
        target = converted_dir(model)
        target.mkdir(parents=True)
        small = dict(LLAMA_3_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        (target / "config.json").write_text(json.dumps(small | {"vocab_size": 64}))
        tokenizer = Tokenizer(
            models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.save(str(target / "tokenizer.json"))
        return target

    monkeypatch.setattr(demo_face, "provision_model", convert)
    return calls


def test_train_converts_once_then_starts_the_run(
    conversions: list[str], monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    launched: list[Any] = []
    monkeypatch.setattr(run_face, "launch_worker", lambda rd, **kw: launched.append(rd))
    assert main(["train", "run.toml"]) == 0
    out, err = capsys.readouterr()
    assert conversions == ["smollm2-135m-instruct"]
    assert "converting its GGUF file once" in err
    # not a terminal: one plain line a stage, then ready
    assert "model smollm2-135m-instruct: dequantizing the GGUF weights (15%)" in err
    assert "model smollm2-135m-instruct: ready" in err
    (rd,) = launched
    from affiner.runner.config import load_config

    assert Path(load_config(rd.config).model.name_or_path) == converted_dir(
        find_offline_model("smollm2")
    )
    assert "-lora-smollm2-135m-instruct-" in rd.run_id and "Started run" in out
    assert main(["train", "run.toml"]) == 0  # converted: the second run goes straight on
    assert conversions == ["smollm2-135m-instruct"] and len(launched) == 2
    assert "converting" not in capsys.readouterr().err


def test_preflight_converts_then_measures(
    conversions: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from affiner.runner.run.events import Preflight

    measured: list[str] = []

    def preflight(cfg: Any, **kw: Any) -> Preflight:
        measured.append(cfg.model.name_or_path)
        return Preflight(
            device="cpu",
            measured_peak_bytes=1 << 30,
            predicted_peak_bytes=1 << 30,
            measured_step_seconds=0.5,
            predicted_step_seconds=0.5,
            seq_len=64,
        )

    monkeypatch.setattr(run_face, "run_preflight_process", preflight)
    assert main(["preflight", "run.toml", "--json"]) == 0
    assert conversions == ["smollm2-135m-instruct"]
    assert measured == [str(converted_dir(find_offline_model("smollm2")))]
    assert json.loads(capsys.readouterr().out)["measured_step_seconds"] == 0.5


def test_plan_needs_only_the_shape_and_converts_nothing(conversions: list[str], capsys) -> None:
    assert main(["plan", "run.toml", "--vram", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert conversions == []
    assert out["model"]["name"] == "SmolLM2-135M-Instruct"
    assert "converts it" in out["data"]["note"]
    assert main(["plan", "--model", "smollm2", "--vram", "24", "--json"]) == 0
    assert conversions == []


def test_a_missing_package_is_one_clear_message(
    smollm: Any, conversions: list[str], monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    absent = dataclasses.replace(smollm, module="affiner_test_package_not_installed")
    monkeypatch.setattr(offline, "OFFLINE_MODELS", (absent,))
    for command in (["train", "run.toml"], ["preflight", "run.toml"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "SmolLM2-135M-Instruct is not installed" in err
        assert absent.install in err and "Traceback" not in err
    assert conversions == [] and not (tmp_path / "runs").exists()


def test_the_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    from rich.console import Console

    piped = Console(file=io.StringIO(), force_terminal=False, width=100)
    with progress_reporter(piped, "model m") as report:
        report("reading", 0.0)
        report("reading", 0.1)  # the same stage is said once
        report("writing", 0.9)
    assert piped.file.getvalue().splitlines() == [
        "model m: reading (0%)",
        "model m: writing (90%)",
        "model m: ready",
    ]
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress_reporter(terminal, "model m") as report:
        report("writing", 0.5)
    assert "model m: ready" in terminal.file.getvalue() and "━" in terminal.file.getvalue()


def test_a_run_toml_mistake_is_reported_before_converting(
    conversions: list[str], capsys, tmp_path: Path
) -> None:
    (tmp_path / "run.toml").write_text(RUN_TOML.replace("max_steps = 2", "max_step = 2"))
    assert main(["train", "run.toml"]) == 2
    assert "unknown key 'max_step'" in capsys.readouterr().err
    assert conversions == []


def test_a_hub_id_alias_is_the_hubs_when_the_package_is_absent(
    smollm: Any, conversions: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from affiner.planner.models import offline_model_for
    from affiner.tui.cli.provisioning import ensure_for_run_toml

    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert offline_model_for(hub_id) == smollm  # installed: the offline copy serves the id
    absent = dataclasses.replace(smollm, module="affiner_test_package_not_installed")
    monkeypatch.setattr(offline, "OFFLINE_MODELS", (absent,))
    assert offline_model_for(hub_id) is None and offline_model_for("smollm2") == absent
    (tmp_path / "run.toml").write_text(RUN_TOML.replace('"smollm2"', f'"{hub_id}"'))
    assert ensure_for_run_toml(tmp_path / "run.toml") is None
    assert conversions == []
