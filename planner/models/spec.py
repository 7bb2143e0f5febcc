"""The shape of a model: everything the memory and time models need, and nothing else.

A `ModelSpec` is built from a config (a local folder, a `config.json`, a cached hub id) or
from a bare size such as ``7B``. Memory depends on shapes, not on weights, so nothing here
ever loads a tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Keys of `ModelSpec.modules`, in display order.
MODULE_KEYS = ("embeddings", "attention", "mlp", "norms", "head", "other")


@dataclass(frozen=True)
class LinearTarget:
    """One kind of linear layer that LoRA can wrap, e.g. every ``q_proj`` of every block.

    Attributes:
        name: the module's short name as peft's ``target_modules`` matches it (``q_proj``).
        in_features: input width.
        out_features: output width.
        count: how many such modules the model holds (usually one per block; per expert
            for mixture-of-experts MLPs).
        bias: whether the layer has a bias.
        kind: ``linear`` (``nn.Linear``), ``conv1d`` (GPT-2's transposed ``Conv1D``, which peft
            wraps with ``fan_in_fan_out=True``) or ``expert`` (one expert's slice of a 3-D
            mixture-of-experts parameter, reached through peft's ``target_parameters``).
        part: the `MODULE_KEYS` group the layer belongs to (``attention``, ``mlp``...), so a
            plan can say "attention only" or "all linear layers".
    """

    name: str
    in_features: int
    out_features: int
    count: int
    bias: bool = False
    kind: str = "linear"
    part: str = ""

    @property
    def params(self) -> int:
        """Parameters of all `count` modules together, bias included."""
        return self.count * (
            self.in_features * self.out_features + (self.out_features if self.bias else 0)
        )


@dataclass(frozen=True)
class ModelSpec:
    """Shapes and parameter counts of one model architecture.

    Attributes:
        name: what the user called it (folder, hub id, ``7B``).
        model_type: the transformers ``model_type`` (``llama``, ``gpt2``, ``bert``...).
        architecture: the transformers class name (``LlamaForCausalLM``).
        source: where the shape came from: ``config``, ``folder``, ``hub-cache``, ``hub``,
            ``size`` (a representative Llama-style shape) or ``meta`` (counted on the meta device).
        hidden_size, num_layers, num_attention_heads, num_kv_heads, head_dim,
        intermediate_size, vocab_size, max_position_embeddings: the usual shape numbers;
            ``num_kv_heads < num_attention_heads`` means grouped-query attention.
        tied_embeddings: whether the output head shares the input embedding matrix.
        mlp_kind: ``gated`` (SwiGLU/GeGLU: gate, up, down) or ``plain`` (up, act, down).
        hidden_act: the activation's name in the config (``silu``, ``gelu_new``...).
        norm_kind: ``rmsnorm`` or ``layernorm``.
        parallel_residual: attention and MLP read the same input (gpt_neox, falcon, phi).
        attention_dropout, hidden_dropout: dropout probabilities (dropout keeps a mask for backward).
        num_experts, experts_per_token: mixture-of-experts layout (0 for dense models).
        is_decoder: False for encoders such as BERT.
        dtype: the checkpoint's dtype name when the config states one (``bfloat16``).
        params_total: exact parameter count of the model as transformers builds it.
        params_active: parameters used per token (differs from total for mixture-of-experts).
        modules: parameter count per part (keys from `MODULE_KEYS`); sums to `params_total`.
        lora_targets: the linear layers LoRA can wrap, with their shapes.
        path: local folder the spec came from, if any.
        raw_config: the config dict as read, for details the fields above do not carry.
    """

    name: str
    model_type: str
    architecture: str
    source: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tied_embeddings: bool
    mlp_kind: str
    hidden_act: str
    norm_kind: str
    params_total: int
    modules: dict[str, int]
    lora_targets: tuple[LinearTarget, ...]
    params_active: int | None = None
    parallel_residual: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    num_experts: int = 0
    experts_per_token: int = 0
    is_decoder: bool = True
    dtype: str | None = None
    path: str | None = None
    raw_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def active_params(self) -> int:
        """Parameters touched per token: `params_active` for mixture-of-experts, else the total."""
        return self.params_active if self.params_active is not None else self.params_total

    @property
    def has_lm_head(self) -> bool:
        """Whether the model ends in a vocabulary-sized head (and so in vocabulary-sized logits).

        Causal and masked language models do; a bare encoder (``BertModel``) or a
        sequence-classification model does not, and plans for it carry no logits term.
        """
        arch = self.architecture
        return arch.endswith(("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForPreTraining")) or (
            not arch.endswith(("Model", "ForSequenceClassification", "ForTokenClassification"))
        )

    @property
    def params_trainable_full(self) -> int:
        """Parameters a full fine-tune updates (all of them; tied matrices count once)."""
        return self.params_total

    def to_json(self) -> dict[str, Any]:
        """The dict `affiner model --json` prints (raw_config left out)."""
        data = asdict(self)
        data.pop("raw_config", None)
        data["params_trainable_full"] = self.params_trainable_full
        data["tied_embeddings"] = self.tied_embeddings
        data["lora_targets"] = [asdict(t) | {"params": t.params} for t in self.lora_targets]
        return data


def has_fused_experts(spec: ModelSpec) -> bool:
    """True when the experts of a mixture are 3-D weights (transformers 5's Mixtral, Qwen-MoE…).

    peft reaches them with ``target_modules="all-linear"`` through its ``ParamWrapper``, which
    refuses ``lora_dropout`` above 0: a LoRA run on such a model must train without dropout.
    """
    return any(target.kind == "expert" for target in spec.lora_targets)
