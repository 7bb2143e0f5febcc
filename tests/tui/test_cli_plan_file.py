"""``affiner plan run.toml`` and ``--save``: a run.toml's settings are stated and survive."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.model_configs import LLAMA_3_8B
from tests.plan_helpers import small_llama_folder

RUN_TOML = """\
[model]
name_or_path = "model"

[method]
name = "lora"
lora_rank = 8
lora_alpha = 8
target_modules = ["q_proj", "v_proj"]

[data]
train = "train.jsonl"
max_seq_len = 256

[training]
optimizer = "adamw"
gradient_checkpointing = false
micro_batch = 2
grad_accum = 4
epochs = 2
learning_rate = 1e-4

[eval]
every_steps = 7
"""


@pytest.fixture
def run_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny Llama-shaped config.json folder (no weights), its data, and a run.toml."""
    small_llama_folder(tmp_path, monkeypatch)
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML)
    return path


@pytest.fixture
def fake_cpu_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU plan without the real measurements: a fixed matmul rate and a process-baseline
    child that answers at once (the real ones: test_cpu_throughput, test_process_baseline)."""
    import affiner.planner.hardware.cpu_throughput as ct
    import affiner.planner.hardware.process_baseline as pb

    monkeypatch.setattr(ct, "machine_load", lambda: (0.0, 4))
    monkeypatch.setattr(ct, "_time_rates", lambda cpu, size, s: (0.125, None, "fake"))
    monkeypatch.setattr(
        pb, "run_child", lambda timeout=0: {"rss": 400 << 20, "peak_rss": 500 << 20}
    )


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    from affiner.tui.cli.entry import main

    assert main(["plan", *args, "--vram", "24", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_run_toml_is_planned_as_stated(run_toml: Path, capsys) -> None:
    data = _plan(capsys, str(run_toml))
    (cand,) = data["candidates"]
    assert cand["method"] == "lora" and cand["fits"]
    assert cand["optimizer"] == "adamw" and cand["gradient_checkpointing"] is False
    assert cand["lora_targets"] == ["q_proj", "v_proj"]
    assert (cand["lora_rank"], cand["lora_alpha"], cand["micro_batch"]) == (8, 8, 2)
    assert cand["grad_accum"] == 4 and cand["seq_len"] == 256
    assert {"optimizer", "gradient_checkpointing", "lora_targets", "micro_batch"} <= set(
        cand["stated"]
    )
    assert cand["chosen"] == {}
    assert data["data"]["rows"] == 36 and "max_seq_len 256" in data["data"]["note"]
    assert data["run_toml"] == str(run_toml)


def test_a_flag_beside_the_file_replaces_its_value(run_toml: Path, capsys) -> None:
    (cand,) = _plan(capsys, str(run_toml), "--optimizer", "adamw8bit")["candidates"]
    assert cand["optimizer"] == "adamw8bit" and cand["lora_targets"] == ["q_proj", "v_proj"]


def test_save_writes_the_plan_and_the_round_trip_is_the_same_run(run_toml: Path, capsys) -> None:
    from affiner.runner.config import load_config

    out = run_toml.parent / "out.toml"
    data = _plan(capsys, str(run_toml), "--save", str(out))
    assert data["saved"] == str(out)
    source, saved = load_config(run_toml), load_config(out)
    assert saved.training.optimizer == "adamw" and saved.training.gradient_checkpointing is False
    assert saved.method.target_modules == ["q_proj", "v_proj"]
    for name in ("model", "method", "data", "training", "eval", "checkpoint", "output"):
        assert getattr(saved, name) == getattr(source, name), name
    assert saved.plan.predicted_peak_bytes == data["candidates"][0]["peak_bytes"]
    from affiner.runner.run import prepare_run

    prepared = prepare_run(out, preflight=False)  # what `affiner train out.toml` does first
    assert prepared.run_dir.path.is_dir()
    again = run_toml.parent / "again.toml"
    _plan(capsys, str(out), "--save", str(again))
    assert dataclasses.replace(load_config(again), plan=saved.plan) == saved


def test_save_from_flags_states_them_in_the_file(run_toml: Path, capsys) -> None:
    from affiner.runner.config import load_config

    out = run_toml.parent / "flags.toml"
    model = str(run_toml.parent / "model")
    args = ("--model", model, "--method", "lora", "--optimizer", "adamw", "--targets", "q_proj")
    data = _plan(capsys, *args, "--gradient-checkpointing", "off", "--data", "train.jsonl",
                 "--save", str(out))  # fmt: skip
    cfg = load_config(out)
    assert cfg.model.name_or_path == model and cfg.data.train.endswith("train.jsonl")
    assert (cfg.training.optimizer, cfg.training.gradient_checkpointing) == ("adamw", False)
    assert cfg.method.target_modules == ["q_proj"]
    assert cfg.training.micro_batch == data["candidates"][0]["micro_batch"]
    assert load_config(out) == cfg


def test_save_refuses_without_data_an_existing_file_and_a_bare_size(run_toml: Path, capsys) -> None:
    from affiner.tui.cli.entry import main

    model = str(run_toml.parent / "model")
    assert main(["plan", "--model", model, "--vram", "24", "--save", "x.toml"]) == 2
    assert "add --data train.jsonl" in capsys.readouterr().err
    assert not Path("x.toml").exists()
    assert main(["plan", str(run_toml), "--vram", "24", "--save", str(run_toml)]) == 2
    assert "add --force" in capsys.readouterr().err
    assert run_toml.read_text() == RUN_TOML
    sized = ["plan", "--model", "7B", "--vram", "24", "--data", "train.jsonl", "--save", "y.toml"]
    assert main(sized) == 2
    assert "is a size" in capsys.readouterr().err


def test_a_config_error_is_reported_at_its_line(run_toml: Path, capsys) -> None:
    from affiner.tui.cli.entry import main

    run_toml.write_text(RUN_TOML.replace('optimizer = "adamw"', 'optimiser = "adamw"'))
    assert main(["plan", str(run_toml), "--vram", "24"]) == 2
    err = capsys.readouterr().err
    assert f"{run_toml}:15" in err and "optimiser" in err and "Traceback" not in err
    assert main(["plan", "--vram", "24"]) == 2
    assert "give a model" in capsys.readouterr().err


def test_token_lengths_come_from_the_folders_tokenizer_json(run_toml: Path, capsys) -> None:
    """Counted with `tokenizers` alone (no transformers); reported, the plan stays at max."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {w: i for i, w in enumerate(["[UNK]", "say", "word", "ok", *map(str, range(40))])}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(run_toml.parent / "model" / "tokenizer.json"))
    data = _plan(capsys, str(run_toml))
    lengths = data["data"]["lengths"]
    assert 3 <= lengths["p50"] <= lengths["p95"] <= lengths["p99"] <= lengths["max"] == 11
    assert lengths["longer_than_max_seq_len"] == 0
    assert data["candidates"][0]["seq_len"] == 256


def test_another_method_beside_the_file_keeps_its_other_settings(run_toml: Path, capsys) -> None:
    from affiner.runner.config import load_config

    out = run_toml.parent / "qlora.toml"
    (cand,) = _plan(capsys, str(run_toml), "--method", "qlora", "--save", str(out))["candidates"]
    assert cand["method"] == "qlora" and cand["quantization"] == "nf4"
    assert cand["lora_targets"] == ["q_proj", "v_proj"] and cand["optimizer"] == "adamw"
    cfg = load_config(out)
    assert (cfg.method.name, cfg.quantization, cfg.method.lora_rank) == ("qlora", "nf4", 8)
    assert cfg.training.learning_rate == 1e-4 and cfg.eval.every_steps == 7


def test_a_cpu_plan_saves_a_cpu_run(run_toml: Path, capsys, fake_cpu_measures) -> None:
    from affiner.runner.config import load_config
    from affiner.tui.cli.entry import main

    model = str(run_toml.parent / "model")
    args = ["plan", "--model", model, "--cpu", "--data", "train.jsonl", "--save", "cpu.toml"]
    assert main(args) == 0
    assert "Saved cpu.toml" in capsys.readouterr().out
    assert load_config("cpu.toml").training.device == "cpu"


def test_planning_a_run_toml_with_its_data_imports_nothing_heavy(run_toml: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from affiner.tui.cli.entry import main;"
        "rc = main(['plan', 'run.toml', '--vram', '24', '--json', '--save', 'light.toml']);"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'textual') if m in sys.modules];"
        "print(heavy); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=run_toml.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[]")


def _ran_on_cpu(folder: Path, seconds: float) -> None:
    """The run.toml's folder as a run that logged steps of `seconds` each on the CPU."""
    from affiner.runner.run import EventWriter, RunStarted, TrainLog

    with EventWriter(folder) as writer:
        writer.write(RunStarted(device="cpu", t=1000.0))
        for i, step in enumerate((1, 5, 10, 15)):
            writer.write(TrainLog(step=step, t=1000.0 + 2 + i * 5 * seconds))


def _plan_cpu(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    from affiner.tui.cli.entry import main

    assert main(["plan", *args, "--cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_run_toml_that_ran_is_planned_at_its_measured_step(
    run_toml: Path, capsys, fake_cpu_measures
) -> None:
    model = _plan_cpu(capsys, str(run_toml))["candidates"][0]["time"]
    _ran_on_cpu(run_toml.parent, 3.0 * model["step_seconds"])
    (cand,) = _plan_cpu(capsys, str(run_toml))["candidates"]
    t = cand["time"]
    assert t["calibration"] == pytest.approx(3.0, rel=1e-6)
    assert t["step_seconds"] == pytest.approx(3.0 * model["step_seconds"])
    assert t["total_seconds"] == pytest.approx(t["step_seconds"] * t["total_steps"])
    assert "calibrated by 14 logged steps of this run" in t["notes"][-1]
    # a "what if" beside it is scaled by how the run compared with its own estimate
    (bigger,) = _plan_cpu(capsys, str(run_toml), "--micro-batch", "8")["candidates"]
    assert bigger["micro_batch"] == 8
    assert bigger["time"]["calibration"] == pytest.approx(3.0, rel=1e-6)


def test_steps_measured_on_the_cpu_do_not_calibrate_a_gpu_plan(run_toml: Path, capsys) -> None:
    _ran_on_cpu(run_toml.parent, 10.0)
    data = _plan(capsys, str(run_toml))
    assert data["candidates"][0]["time"]["calibration"] is None
    assert any("not calibrated" in n and "ran on the CPU" in n for n in data["notes"])


def test_a_classifier_is_planned_with_a_class_head(tmp_path: Path, capsys) -> None:
    from tests.model_configs import BERT_BASE_UNCASED

    folder = tmp_path / "bert"
    folder.mkdir()
    mlm = dict(BERT_BASE_UNCASED, architectures=["BertForMaskedLM"])
    (folder / "config.json").write_text(json.dumps(mlm))
    base = ["--model", str(folder), "--method", "full", "--seq-len", "512", "--micro-batch", "4"]
    lm = _plan(capsys, *base, "--task", "causal_lm")["candidates"][0]
    cls = _plan(capsys, *base, "--task", "classification")["candidates"][0]
    default = _plan(capsys, *base)["candidates"][0]  # an encoder trains as a classifier
    assert lm["breakdown"]["logits"] > 0 or lm["peak_bytes"] > cls["peak_bytes"]
    assert cls["breakdown"]["logits"] == 0 and cls["peak_bytes"] < lm["peak_bytes"]
    assert default["peak_bytes"] == cls["peak_bytes"]
    # a run.toml's task is stated too
    run = tmp_path / "run.toml"
    run.write_text(
        f'[model]\nname_or_path = "{folder}"\ntask = "classification"\n'
        '[method]\nname = "full"\n[data]\ntrain = "x.jsonl"\nmax_seq_len = 512\n'
        "[training]\nmicro_batch = 4\n"
    )
    from_file = _plan(capsys, str(run))["candidates"][0]
    as_lm = _plan(capsys, str(run), "--task", "causal_lm")["candidates"][0]
    assert from_file["breakdown"]["logits"] == 0 and from_file["peak_bytes"] < as_lm["peak_bytes"]


def test_a_decoder_classifier_carries_no_vocabulary_head() -> None:
    from affiner.planner.models.shapes import spec_for_task, spec_from_config

    lm = spec_from_config(LLAMA_3_8B, name="llama-3-8b")
    cls = spec_for_task(lm, "classification")
    assert cls.architecture == "LlamaForSequenceClassification" and not cls.has_lm_head
    # the untied 128256 x 4096 head is gone, a 2-label score head is there
    assert lm.params_total - cls.params_total == 128256 * 4096 - 2 * 4096
    assert spec_for_task(lm, "causal_lm") is lm
