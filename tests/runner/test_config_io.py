"""run.toml: round trip, and every mistake named by file, line and key."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.config import checks as config_checks
from affiner.runner.config.from_plan import config_from_plan
from affiner.runner.config.io import (
    ConfigError,
    dumps_config,
    load_config,
    loads_config,
    save_config,
    validate_config,
)
from affiner.runner.config.schema import RunConfig

BASE = '[model]\nname_or_path = "org/model"\n\n[data]\ntrain = "/data/train.jsonl"\n'


def error_for(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        loads_config(text, source="run.toml")
    return caught.value


def full_config() -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = "org/model"
    cfg.model.revision = "main"
    cfg.method.name = "lora"
    cfg.method.target_modules = ["q_proj", "v_proj"]
    cfg.data.train = "/data/train.jsonl"
    cfg.data.columns = {"text": "review", "label": 'the "class"'}
    cfg.data.labels = ["bad", "good"]
    cfg.model.task = "classification"
    cfg.training.learning_rate = 1e-4
    cfg.plan.predicted_peak_bytes = 3_000_000_000
    cfg.plan.predicted_step_seconds = 0.5
    return cfg


def test_dump_then_load_gives_the_same_config(tmp_path: Path) -> None:
    cfg = full_config()
    path = save_config(cfg, tmp_path / "run.toml")
    assert path.read_text().startswith("# affiner run configuration")
    assert load_config(path) == cfg
    assert loads_config(dumps_config(RunConfig(model=cfg.model, data=cfg.data))) == RunConfig(
        model=cfg.model, data=cfg.data
    )
    assert not list(tmp_path.glob(".run-*"))  # the temporary file of the atomic write is gone


def test_relative_paths_resolve_against_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "run.toml").write_text(
        '[model]\nname_or_path = "model"\n[data]\ntrain = "data/train.jsonl"\neval = "data/missing.jsonl"\n'
    )
    cfg = load_config(tmp_path / "run.toml")
    assert cfg.model.name_or_path == str((tmp_path / "model").resolve())
    assert cfg.data.train == str((tmp_path / "data" / "train.jsonl").resolve())
    assert cfg.data.eval == str((tmp_path / "data" / "missing.jsonl").resolve())
    hub = loads_config(BASE.replace("/data/train.jsonl", "imdb"), base_dir=tmp_path)
    assert hub.data.train == "imdb" and hub.model.name_or_path == "org/model"


def test_toml_syntax_error_names_the_line() -> None:
    err = error_for(BASE + "[method]\nname = lora\n")
    assert err.line == 7 and "not valid TOML" in str(err) and "run.toml:7" in str(err)
    assert isinstance(err, AffinerError)


def test_unknown_key_and_section_suggest_the_closest() -> None:
    err = error_for(BASE + "\n[method]\nlora_rnk = 8\n")
    assert err.key == "[method].lora_rnk" and err.line == 8
    assert "did you mean 'lora_rank'" in str(err)
    err = error_for(BASE + "[trainign]\nepochs = 1\n")
    assert err.key == "[trainign]" and err.line == 6 and "did you mean 'training'" in str(err)


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("[method]\nlora_rank = 8.5\n", "[method].lora_rank", "whole number"),
        ("[training]\nmicro_batch = true\n", "[training].micro_batch", "whole number"),
        ('[training]\nlearning_rate = "fast"\n', "[training].learning_rate", "a number"),
        ("[data]\nlabels = [1, 2]\n", "[data].labels", "list of text"),
        ("[output]\nmerge = 1\n", "[output].merge", "true or false"),
    ],
)
def test_wrong_types_name_the_key(extra: str, key: str, expected: str) -> None:
    text = (
        BASE.replace("[data]\n", "[data]\n" + extra.split("\n", 1)[1])
        if extra.startswith("[data]")
        else BASE + extra
    )
    err = error_for(text)
    assert err.key == key and expected in str(err) and err.line is not None


def test_an_int_is_fine_where_a_float_is_expected() -> None:
    cfg = loads_config(BASE + "[training]\nepochs = 2\nlearning_rate = 1\n")
    assert cfg.training.epochs == 2.0 and isinstance(cfg.training.epochs, float)


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('[method]\nname = "dora"\n', "[method].name", "allowed: full, freeze, lora"),
        ('[method]\nquantization = "int4"\n', "[method].quantization", "allowed: none, nf4"),
        ('[training]\nprecision = "fp8"\n', "[training].precision", "allowed: auto, fp32"),
        ("[method]\nlora_rank = 0\n", "[method].lora_rank", "at least 1"),
        ("[method]\nlora_alpha = -4\n", "[method].lora_alpha", "greater than 0"),
        ("[method]\nlora_dropout = 1.0\n", "[method].lora_dropout", "[0, 1)"),
        (
            '[method]\nname = "freeze"\ntrainable_layers = 0\n',
            "[method].trainable_layers",
            "at least 1",
        ),
        (
            '[method]\nname = "full"\nquantization = "nf4"\n',
            "[method].quantization",
            "cannot be quantized",
        ),
        (
            '[method]\nname = "qlora"\nquantization = "int8"\n',
            "[method].quantization",
            "qlora is 4-bit",
        ),
        ("[eval]\nearly_stopping_patience = 3\n", "[eval].early_stopping_patience", "held-out"),
        ('[model]\ntask = "classification"\n', "[data].format", "classification"),
        ("[training]\nmax_steps = 0\n", "[training].max_steps", "-1"),
    ],
)
def test_bad_values_and_combinations_name_their_key(extra: str, key: str, words: str) -> None:
    text = BASE + extra
    if "early_stopping" in extra:
        text = (
            BASE.replace(
                'train = "/data/train.jsonl"', 'train = "/data/train.jsonl"\neval_fraction = 0'
            )
            + extra
        )
    if "classification" in extra:
        text = BASE.replace("[model]\n", '[model]\ntask = "classification"\n').replace(
            "[data]\n", '[data]\nformat = "chat"\n'
        )
    err = error_for(text)
    assert err.key == key, str(err)
    assert words in str(err)


def test_missing_model_train_and_eval_fraction_range_are_all_reported() -> None:
    err = error_for("[data]\neval_fraction = 0.7\n")
    assert err.key == "[model].name_or_path"
    assert any("[data].train" in p for p in err.problems)
    assert any("[data].eval_fraction" in p and "[0, 0.5]" in p for p in err.problems)
    assert "and 2 more" in str(err)


def test_quantization_without_a_bitsandbytes_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_checks, "find_spec", lambda name: None)
    err = error_for(BASE + '[method]\nname = "qlora"\n[training]\ndevice = "cpu"\n')
    assert err.key == "[method].name" and "not installed" in str(err)
    monkeypatch.undo()
    monkeypatch.setattr(config_checks.platform, "system", lambda: "Darwin")
    err = error_for(BASE + '[method]\nname = "lora8"\n[training]\ndevice = "cpu"\n')
    assert "Darwin" in str(err) and "int8" in str(err)
    assert config_checks.bitsandbytes_problem("cuda") == "there is no CUDA on macOS"


def test_half_precision_on_a_cpu_without_it_is_only_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_checks, "cpu_flags", lambda: {"avx2"})
    cfg = loads_config(BASE + '[training]\nprecision = "bf16"\ndevice = "cpu"\n')
    warnings = validate_config(cfg, where="run.toml")
    assert len(warnings) == 1 and "[training].precision" in warnings[0] and "bf16" in warnings[0]
    monkeypatch.setattr(config_checks, "cpu_flags", lambda: {"avx512_bf16"})
    assert validate_config(cfg) == []


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.fixture
def bnb_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantized plans are checked against bitsandbytes' backends; pretend this machine has them."""
    monkeypatch.setattr(config_checks, "bitsandbytes_problem", lambda device: None)


def candidate(**changes: object) -> SimpleNamespace:
    settings = SimpleNamespace(
        lora_alpha=16, lora_dropout=0.1, trainable_layers=2, attention="sdpa"
    )
    values = dict(
        method="qlora",
        quantization="nf4",
        precision="bf16",
        optimizer="paged_adamw8bit",
        gradient_checkpointing=True,
        micro_batch=2,
        grad_accum=8,
        seq_len=1024,
        lora_rank=8,
        peak_bytes=5_000_000_000,
        step_seconds=1.25,
        settings=settings,
        device=SimpleNamespace(kind="cuda", name="NVIDIA RTX 4090"),
    )
    values.update(changes)
    return SimpleNamespace(**values)


def test_config_from_plan_with_a_duck_typed_candidate(bnb_ok: None) -> None:
    cfg = config_from_plan(
        candidate(),
        model="org/model",
        train="/d/train.jsonl",
        epochs=1,
        eval__every_steps=10,
        checkpoint={"keep_last": 3},
    )
    assert (cfg.method.name, cfg.method.quantization, cfg.method.lora_rank) == ("qlora", "nf4", 8)
    assert (cfg.method.lora_alpha, cfg.method.lora_dropout) == (16, 0.1)
    assert (cfg.training.micro_batch, cfg.training.grad_accum, cfg.data.max_seq_len) == (2, 8, 1024)
    assert (cfg.training.optimizer, cfg.training.precision, cfg.training.device) == (
        "paged_adamw8bit",
        "bf16",
        "cuda",
    )
    assert (
        cfg.training.gradient_checkpointing
        and cfg.training.epochs == 1.0
        and cfg.eval.every_steps == 10
    )
    assert cfg.checkpoint.keep_last == 3
    assert (cfg.plan.predicted_peak_bytes, cfg.plan.predicted_step_seconds) == (5_000_000_000, 1.25)
    assert cfg.plan.device == "NVIDIA RTX 4090"
    assert loads_config(dumps_config(cfg)) == cfg


def test_config_from_plan_with_the_planners_own_candidate(bnb_ok: None) -> None:
    from affiner.planner.hardware.device import target_from_vram
    from affiner.planner.models.sizes import spec_from_size
    from affiner.planner.recommend import PlanRequest, plan

    report = plan(spec_from_size("1B"), target_from_vram(16), PlanRequest(method="qlora"))
    chosen = report.candidates[0]
    cfg = config_from_plan(
        chosen, model="org/model", train="/d/train.jsonl", plan__device="16 GB GPU"
    )
    assert cfg.method.name == chosen.settings.method == "qlora" and cfg.quantization == "nf4"
    assert (
        cfg.training.micro_batch == chosen.settings.micro_batch
        and cfg.data.max_seq_len == chosen.settings.seq_len
    )
    assert (
        cfg.method.target_modules == "all-linear"
        and cfg.plan.predicted_peak_bytes == chosen.peak_bytes
    )
    assert cfg.plan.device == "16 GB GPU"
    full = config_from_plan(
        candidate(method="full", quantization="none"), model="m", train="t.jsonl"
    )
    assert full.training.learning_rate == 2e-5


def test_config_from_plan_rejects_bad_overrides_and_values(bnb_ok: None) -> None:
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config_from_plan(candidate(), model="m", train="t.jsonl", epoch=1)
    with pytest.raises(ConfigError, match="several sections"):
        config_from_plan(candidate(), model="m", train="t.jsonl", seed=1)
    with pytest.raises(ConfigError, match="held-out data path"):
        config_from_plan(candidate(), model="m", train="t.jsonl", eval={"every_steps": 1})
    with pytest.raises(ConfigError, match="whole number"):
        config_from_plan(candidate(), model="m", train="t.jsonl", training__micro_batch="4")
    with pytest.raises(ConfigError) as caught:
        config_from_plan(
            candidate(method="lora", quantization=None, lora_rank=0), model="m", train="t.jsonl"
        )
    assert caught.value.key == "[method].lora_rank" and caught.value.file == "plan"
