"""Counting rules for the Llama-style decoders: Llama, Mistral, Mixtral, Qwen2/3, Gemma 1/2, Phi-3.

They share one block: RMSNorm, rotary attention with grouped-query heads (q, k, v, o) and a
gated MLP (gate, up, down); they differ in biases, extra norms, fused projections and
mixture-of-experts MLPs. Each difference is a field of `LlamaStyle`, and the defaults
dicts copy what transformers 5's config classes fill in for keys a file leaves out (that
is what makes a sparse config count the same as transformers builds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affiner.planner.models.shape_rules import ConfigView, Family, Shape, Tally

#: Class suffixes every Llama-style family handles.
DECODER_SUFFIXES = ("ForCausalLM", "Model", "ForSequenceClassification")


@dataclass(frozen=True)
class LlamaStyle:
    """How one family departs from plain Llama.

    Attributes:
        qkv_bias: ``config`` (``attention_bias``), ``always`` (Qwen2) or ``never``.
        o_bias: ``config`` or ``never``.
        mlp_bias_key: the config key that turns on MLP biases (Llama's ``mlp_bias``), or "".
        qk_norm: RMSNorm over each head's queries and keys (Qwen3).
        norms_per_layer: 2, or 4 for Gemma 2's pre/post feed-forward norms.
        fused: one ``qkv_proj`` and one ``gate_up_proj`` (Phi-3).
        moe: the MLP is a router plus stacked experts (Mixtral).
        act_key: the config key naming the MLP activation.
    """

    qkv_bias: str = "config"
    o_bias: str = "config"
    mlp_bias_key: str = ""
    qk_norm: bool = False
    norms_per_layer: int = 2
    fused: bool = False
    moe: bool = False
    act_key: str = "hidden_act"


def _present_or(cfg: ConfigView, key: str, fallback: int) -> int:
    """A key whose absence means the class default, and whose ``null`` means `fallback`.

    transformers' config classes turn an explicit ``null`` (and, where the default is
    ``None``, a missing key) into a value derived from other keys, e.g. ``num_key_value_heads``
    becomes ``num_attention_heads``.
    """
    if key in cfg.config:
        return fallback if cfg.config[key] is None else cfg.integer(key)
    default = cfg.defaults.get(key)
    return fallback if default is None else int(default)


def _bias(rule: str, cfg: ConfigView) -> bool:
    if rule == "always":
        return True
    if rule == "config":
        return cfg.flag("attention_bias")
    return False


def decoder_head(
    tally: Tally, cls: str, cfg: ConfigView, *, width: int, vocab: int, tied: bool
) -> bool:
    """Count the output side of a decoder class; returns whether the LM head is tied.

    ``*ForCausalLM`` / ``*LMHeadModel`` add ``lm_head`` (nothing when tied to the input
    embedding), ``*ForSequenceClassification`` a bias-free ``score``, the bare ``*Model`` nothing.
    """
    if cls.endswith(("ForCausalLM", "LMHeadModel")):
        if not tied:
            tally.head_linear(width, vocab, bias=False)
        return tied
    if cls.endswith("ForSequenceClassification"):
        tally.head_linear(width, cfg.num_labels(), bias=False)
    return False


def _activation(cfg: ConfigView, style: LlamaStyle) -> str:
    act = cfg.text(style.act_key, "hidden_act")
    # Gemma's first releases say "gelu" but were trained with the tanh approximation, which
    # transformers substitutes when it loads them.
    if cfg.defaults.get("hidden_act") == "gelu_pytorch_tanh" and act == "gelu":
        return "gelu_pytorch_tanh"
    return act


def _llama_rule(style: LlamaStyle):
    def rule(cfg: ConfigView, cls: str) -> Shape:
        hidden = cfg.integer("hidden_size")
        layers = cfg.integer("num_hidden_layers")
        heads = cfg.integer("num_attention_heads")
        kv_heads = _present_or(cfg, "num_key_value_heads", heads)
        head_dim = _present_or(cfg, "head_dim", hidden // heads)
        inter = cfg.integer("intermediate_size")
        vocab = cfg.integer("vocab_size")
        tally = Tally()

        tally.add("embeddings", vocab * hidden)
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        qkv_bias = _bias(style.qkv_bias, cfg)
        if style.fused:
            tally.linear("attention", "qkv_proj", hidden, q_out + 2 * kv_out, layers, bias=qkv_bias)
        else:
            tally.linear("attention", "q_proj", hidden, q_out, layers, bias=qkv_bias)
            tally.linear("attention", "k_proj", hidden, kv_out, layers, bias=qkv_bias)
            tally.linear("attention", "v_proj", hidden, kv_out, layers, bias=qkv_bias)
        tally.linear("attention", "o_proj", q_out, hidden, layers, bias=_bias(style.o_bias, cfg))
        if style.qk_norm:
            tally.norm(head_dim, 2 * layers, bias=False)

        experts = top_k = inactive = 0
        if style.moe:
            experts = cfg.integer("num_local_experts", "num_experts")
            top_k = cfg.integer("num_experts_per_tok")
            tally.add("mlp", layers * experts * hidden)  # the router's weight (a Parameter)
            tally.linear(
                "mlp",
                "experts.gate_up_proj",
                hidden,
                2 * inter,
                layers * experts,
                bias=False,
                kind="expert",
            )
            tally.linear(
                "mlp",
                "experts.down_proj",
                inter,
                hidden,
                layers * experts,
                bias=False,
                kind="expert",
            )
            inactive = layers * (experts - top_k) * 3 * hidden * inter
        else:
            mlp_bias = cfg.flag(style.mlp_bias_key) if style.mlp_bias_key else False
            if style.fused:
                tally.linear("mlp", "gate_up_proj", hidden, 2 * inter, layers, bias=mlp_bias)
            else:
                tally.linear("mlp", "gate_proj", hidden, inter, layers, bias=mlp_bias)
                tally.linear("mlp", "up_proj", hidden, inter, layers, bias=mlp_bias)
            tally.linear("mlp", "down_proj", inter, hidden, layers, bias=mlp_bias)

        tally.norm(hidden, style.norms_per_layer * layers + 1, bias=False)
        tied = decoder_head(
            tally, cls, cfg, width=hidden, vocab=vocab, tied=cfg.flag("tie_word_embeddings")
        )
        return Shape(
            architecture=cls,
            hidden_size=hidden,
            num_layers=layers,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=vocab,
            max_position_embeddings=cfg.integer("max_position_embeddings"),
            tied_embeddings=tied,
            mlp_kind="gated",
            hidden_act=_activation(cfg, style),
            norm_kind="rmsnorm",
            tally=tally,
            attention_dropout=cfg.number("attention_dropout", default=0.0),
            hidden_dropout=cfg.number("resid_pdrop", default=0.0),
            num_experts=experts,
            experts_per_token=top_k,
            inactive_params=inactive,
        )

    return rule


def _defaults(**overrides: Any) -> dict[str, Any]:
    """LlamaConfig's defaults, with a family's differences on top."""
    base: dict[str, Any] = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": None,
        "head_dim": None,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
    }
    return base | overrides


def _family(prefix: str, style: LlamaStyle, defaults: dict[str, Any]) -> Family:
    return Family(
        rule=_llama_rule(style),
        defaults=defaults,
        prefix=prefix,
        default_class=f"{prefix}ForCausalLM",
        suffixes=DECODER_SUFFIXES,
    )


_MISTRAL = {"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 131072}
_QWEN = {
    "vocab_size": 151936,
    "intermediate_size": 22016,
    "num_key_value_heads": 32,
    "max_position_embeddings": 32768,
}

#: ``model_type`` → counting rule, for the Llama-style families.
LLAMA_STYLE_FAMILIES: dict[str, Family] = {
    "llama": _family("Llama", LlamaStyle(mlp_bias_key="mlp_bias"), _defaults()),
    "mistral": _family(
        "Mistral", LlamaStyle(qkv_bias="never", o_bias="never"), _defaults(**_MISTRAL)
    ),
    "mixtral": _family(
        "Mixtral",
        LlamaStyle(qkv_bias="never", o_bias="never", moe=True),
        _defaults(**_MISTRAL, num_local_experts=8, num_experts_per_tok=2),
    ),
    "qwen2": _family("Qwen2", LlamaStyle(qkv_bias="always", o_bias="never"), _defaults(**_QWEN)),
    "qwen3": _family("Qwen3", LlamaStyle(qk_norm=True), _defaults(**_QWEN, head_dim=128)),
    "gemma": _family(
        "Gemma",
        LlamaStyle(),
        _defaults(
            vocab_size=256000,
            hidden_size=3072,
            intermediate_size=24576,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=16,
            head_dim=256,
            hidden_act="gelu_pytorch_tanh",
            max_position_embeddings=8192,
            tie_word_embeddings=True,
        ),
    ),
    "gemma2": _family(
        "Gemma2",
        LlamaStyle(norms_per_layer=4, act_key="hidden_activation"),
        _defaults(
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=8192,
            tie_word_embeddings=True,
        ),
    ),
    "phi3": _family(
        "Phi3",
        LlamaStyle(qkv_bias="never", o_bias="never", fused=True),
        _defaults(
            vocab_size=32064,
            hidden_size=3072,
            intermediate_size=8192,
            max_position_embeddings=4096,
        ),
    ),
}
