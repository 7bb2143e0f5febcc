"""Exact parameter counts from a model's ``config.json``, by arithmetic alone.

Planning needs a model's size long before (and often instead of) loading it: a 70B model's
shape is known from a 1 kB file. For the families that make up most fine-tuning work
(Llama, Mistral, Mixtral, Qwen2/3, Gemma 1/2, Phi-3, GPT-2, GPT-NeoX, Falcon, OPT, BERT) the
rules in `affiner.planner.models.llama_style` and `affiner.planner.models.classic` reproduce, parameter for
parameter, what transformers 5 builds for the config's class, including the defaults its
config classes fill in for keys a file leaves out. Any other architecture is counted by
building it on PyTorch's meta device (`affiner.planner.models.meta_count`), which costs a torch import
but no memory.

This module is the entry point: it picks the family's rule for a config and turns the rule's
`Shape` into a `ModelSpec`; the pieces the rules are written with live in
`affiner.planner.models.shape_rules`.
"""

from __future__ import annotations

from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.models.classic import CLASSIC_FAMILIES
from affiner.planner.models.llama_style import LLAMA_STYLE_FAMILIES
from affiner.planner.models.meta_count import spec_from_meta
from affiner.planner.models.shape_rules import (
    ConfigView,
    Family,
    Shape,
    UnsupportedClass,
    config_dtype,
)
from affiner.planner.models.spec import ModelSpec


def families() -> dict[str, Family]:
    """Every ``model_type`` counted by arithmetic."""
    return {**LLAMA_STYLE_FAMILIES, **CLASSIC_FAMILIES}


def spec_from_config(
    config: dict[str, Any],
    *,
    name: str,
    source: str = "config",
    path: str | None = None,
    trust_remote_code: bool = False,
) -> ModelSpec:
    """The `ModelSpec` of the model a ``config.json`` describes, with exact parameter counts.

    Known families are counted by arithmetic (no torch). Any other ``model_type``, or a
    class of a known family that the rules do not cover, is built on the meta device by
    `affiner.planner.models.meta_count.spec_from_meta` (which imports transformers).

    Args:
        config: the parsed config.
        name: what the user called the model (shown in reports).
        source: where the config came from (``config``, ``folder``, ``hub-cache``, ``hub``).
        path: the local folder or file, if any (used in messages and kept on the spec).
        trust_remote_code: allow the meta fallback to run modelling code shipped with the model.

    Raises:
        AffinerError: no ``model_type``, a malformed value, or an architecture that cannot be built.
    """
    if not isinstance(config, dict):
        raise AffinerError(
            "a model config must be a JSON object", hint="pass the model's config.json", where=path
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise AffinerError(
            "config has no 'model_type', so the architecture is unknown",
            hint='a transformers config.json names it, e.g. "model_type": "llama"; '
            "pass the config.json of the checkpoint itself",
            where=path,
        )
    family = families().get(model_type)
    if family is None:
        return _meta(config, name=name, path=path, trust_remote_code=trust_remote_code)
    try:
        cls = family.pick_class(config)
    except UnsupportedClass:
        return _meta(config, name=name, path=path, trust_remote_code=trust_remote_code)
    shape = family.rule(ConfigView(config, family.defaults, path), cls)
    return build_spec(shape, config, name=name, model_type=model_type, source=source, path=path)


def _meta(
    config: dict[str, Any], *, name: str, path: str | None, trust_remote_code: bool
) -> ModelSpec:
    return spec_from_meta(config, name=name, path=path, trust_remote_code=trust_remote_code)


def build_spec(
    shape: Shape,
    config: dict[str, Any],
    *,
    name: str,
    model_type: str,
    source: str,
    path: str | None,
) -> ModelSpec:
    """Turn a family's `Shape` into the shared `ModelSpec`."""
    total = shape.tally.total
    return ModelSpec(
        name=name,
        model_type=model_type,
        architecture=shape.architecture,
        source=source,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        tied_embeddings=shape.tied_embeddings,
        mlp_kind=shape.mlp_kind,
        hidden_act=shape.hidden_act,
        norm_kind=shape.norm_kind,
        params_total=total,
        modules=dict(shape.tally.modules),
        lora_targets=tuple(shape.tally.targets),
        params_active=total - shape.inactive_params if shape.num_experts else None,
        parallel_residual=shape.parallel_residual,
        attention_dropout=shape.attention_dropout,
        hidden_dropout=shape.hidden_dropout,
        num_experts=shape.num_experts,
        experts_per_token=shape.experts_per_token,
        is_decoder=shape.is_decoder,
        dtype=config_dtype(config),
        path=path,
        raw_config=dict(config),
    )


#: The class suffixes of a vocabulary head, replaced by a class head for classification.
_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForPreTraining")


def spec_for_task(spec: ModelSpec, task: str) -> ModelSpec:
    """`spec` as `task` trains it: for ``classification`` the runner loads
    ``AutoModelForSequenceClassification``, so the model is counted again from its config with
    that class (no vocabulary head and no vocabulary-sized logits; a class head instead: an
    untied 7B head is 0.5B parameters the run never loads). ``causal_lm`` keeps the spec.

    A spec without its config (a bare size such as ``7B``) or whose family has no such class
    is returned unchanged.
    """
    if task != "classification" or not spec.has_lm_head or not spec.raw_config:
        return spec
    base = spec.architecture
    for suffix in _HEAD_SUFFIXES:
        base = base.removesuffix(suffix)
    if base == spec.architecture:
        return spec
    config = dict(spec.raw_config, architectures=[f"{base}ForSequenceClassification"])
    try:
        return spec_from_config(config, name=spec.name, source=spec.source, path=spec.path)
    except AffinerError:
        return spec
