"""``affiner plan`` with run.toml's settings stated: each survives into the JSON unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def plan_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Runs ``affiner plan --model 7B --vram 24 --json ARGS`` in process; returns the JSON."""
    from affiner.tui.cli.entry import main

    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args: str) -> dict:
        assert main(["plan", "--model", "7B", "--vram", "24", "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    return run


def test_checkpointing_off_is_reported_as_not_fitting_with_the_alternative(plan_json) -> None:
    data = plan_json("--method", "lora", "--seq-len", "2048", "--gradient-checkpointing", "off")
    (cand,) = data["candidates"]
    assert cand["gradient_checkpointing"] is False and cand["fits"] is False
    assert data["recommended"] is None
    assert "gradient_checkpointing" in cand["stated"]
    assert "more than the" in cand["reasons"][0]
    alt = cand["alternatives"][0]
    assert alt["change"] == {"gradient_checkpointing": True} and alt["fits"]
    assert alt["text"].startswith("with gradient checkpointing on: ")
    auto = plan_json("--method", "lora", "--seq-len", "2048")["candidates"][0]
    assert auto["gradient_checkpointing"] is True and auto["fits"]
    assert auto["chosen"]["gradient_checkpointing"] == "it does not fit without"


def test_optimizer_precision_and_attention_stay(plan_json) -> None:
    data = plan_json("--optimizer", "adamw", "--precision", "fp32", "--attention", "eager")
    assert {c["optimizer"] for c in data["candidates"]} == {"adamw"}
    assert {c["precision"] for c in data["candidates"]} == {"fp32"}
    assert {c["attention"] for c in data["candidates"]} == {"eager"}
    for cand in data["candidates"]:
        assert {"optimizer", "precision", "attention"} <= set(cand["stated"])
        assert not cand["fits"] or not cand["alternatives"]


def test_targets_subset_needs_less_than_all_linear(plan_json) -> None:
    fixed = ("--method", "lora", "--micro-batch", "1", "--gradient-checkpointing", "off")
    some = plan_json(*fixed, "--targets", "q_proj,v_proj")["candidates"][0]
    every = plan_json(*fixed, "--targets", "all-linear")["candidates"][0]
    assert some["lora_targets"] == ["q_proj", "v_proj"] and every["lora_targets"] == ["all-linear"]
    assert some["peak_bytes"] < every["peak_bytes"]
    assert some["trainable_params"] < every["trainable_params"]


def test_lora_and_quantization_settings_stay(plan_json) -> None:
    data = plan_json(
        "--method",
        "qlora",
        "--quantization",
        "fp4",
        "--no-double-quant",
        "--lora-rank",
        "8",
        "--lora-alpha",
        "4",
        "--lora-dropout",
        "0.1",
    )
    (cand,) = data["candidates"]
    assert cand["quantization"] == "fp4" and cand["double_quant"] is False
    assert (cand["lora_rank"], cand["lora_alpha"], cand["lora_dropout"]) == (8, 4, 0.1)
    freeze = plan_json("--method", "freeze", "--trainable-layers", "3")["candidates"][0]
    assert freeze["trainable_layers"] == 3 and "trainable_layers" in freeze["stated"]


def test_every_candidate_carries_the_three_byte_figures(plan_json) -> None:
    for cand in plan_json()["candidates"]:
        assert 0 < cand["allocated_bytes"] <= cand["reserved_bytes"] <= cand["peak_bytes"]
        assert cand["stated"] == []


def test_the_table_names_its_figure(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from affiner.tui.cli.entry import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "120")
    args = ["plan", "--model", "7B", "--vram", "24", "--seq-len", "2048"]
    assert main([*args, "--gradient-checkpointing", "off", "--method", "lora"]) == 0
    out = capsys.readouterr().out
    assert "peak (device, GiB)" in out and "would fit with gradient checkpointing on" in out
    assert main([*args, "--method", "lora"]) == 0
    assert "max_memory_reserved" in capsys.readouterr().out


def test_settings_run_toml_refuses_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from affiner.tui.cli.entry import main

    base = ["plan", "--model", "7B", "--vram", "24", "--json"]
    assert main([*base, "--method", "full", "--quantization", "nf4"]) != 0
    assert main([*base, "--method", "lora", "--targets", "nope_proj"]) != 0
    err = capsys.readouterr().err
    assert "cannot be quantized" in err and "not a linear layer" in err
