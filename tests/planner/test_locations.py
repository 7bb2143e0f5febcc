"""affiner.planner.locations: one cache folder, used by the CPU rate and the offline models alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.planner.hardware import cpu_throughput as ct
from affiner.planner.hardware.report import CpuInfo
from affiner.planner.locations import cache_dir, hub_cache_dir
from affiner.planner.models.offline import OFFLINE_MODELS, converted_dir

CPU = CpuInfo(
    model="Test CPU", physical_cores=4, logical_cores=8, bf16=False, flags=("avx2", "fma")
)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFINER_CACHE", "~/mine")
    assert cache_dir() == Path.home() / "mine"
    monkeypatch.delenv("AFFINER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert cache_dir() == Path("/somewhere/affiner")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "affiner"


def test_the_cpu_rate_and_the_offline_models_share_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFFINER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "affiner"
    # the CPU rate is read from the folder
    figure = ct.estimate_cpu_tflops(CPU, None)
    key = ct.cache_key(CPU, ct._installed_torch_version())
    folder.mkdir()
    (folder / ct.CACHE_FILE).write_text(json.dumps({key: figure.to_json()}))
    assert ct.cached_cpu_tflops(CPU) == figure
    # and a converted offline model lands in it
    gguf = next(m for m in OFFLINE_MODELS if m.kind == "gguf")
    assert converted_dir(gguf) == folder / "models" / gguf.key


def test_hub_cache_dir_follows_huggingface_hubs_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert hub_cache_dir() == Path("/xdg/huggingface/hub")
    monkeypatch.setenv("HF_HOME", "/hf")
    assert hub_cache_dir() == Path("/hf/hub")
    monkeypatch.setenv("HF_HUB_CACHE", "/cache")
    assert hub_cache_dir() == Path("/cache")
