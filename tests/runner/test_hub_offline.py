"""The runner asks `affiner.planner.hub` whether the hub is offline, at every call site.

"false" and "0" leave the hub online (they used to mean offline to the model loader's hint
and to the flash-attention check); "1", "true", "YES" take it offline everywhere.
"""

from __future__ import annotations

import importlib.util

import pytest

from affiner.runner.config.schema import DataSection, ModelSection, RunConfig
from affiner.runner.data.prepare import DataError, load_rows
from affiner.runner.training import modeling

TABLE = [("", False), ("0", False), ("false", False), ("1", True), ("true", True), ("YES", True)]


@pytest.fixture
def hub_flag(monkeypatch: pytest.MonkeyPatch):
    """Set HF_HUB_OFFLINE alone (tests run with HF_DATASETS_OFFLINE=1 otherwise)."""

    def set_flag(value: str) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        for name in ("TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)

    return set_flag


@pytest.mark.parametrize(("value", "offline"), TABLE)
def test_a_hub_data_set_is_refused_only_offline(
    value: str, offline: bool, hub_flag, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    asked: list[str] = []

    def fake_load_dataset(ref: str, *args: object, **kwargs: object) -> object:
        asked.append(ref)
        raise ConnectionError("no network in tests")

    hub_flag(value)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError) as raised:
        load_rows(DataSection(train="someone/some-dataset"))
    assert ("hub is offline" in str(raised.value)) is offline
    assert asked == ([] if offline else ["someone/some-dataset"])


@pytest.mark.parametrize(("value", "offline"), TABLE)
def test_the_model_loaders_hint_says_offline_only_when_it_is(
    value: str, offline: bool, hub_flag
) -> None:
    hub_flag(value)
    cfg = RunConfig(model=ModelSection(name_or_path="acme/not-here"))
    error = modeling._not_found(cfg, OSError("not found"))
    assert ("HF_HUB_OFFLINE is set" in (error.hint or "")) is offline


@pytest.mark.parametrize(("value", "offline"), TABLE)
def test_flash_attention_counts_on_hub_kernels_only_online(
    value: str, offline: bool, hub_flag, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without flash_attn but with ``kernels``, flash attention works only if the hub is reachable."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name == "kernels":
            return object()
        if name == "flash_attn":
            return None
        return real_find_spec(name, *args)

    hub_flag(value)
    monkeypatch.setattr(modeling.importlib.util, "find_spec", find_spec)
    if offline:
        with pytest.raises(modeling.AffinerError, match="flash_attn package"):
            modeling.check_attention("flash_attention_2", "cuda")
    else:
        modeling.check_attention("flash_attention_2", "cuda")
