"""affiner.planner.hub: one reading of HF_HUB_OFFLINE, the one huggingface_hub acts on.

The runner's call sites (the data loader, the model loader's hint, the flash-attention check)
are checked against the same table in tests/runner/test_hub_offline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.hub import datasets_offline, hub_offline, is_true
from affiner.planner.models import resolve as model_resolve
from affiner.planner.models.resolve import resolve_model
from tests.model_configs import GPT2_SMALL

#: (HF_HUB_OFFLINE, offline?) as huggingface_hub reads it.
TABLE = [
    ("", False),
    ("0", False),
    ("false", False),
    ("False", False),
    ("off", False),
    ("no", False),
    ("1", True),
    ("true", True),
    ("TRUE", True),
    ("YES", True),
    ("on", True),
]


@pytest.mark.parametrize(("value", "offline"), TABLE)
def test_hub_offline_reads_the_flag_as_huggingface_hub_does(value: str, offline: bool) -> None:
    assert hub_offline({"HF_HUB_OFFLINE": value}) is offline
    assert hub_offline({"TRANSFORMERS_OFFLINE": value}) is offline


def test_the_true_values_are_huggingface_hubs() -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    assert {v.upper() for v in constants.ENV_VARS_TRUE_VALUES} == {"1", "ON", "YES", "TRUE"}
    for value, _ in TABLE:
        assert is_true(value) is constants._is_true(value), value


def test_transformers_offline_counts_only_when_hf_hub_offline_is_unset_or_empty() -> None:
    """huggingface_hub reads ``HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE``: a set 0 wins."""
    assert hub_offline({}) is False
    assert hub_offline({"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "1"}) is True
    assert hub_offline({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}) is False


def test_datasets_offline_adds_hf_datasets_offline_to_the_hub_rule() -> None:
    assert datasets_offline({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "0"}) is True
    assert datasets_offline({"HF_DATASETS_OFFLINE": "yes"}) is True
    assert datasets_offline({"HF_HUB_OFFLINE": "false", "HF_DATASETS_OFFLINE": "false"}) is False


@pytest.mark.parametrize(("value", "offline"), TABLE)
def test_the_resolver_fetches_only_when_the_hub_is_online(
    value: str, offline: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id not in the cache: offline it is an error naming HF_HUB_OFFLINE, online it is fetched."""
    import huggingface_hub

    fetched: list[str] = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        fetched.append(repo_id)
        file = tmp_path / "fetched" / "config.json"
        file.parent.mkdir(exist_ok=True)
        file.write_text(json.dumps(GPT2_SMALL))
        return str(file)

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(model_resolve, "hub_reachable", lambda: True)
    if offline:
        with pytest.raises(AffinerError, match="HF_HUB_OFFLINE"):
            resolve_model("acme/not-downloaded")
        assert fetched == []
    else:
        assert resolve_model("acme/not-downloaded").source == "hub"
        assert fetched == ["acme/not-downloaded"]
