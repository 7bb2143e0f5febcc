"""Count an architecture the arithmetic rules do not know by building it on the meta device.

``torch.device("meta")`` gives tensors with shapes and no storage, so transformers can
build a 400B model here in well under a second and without memory; what is built is exactly
what training would build, which makes this the fallback (and the yardstick the tests hold
the arithmetic rules to). torch and transformers are imported inside the functions only:
importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.models.shape_rules import config_dtype
from affiner.planner.models.spec import MODULE_KEYS, LinearTarget, ModelSpec

#: Module-name parts that mark the output side (LM head, classifiers, BERT's pooler and MLM head).
HEAD_PARTS = frozenset(
    {
        "lm_head",
        "embed_out",
        "score",
        "classifier",
        "qa_outputs",
        "cls",
        "pooler",
        "seq_relationship",
    }
)
_ATTENTION_PARTS = frozenset(
    {"query", "key", "value", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value"}
)
_MLP_PARTS = frozenset(
    {
        "fc1",
        "fc2",
        "c_fc",
        "intermediate",
        "output",
        "experts",
        "gate",
        "router",
        "moe",
        "w1",
        "w2",
        "w3",
    }
)


def classify(module_path: str) -> str:
    """The `MODULE_KEYS` group of a module (or parameter) from its dotted name.

    Checked in this order, because names nest: the head wins (BERT's
    ``cls.predictions.transform.LayerNorm`` is head), then norms
    (``post_attention_layernorm`` is a norm), embeddings, attention, MLP; the rest is other.
    """
    parts = [part.lower() for part in module_path.split(".") if part not in ("weight", "bias")]
    if any(part in HEAD_PARTS for part in parts):
        return "head"
    if any("norm" in part or (part.startswith("ln") and not part.isdigit()) for part in parts):
        return "norms"
    if any("embed" in part or part in ("wte", "wpe") for part in parts):
        return "embeddings"
    if any("attn" in part or "attention" in part or part in _ATTENTION_PARTS for part in parts):
        return "attention"
    if any(
        "mlp" in part or "ffn" in part or "feed_forward" in part or part in _MLP_PARTS
        for part in parts
    ):
        return "mlp"
    return "other"


def build_meta_model(
    config: dict[str, Any], *, path: str | None = None, trust_remote_code: bool = False
):
    """Build the model a config describes on the meta device (no weights, no memory).

    The class is the config's ``architectures[0]`` when transformers has it, else the
    causal-LM auto class, else the bare model.

    Raises:
        AffinerError: the model type is unknown to this transformers, needs remote code the
            caller did not allow, or fails to build.
    """
    import torch
    import transformers

    model_type = str(config.get("model_type", ""))
    where = path
    remote = bool(config.get("auto_map")) and model_type not in transformers.CONFIG_MAPPING
    if remote and not trust_remote_code:
        raise AffinerError(
            f"model type {model_type!r} ships its own modelling code (auto_map), which affiner "
            "does not run unless you allow it",
            hint="if you trust this checkpoint, pass --trust-remote-code",
            where=where,
        )
    if remote:
        if path is None:
            raise AffinerError(
                f"model type {model_type!r} needs its own modelling code, and only a config was given",
                hint="pass the model's folder (with its .py files) together with --trust-remote-code",
            )
        folder = str(Path(path).parent) if Path(path).is_file() else path
        conf = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    elif model_type in transformers.CONFIG_MAPPING:
        conf = transformers.CONFIG_MAPPING[model_type].from_dict(dict(config))
    else:
        raise AffinerError(
            f"transformers {transformers.__version__} does not know model type {model_type!r}",
            hint="upgrade transformers, or pass --trust-remote-code if the checkpoint ships its "
            "own modelling code and you trust it",
            where=where,
        )

    names = config.get("architectures") or []
    wanted = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
    try:
        with torch.device("meta"):
            if wanted and hasattr(transformers, wanted) and not remote:
                return getattr(transformers, wanted)._from_config(conf)
            try:
                return transformers.AutoModelForCausalLM.from_config(
                    conf, trust_remote_code=trust_remote_code
                )
            except ValueError:
                return transformers.AutoModel.from_config(conf, trust_remote_code=trust_remote_code)
    except AffinerError:
        raise
    except Exception as exc:
        raise AffinerError(
            f"could not build {wanted or model_type!r} to count its parameters: {exc}",
            hint="check that config.json belongs to a transformers model, or name a size such as 7B",
            where=where,
        ) from exc


def _linear_shape(module: Any) -> tuple[int, int, bool, str] | None:
    """(in, out, bias, kind) of an ``nn.Linear`` or GPT-2-style ``Conv1D``; None otherwise."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features, module.bias is not None, "linear"
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1], module.bias is not None, "conv1d"
    return None


def count_model(model: Any) -> tuple[dict[str, int], list[LinearTarget], int]:
    """Per-group parameter counts, LoRA targets and expert parameters of a built model.

    Tied parameters are counted once (``named_parameters`` drops duplicates). The output
    head and classifier layers are not LoRA targets; 3-D expert tensors are (peft reaches them
    through ``target_parameters``), one entry per expert slice.
    """
    modules = dict.fromkeys(MODULE_KEYS, 0)
    expert_params = 0
    for name, param in model.named_parameters():
        modules[classify(name)] += param.numel()
        if ".experts." in f".{name}":
            expert_params += param.numel()

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    grouped: dict[tuple, int] = {}
    for name, module in model.named_modules():
        part = classify(name)
        if part == "head" or module is output:
            continue
        shape = _linear_shape(module)
        if shape is not None and ".experts." not in f".{name}.":
            key = (name.rsplit(".", 1)[-1], *shape, part)
            grouped[key] = grouped.get(key, 0) + 1
        if name.rsplit(".", 1)[-1] == "experts":
            for pname, param in module.named_parameters(recurse=False):
                if param.dim() == 3:
                    key = (
                        f"experts.{pname}",
                        param.shape[2],
                        param.shape[1],
                        False,
                        "expert",
                        part,
                    )
                    grouped[key] = grouped.get(key, 0) + param.shape[0]
    targets = [
        LinearTarget(short, in_f, out_f, count, bias, kind, part)
        for (short, in_f, out_f, bias, kind, part), count in grouped.items()
    ]
    return modules, targets, expert_params


def _first(conf: Any, *names: str, default: Any = 0) -> Any:
    for name in names:
        value = getattr(conf, name, None)
        if value is not None:
            return value
    return default


def _kv_heads(conf: Any, heads: int) -> int:
    """Key/value heads; multi-query attention (Falcon-7B style) shares one."""
    if getattr(conf, "multi_query", False) and not getattr(conf, "new_decoder_architecture", False):
        return 1
    return int(_first(conf, "num_key_value_heads", "num_kv_heads", default=heads))


def spec_from_meta(
    config: dict[str, Any], *, name: str, path: str | None = None, trust_remote_code: bool = False
) -> ModelSpec:
    """A `ModelSpec` counted on the meta device, for architectures without an arithmetic rule."""
    model = build_meta_model(config, path=path, trust_remote_code=trust_remote_code)
    modules, targets, expert_params = count_model(model)
    total = sum(modules.values())
    conf = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    hidden = int(_first(conf, "hidden_size", "n_embd", "d_model"))
    heads = int(_first(conf, "num_attention_heads", "n_head", "num_heads"))
    experts = int(_first(conf, "num_local_experts", "num_experts", "n_routed_experts"))
    top_k = int(_first(conf, "num_experts_per_tok", "moe_top_k", "top_k"))
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = bool(
        output is not None
        and inputs is not None
        and output.weight is getattr(inputs, "weight", None)
    )
    norm_names = {type(module).__name__.lower() for module in model.modules()}
    target_names = {target.name for target in targets if target.part == "mlp"}
    cls_name = type(model).__name__
    return ModelSpec(
        name=name,
        model_type=str(config.get("model_type")),
        architecture=cls_name,
        source="meta",
        hidden_size=hidden,
        num_layers=int(_first(conf, "num_hidden_layers", "n_layer", "num_layers")),
        num_attention_heads=heads,
        num_kv_heads=_kv_heads(conf, heads),
        head_dim=int(_first(conf, "head_dim", default=hidden // heads if heads else 0)),
        intermediate_size=int(
            _first(
                conf,
                "intermediate_size",
                "ffn_dim",
                "n_inner",
                "ffn_hidden_size",
                default=4 * hidden,
            )
        ),
        vocab_size=int(_first(conf, "vocab_size")),
        max_position_embeddings=int(
            _first(conf, "max_position_embeddings", "n_positions", "seq_length")
        ),
        tied_embeddings=tied,
        mlp_kind="gated"
        if any("gate" in n or n in ("w1", "w3") for n in target_names)
        else "plain",
        hidden_act=str(
            _first(
                conf,
                "hidden_act",
                "hidden_activation",
                "activation_function",
                "activation",
                default="",
            )
        ),
        norm_kind="rmsnorm" if any("rmsnorm" in n for n in norm_names) else "layernorm",
        params_total=total,
        modules=modules,
        lora_targets=tuple(targets),
        params_active=total - expert_params * (experts - top_k) // experts
        if experts and top_k
        else None,
        parallel_residual=bool(
            _first(conf, "use_parallel_residual", "parallel_attn", default=False)
        ),
        attention_dropout=float(
            _first(
                conf, "attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", default=0.0
            )
        ),
        hidden_dropout=float(
            _first(
                conf, "hidden_dropout", "resid_pdrop", "hidden_dropout_prob", "dropout", default=0.0
            )
        ),
        num_experts=experts,
        experts_per_token=top_k,
        is_decoder=cls_name.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
        or bool(getattr(conf, "is_decoder", False)),
        dtype=config_dtype(config),
        path=path,
        raw_config=dict(config),
    )
