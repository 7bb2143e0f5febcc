"""Parameter counts by arithmetic, held to what transformers 5 actually builds.

The yardstick: the same config built by transformers on the meta device (shapes, no
memory), counted with ``sum(p.numel() for p in model.parameters())``. transformers is
imported once for the module (a fixture), and every model is built under
``torch.device("meta")``, so even Mixtral-8x7B costs milliseconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.models.spec import MODULE_KEYS, ModelSpec
from tests.model_configs import (
    BERT_BASE_UNCASED,
    FALCON_7B,
    GEMMA_2B,
    GPT2_SMALL,
    LLAMA_3_2_1B,
    MIXTRAL_8X7B,
    OPT_350M,
    PHI_3_MINI_4K,
    PUBLISHED,
    PUBLISHED_PARAMS,
    QWEN2_0_5B,
)

#: Small variants that exercise the switches real configs rarely combine.
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "llama-biases": TINY_LLAMA | {"attention_bias": True, "mlp_bias": True},
    "llama-tied": TINY_LLAMA | {"tie_word_embeddings": True},
    "llama-classifier": TINY_LLAMA
    | {
        "architectures": ["LlamaForSequenceClassification"],
        "id2label": {"0": "a", "1": "b", "2": "c"},
    },
    "qwen2-base-model": QWEN2_0_5B | {"architectures": ["Qwen2Model"], "num_hidden_layers": 2},
    "qwen3-bias": TINY_LLAMA | {"model_type": "qwen3", "attention_bias": True, "head_dim": 32},
    "mistral-sparse": {"model_type": "mistral", "num_hidden_layers": 2, "hidden_size": 256},
    "gpt2-untied-cross": GPT2_SMALL
    | {"n_layer": 2, "tie_word_embeddings": False, "add_cross_attention": True, "n_inner": 1000},
    "falcon-new-arch": {
        "model_type": "falcon",
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_kv_heads": 2,
        "num_hidden_layers": 2,
        "new_decoder_architecture": True,
        "vocab_size": 500,
        "bias": True,
    },
    "falcon-sequential-alibi": FALCON_7B
    | {"num_hidden_layers": 2, "parallel_attn": False, "alibi": True, "multi_query": False},
    "opt-no-final-norm-affine": OPT_350M
    | {"num_hidden_layers": 2, "layer_norm_elementwise_affine": False, "enable_bias": False},
    "bert-model": BERT_BASE_UNCASED | {"architectures": ["BertModel"], "num_hidden_layers": 2},
    "bert-pretraining": BERT_BASE_UNCASED | {"architectures": ["BertForPreTraining"]},
    "bert-classifier": BERT_BASE_UNCASED
    | {"architectures": ["BertForSequenceClassification"], "num_labels": 5},
    "bert-tokens": BERT_BASE_UNCASED | {"architectures": ["BertForTokenClassification"]},
}
ALL = PUBLISHED | VARIANTS


@pytest.fixture(scope="module")
def meta_build():
    """Build a config's model on the meta device with transformers, the way training would."""
    import torch
    import transformers

    built: dict[str, Any] = {}

    def build(name: str, config: dict[str, Any], cls_name: str):
        key = f"{name}:{cls_name}"
        if key not in built:
            conf = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
            with torch.device("meta"):
                built[key] = getattr(transformers, cls_name)._from_config(conf)
        return built[key]

    return build


def _spec(name: str) -> ModelSpec:
    return spec_from_config(ALL[name], name=name)


@pytest.mark.parametrize("name", list(ALL))
def test_count_matches_transformers_exactly(name: str, meta_build) -> None:
    spec = _spec(name)
    assert spec.source == "config"  # counted by arithmetic, not by the meta fallback
    model = meta_build(name, ALL[name], spec.architecture)
    assert spec.params_total == sum(p.numel() for p in model.parameters())
    assert set(spec.modules) == set(MODULE_KEYS)
    assert sum(spec.modules.values()) == spec.params_total
    assert all(count >= 0 for count in spec.modules.values())


@pytest.mark.parametrize("name", list(ALL))
def test_lora_targets_are_the_real_modules(name: str, meta_build) -> None:
    """Each target's parameters equal the summed numel of the modules peft would wrap."""
    import torch
    from transformers.pytorch_utils import Conv1D

    spec = _spec(name)
    model = meta_build(name, ALL[name], spec.architecture)
    head = model.get_output_embeddings()
    real: dict[tuple[str, int, int, bool], int] = {}
    for path, module in model.named_modules():
        short = path.rsplit(".", 1)[-1]
        if module is head or short in ("pooler", "classifier", "score") or ".cls." in f".{path}.":
            continue
        if ".pooler." in f".{path}." or ".classifier" in f".{path}":
            continue
        if isinstance(module, torch.nn.Linear):
            key = (short, module.in_features, module.out_features, module.bias is not None)
        elif isinstance(module, Conv1D):
            key = (short, *module.weight.shape, module.bias is not None)
        elif short == "experts":
            for pname, param in module.named_parameters(recurse=False):
                key = (f"experts.{pname}", param.shape[2], param.shape[1], False)
                real[key] = real.get(key, 0) + param.numel()
            continue
        else:
            continue
        real[key] = real.get(key, 0) + sum(p.numel() for p in module.parameters())
    ours: dict[tuple[str, int, int, bool], int] = {}
    for target in spec.lora_targets:
        key = (target.name, target.in_features, target.out_features, target.bias)
        ours[key] = ours.get(key, 0) + target.params
    assert ours == real


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_published_counts(name: str) -> None:
    assert _spec(name).params_total == PUBLISHED_PARAMS[name]


def test_mixtral_active_parameters_by_hand() -> None:
    spec = spec_from_config(MIXTRAL_8X7B, name="mixtral")
    hidden, inter, layers, vocab = 4096, 14336, 32, 32000
    attention = layers * (2 * hidden * hidden + 2 * hidden * 1024)
    router = layers * 8 * hidden
    experts_used = layers * 2 * 3 * hidden * inter
    norms = (2 * layers + 1) * hidden
    assert spec.params_active == 2 * vocab * hidden + attention + router + experts_used + norms
    assert spec.active_params == spec.params_active == 12_879_925_248
    assert (spec.num_experts, spec.experts_per_token) == (8, 2)
    kinds = {target.name: target.kind for target in spec.lora_targets}
    assert kinds["experts.gate_up_proj"] == "expert" and kinds["q_proj"] == "linear"


def test_family_details_the_memory_model_reads() -> None:
    gemma = spec_from_config(GEMMA_2B, name="gemma")
    assert gemma.tied_embeddings and gemma.modules["head"] == 0
    assert (gemma.head_dim, gemma.num_kv_heads, gemma.hidden_act) == (256, 1, "gelu_pytorch_tanh")
    qwen = {t.name: t for t in spec_from_config(QWEN2_0_5B, name="qwen").lora_targets}
    assert qwen["q_proj"].bias and qwen["k_proj"].bias and qwen["v_proj"].bias
    assert not qwen["o_proj"].bias
    phi = {t.name: t for t in spec_from_config(PHI_3_MINI_4K, name="phi").lora_targets}
    assert set(phi) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert phi["qkv_proj"].out_features == 3 * 3072 and phi["gate_up_proj"].out_features == 16384
    gpt2 = spec_from_config(GPT2_SMALL, name="gpt2")
    shapes = {(t.name, t.in_features, t.out_features, t.kind) for t in gpt2.lora_targets}
    assert shapes == {
        ("c_attn", 768, 2304, "conv1d"),
        ("c_proj", 768, 768, "conv1d"),
        ("c_fc", 768, 3072, "conv1d"),
        ("c_proj", 3072, 768, "conv1d"),
    }
    assert gpt2.modules["embeddings"] == (50257 + 1024) * 768 and gpt2.norm_kind == "layernorm"
    assert (gpt2.attention_dropout, gpt2.hidden_dropout) == (0.1, 0.1)
    falcon = spec_from_config(FALCON_7B, name="falcon")
    assert falcon.num_kv_heads == 1 and falcon.parallel_residual
    qkv = next(t for t in falcon.lora_targets if t.name == "query_key_value")
    assert qkv.out_features == 4544 + 2 * 64
    opt = spec_from_config(OPT_350M, name="opt")
    assert opt.modules["embeddings"] == 50272 * 512 + (2048 + 2) * 1024
    assert {"project_in", "project_out"} <= {t.name for t in opt.lora_targets}
    bert = spec_from_config(BERT_BASE_UNCASED, name="bert")
    assert not bert.is_decoder and bert.modules["embeddings"] == (30522 + 512 + 2) * 768
    llama = spec_from_config(LLAMA_3_2_1B, name="llama")
    assert (llama.head_dim, llama.num_kv_heads, llama.mlp_kind, llama.dtype) == (
        64,
        8,
        "gated",
        "bfloat16",
    )
    assert llama.tied_embeddings and llama.modules["head"] == 0


def test_tied_and_untied_differ_by_the_head() -> None:
    tied = spec_from_config(VARIANTS["llama-tied"], name="t")
    untied = spec_from_config(TINY_LLAMA, name="u")
    assert untied.params_total - tied.params_total == 300 * 64 == untied.modules["head"]
    assert untied.to_json()["params_trainable_full"] == untied.params_total


def test_unknown_architecture_is_counted_on_the_meta_device(meta_build) -> None:
    bloom = {
        "model_type": "bloom",
        "architectures": ["BloomForCausalLM"],
        "hidden_size": 64,
        "n_head": 4,
        "n_layer": 2,
        "vocab_size": 500,
    }
    spec = spec_from_config(bloom, name="bloom")
    model = meta_build("bloom", bloom, "BloomForCausalLM")
    assert spec.source == "meta" and spec.params_total == sum(p.numel() for p in model.parameters())
    assert sum(spec.modules.values()) == spec.params_total
    assert spec.modules["embeddings"] > 0 and spec.modules["attention"] > 0
    assert {t.name for t in spec.lora_targets} >= {"query_key_value", "dense_h_to_4h"}
    assert spec.tied_embeddings and spec.modules["head"] == 0


def test_known_family_with_an_uncovered_class_falls_back_to_meta(meta_build) -> None:
    config = TINY_LLAMA | {"architectures": ["LlamaForTokenClassification"], "num_labels": 7}
    spec = spec_from_config(config, name="tokens")
    model = meta_build("tokens", config, "LlamaForTokenClassification")
    assert spec.source == "meta" and spec.architecture == "LlamaForTokenClassification"
    assert spec.params_total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name", ["Mixtral-8x7B-v0.1", "gpt2", "opt-350m", "bert-base-uncased", "falcon-7b"]
)
def test_meta_count_agrees_with_the_arithmetic(name: str) -> None:
    """The fallback's module-name rules put every parameter where the arithmetic does."""
    from affiner.planner.models.meta_count import spec_from_meta

    ours, meta = _spec(name), spec_from_meta(PUBLISHED[name], name=name)
    assert meta.modules == ours.modules
    assert sorted(meta.lora_targets, key=repr) == sorted(ours.lora_targets, key=repr)
    assert (meta.tied_embeddings, meta.num_kv_heads, meta.params_active) == (
        ours.tied_embeddings,
        ours.num_kv_heads,
        ours.params_active,
    )


def test_remote_code_needs_consent() -> None:
    config = {"model_type": "my_new_arch", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    with pytest.raises(AffinerError, match="trust-remote-code"):
        spec_from_config(config, name="x")


def test_unknown_model_type_says_what_to_do() -> None:
    with pytest.raises(AffinerError) as info:
        spec_from_config({"model_type": "no_such_arch_anywhere"}, name="x", path="cfg.json")
    assert "no_such_arch_anywhere" in str(info.value) and "upgrade transformers" in str(info.value)
    assert info.value.where == "cfg.json"


def test_config_mistakes_name_the_key() -> None:
    with pytest.raises(AffinerError, match="model_type"):
        spec_from_config({"hidden_size": 8}, name="x")
    with pytest.raises(AffinerError, match=r"'hidden_size'.*whole number.*'big'"):
        spec_from_config(TINY_LLAMA | {"hidden_size": "big"}, name="x", path="c.json")
