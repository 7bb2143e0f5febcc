"""One vocabulary (`affiner.planner.vocabulary`): run.toml, the planner, the CLI and the
assistant use the same words, the same learning rates and the same reading of ``auto``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from affiner.planner.hardware.device import DeviceTarget, target_from_catalog
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import QUALITY_ORDER, PlanRequest, default_precision, plan
from affiner.planner.vocabulary import (
    LEARNING_RATES,
    LORA_METHODS,
    METHODS,
    OPTIMIZERS,
    PRECISION_SETTINGS,
    PRECISIONS,
    QUANTIZATIONS,
    resolve_auto_precision,
)
from affiner.runner.config import checks as config_checks
from affiner.runner.config import config_from_plan
from affiner.runner.config.io import ConfigError, loads_config
from affiner.runner.config.schema import RunConfig
from affiner.tui.assistant.flow import Settings
from affiner.tui.assistant.intents import METHOD_ALIASES, method_from_words

GIB = 1024**3


@pytest.fixture
def bnb_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantized methods are checked against bitsandbytes' backends; pretend they are there."""
    monkeypatch.setattr(config_checks, "bitsandbytes_problem", lambda device: None)


def run_toml(method: str, extra: str = "") -> str:
    return (
        f'[model]\nname_or_path = "org/model"\n\n[method]\nname = "{method}"\n\n'
        f'[data]\ntrain = "/data/train.jsonl"\n\n[training]\ndevice = "cuda"\n{extra}'
    )


# ------------------------------------------------------------------------ learning rates


def test_the_usual_learning_rates() -> None:
    assert LEARNING_RATES == {
        "full": 2e-5,
        "freeze": 5e-5,
        "lora": 2e-4,
        "qlora": 2e-4,
        "lora8": 2e-4,
    }


@pytest.mark.parametrize("method", METHODS)
def test_a_plan_a_hand_written_run_toml_and_the_assistant_agree_on_the_learning_rate(
    method: str, bnb_ok: None
) -> None:
    planned = config_from_plan(
        SimpleNamespace(method=method, precision="bf16", optimizer="adamw"),
        model="org/model",
        train="/data/train.jsonl",
    )
    by_hand = loads_config(run_toml(method))
    assistant = Settings().lr_for(method)
    assert (
        planned.training.learning_rate
        == by_hand.training.learning_rate
        == assistant
        == LEARNING_RATES[method]
    )


def test_the_defaults_agree_and_a_stated_learning_rate_wins(bnb_ok: None) -> None:
    cfg = RunConfig()
    assert cfg.training.learning_rate == LEARNING_RATES[cfg.method.name]
    assert Settings().learning_rate == LEARNING_RATES[cfg.method.name]
    stated = loads_config(run_toml("full", "learning_rate = 1e-3\n"))
    assert stated.training.learning_rate == 1e-3
    planned = config_from_plan(
        SimpleNamespace(method="full"), model="m", train="t.jsonl", learning_rate=3e-5
    )
    assert planned.training.learning_rate == 3e-5


# ------------------------------------------------------------------- run.toml's words


@pytest.mark.parametrize(
    ("table", "key", "bad", "allowed"),
    [
        ("method", "name", "dora", METHODS),
        ("method", "quantization", "int4", QUANTIZATIONS),
        ("training", "precision", "fp8", PRECISION_SETTINGS),
        ("training", "optimizer", "adamw_torch", OPTIMIZERS),
    ],
)
def test_run_toml_refuses_a_word_outside_the_vocabulary_and_lists_the_allowed_ones(
    table: str, key: str, bad: str, allowed: tuple[str, ...]
) -> None:
    text = f'[model]\nname_or_path = "m"\n[data]\ntrain = "t.jsonl"\n[{table}]\n{key} = "{bad}"\n'
    with pytest.raises(ConfigError) as caught:
        loads_config(text)
    assert caught.value.key == f"[{table}].{key}"
    assert "allowed: " + ", ".join(allowed) in str(caught.value)


@pytest.mark.parametrize(
    ("field", "spelling"),
    [("method", "layerwise"), ("quantization", "4bit"), ("optimizer", "paged_adamw_8bit")],
)
def test_a_plan_spelled_outside_the_vocabulary_is_refused_not_translated(
    field: str, spelling: str, bnb_ok: None
) -> None:
    candidate = SimpleNamespace(method="qlora", precision="bf16", optimizer="adamw")
    setattr(candidate, field, spelling)
    with pytest.raises(ConfigError, match="allowed: "):
        config_from_plan(candidate, model="m", train="t.jsonl")


@pytest.mark.parametrize(
    "device",
    [target_from_catalog("A100 80GB"), target_from_catalog("T4")],
    ids=["a100", "t4"],
)
def test_every_planned_candidate_is_a_run_toml_as_it_is(device: DeviceTarget, bnb_ok: None) -> None:
    report = plan(spec_from_size("0.5B"), device, PlanRequest())
    assert {c.method for c in report.candidates} == set(METHODS)
    for candidate in report.candidates:
        s = candidate.settings
        cfg = config_from_plan(candidate, model="m", train="t.jsonl")
        assert (cfg.method.name, cfg.method.quantization) == (s.method, s.quantization)
        assert (cfg.training.precision, cfg.training.optimizer) == (s.precision, s.optimizer)
        assert cfg.quantization == s.effective_quantization
        assert cfg.uses_lora == s.uses_lora == (s.method in LORA_METHODS)


# ----------------------------------------------------------------------- auto precision


@pytest.mark.parametrize(
    ("gpu", "bf16", "fp16", "expected"),
    [
        (True, True, True, "bf16"),
        (True, False, True, "fp16"),
        (True, False, False, "fp32"),
        (False, True, False, "fp32"),  # a CPU with AMX still trains auto in fp32
        (False, False, False, "fp32"),
    ],
)
def test_auto_precision(gpu: bool, bf16: bool, fp16: bool, expected: str) -> None:
    assert resolve_auto_precision("auto", gpu=gpu, bf16=bf16, fp16=fp16) == expected
    for stated in PRECISIONS:
        assert resolve_auto_precision(stated, gpu=gpu, bf16=bf16, fp16=fp16) == stated


def test_the_planner_plans_what_auto_will_run() -> None:
    cpu = DeviceTarget("cpu", "CPU (AMX)", "cpu", 32 * GIB, 24 * GIB, True, False)
    assert default_precision(cpu) == default_precision(cpu, "auto") == "fp32"
    assert default_precision(cpu, "bf16") == "bf16"
    assert default_precision(target_from_catalog("T4")) == "fp16"
    assert default_precision(target_from_catalog("A100 80GB")) == "bf16"
    report = plan(spec_from_size("135M"), cpu, PlanRequest(method="lora"))
    assert report.candidates[0].settings.precision == "fp32"
    forced = plan(spec_from_size("135M"), cpu, PlanRequest(method="lora", precision="bf16"))
    assert forced.candidates[0].settings.precision == "bf16"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_training_process_reads_auto_as_the_planner_does(
    native_bf16: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from affiner.runner.training.modeling import resolve_precision

    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native_bf16 or including_emulation,
    )
    gpu = resolve_precision("auto", "cuda").name
    assert gpu == resolve_auto_precision("auto", gpu=True, bf16=native_bf16)
    assert resolve_precision("auto", "cpu").name == "fp32"


# --------------------------------------------------------- tables keyed by the vocabulary


def test_every_method_table_names_every_method() -> None:
    from affiner.planner import explain
    from affiner.planner.timing import MFU
    from affiner.tui.assistant.answers import METHOD_NAMES
    from affiner.tui.widgets.plan_bars import SHORT_NAMES

    for table in (explain.METHOD_NAMES, MFU, METHOD_NAMES, SHORT_NAMES):
        assert set(table) == set(METHODS)
    assert sorted(QUALITY_ORDER) == sorted(METHODS)


def test_the_assistant_understands_each_method_by_its_name() -> None:
    for method in METHODS:
        assert method_from_words(method) == method
        assert method_from_words(f"the {method.upper()} method") == method
    assert set(METHOD_ALIASES.values()) == set(METHODS)


def test_the_cli_offers_the_vocabulary() -> None:
    import argparse

    from affiner.tui.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    method = next(a for a in subparsers.choices["plan"]._actions if a.dest == "method")
    assert tuple(method.choices) == METHODS


def test_the_trainer_has_an_optimizer_for_every_word() -> None:
    pytest.importorskip("transformers")
    from affiner.runner.training.model_card import _METHOD_WORDS
    from affiner.runner.training.setup import OPTIMIZERS as TRAINER_OPTIMIZERS

    assert set(TRAINER_OPTIMIZERS) == set(OPTIMIZERS)
    assert set(_METHOD_WORDS) == set(METHODS)
