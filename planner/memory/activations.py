"""Bytes autograd keeps for backward, derived from the architecture one saved tensor at a time.

Every term below names the operation that saves it, as PyTorch's autograd formulas and
transformers 5's modelling code do it (checked against `bench/memory_probe.py`, which catches
every saved tensor with ``saved_tensors_hooks``):

- RMSNorm (llama style) upcasts its input to fp32 (saved by ``pow`` and ``mul``), keeps the
  normalized tensor in the compute dtype when its weight trains (Gemma keeps it in fp32, and
  multiplies by ``1 + weight``); LayerNorm keeps its input plus fp32 mean/rstd per token.
- A linear layer keeps its input only when its weight trains; a frozen one needs only the
  weight (saved by reference, not an activation).
- Gated MLPs (SwiGLU/GeGLU) keep gate, activation output and up (``act(gate) * up``), and the
  product when ``down`` trains; plain MLPs keep the first projection's output, whatever their
  activation keeps (``gelu_new`` is Python arithmetic: four tensors), and the down input.
- Attention: SDPA's flash / memory-efficient kernels (CUDA, and PyTorch's CPU flash kernel)
  keep q, k, v, the output (whose layout makes it the ``o_proj`` input too) and an fp32
  log-sum-exp per head and token. Without a padding mask transformers passes grouped-query k/v
  as they are (``enable_gqa``); with one it repeats them to all heads and SDPA keeps the mask,
  converted to the query dtype, in every layer. Eager attention (and SDPA's math fallback)
  keeps the s² scores: the fp32 softmax output and, in 16-bit, its cast copy; Gemma 2's soft
  cap adds the tanh of the scores (its config's default of 50 applies when the key is absent).
- Dropout with p > 0 keeps a one-byte mask. LoRA adds, per wrapped layer: the cast of the input
  to the adapter's fp32 dtype (peft casts it; under autocast the matmul then keeps a 16-bit copy),
  the dropout mask, and the rank-wide ``lora_A`` output that ``lora_B`` keeps.
- Gradient checkpointing (non-reentrant, transformers 5's default) keeps each block's input;
  backward recomputes one block at a time, so one block's full set comes back at the peak.

What differs between CUDA and CPU is chosen in `attention_kernel`: GPT-2-style attention
dropout runs in CUDA's flash kernel (which keeps no mask, only an RNG state) but in the CPU's
math fallback (which keeps s² probabilities and the dropout mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from affiner.planner.models import ModelSpec, has_fused_experts
from affiner.planner.settings import TrainSettings

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

#: Bytes one activation function keeps per element of its input.
ACT_SAVED = {
    "gelu_new": 4,  # python tanh formula: x, tanh(...), 0.5*x, 1+tanh
    "gelu_fast": 4,
    "gelu_accurate": 4,
    "quick_gelu": 2,  # x * sigmoid(1.702 x): x and sigmoid output
}
#: Activations whose backward needs their output (not their input).
SAVES_OUTPUT = {"relu"}
#: Families whose attention always runs the eager path in transformers 5.
EAGER_ONLY = {"gemma2"}


@dataclass
class Traits:
    """What a family's blocks do that changes what backward keeps."""

    norm: str  # "rms" | "rms_gemma" | "layer"
    norms_per_block: int
    shared_norm: bool  # falcon's single norm feeding attention and MLP
    rotary: bool
    fused_gate_up: bool
    post_ln: bool  # BERT: norm after the residual add
    attn_softcap: bool
    logit_softcap: bool
    mqa_broadcast: bool  # k/v with fewer heads passed to SDPA without enable_gqa
    embed_scale: bool
    act_saved: int


def traits(spec: ModelSpec) -> Traits:
    """The family traits of `spec`, from its fields and (for a few quirks) its raw config."""
    mt = spec.model_type
    raw = spec.raw_config or {}
    new_falcon = bool(raw.get("new_decoder_architecture", False))
    act = spec.hidden_act or "silu"
    return Traits(
        norm="rms_gemma"
        if mt in ("gemma", "gemma2", "gemma3")
        else ("rms" if spec.norm_kind == "rmsnorm" else "layer"),
        norms_per_block=4 if mt in ("gemma2", "gemma3") else 2,
        shared_norm=mt == "falcon" and not new_falcon and spec.parallel_residual,
        rotary=mt not in ("gpt2", "opt", "bert") and not raw.get("alibi", False),
        fused_gate_up=mt == "phi3",
        post_ln=not spec.is_decoder,
        # Gemma2Config's defaults (50 and 30) apply when a config leaves the keys out
        attn_softcap=bool(raw.get("attn_logit_softcapping", 50.0)) and mt == "gemma2",
        logit_softcap=bool(raw.get("final_logit_softcapping", 30.0 if mt == "gemma2" else None)),
        mqa_broadcast=mt == "falcon"
        and not new_falcon
        and spec.num_kv_heads < spec.num_attention_heads,
        embed_scale=mt.startswith("gemma"),
        act_saved=ACT_SAVED.get(act, 1),
    )


def attention_kernel(spec: ModelSpec, settings: TrainSettings, device_kind: str) -> str:
    """``flash`` (keeps q, k, v, out, lse) or ``math`` (keeps the s² probabilities)."""
    if settings.attention == "eager" or spec.model_type in EAGER_ONLY:
        return "math"
    if traits(spec).mqa_broadcast:
        return "math"  # different head counts without enable_gqa: only the math kernel accepts it
    if settings.attention == "sdpa" and device_kind == "cpu" and spec.attention_dropout > 0:
        return "math"  # PyTorch's CPU flash kernel has no dropout
    return "flash"


@dataclass
class ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch.

    Attributes:
        kept: bytes held from the end of the forward until backward reaches them (all blocks,
            or only block inputs under checkpointing), excluding the loss path.
        recompute: bytes of one block recomputed during backward (0 without checkpointing).
        logits_saved: the fp32 log-softmax over the vocabulary that cross-entropy keeps.
        logits_peak: the largest vocabulary-sized working set of backward (saved + its gradients).
        logits_forward: the vocabulary-sized tensors alive when the forward computes the loss:
            the logits in the compute dtype (the model's output holds them), their fp32 upcast
            and the log-softmax.
        per_block: bytes one trainable block keeps without checkpointing.
        details: the terms, by name.
    """

    kept: int
    recompute: int
    logits_saved: int
    logits_peak: int
    per_block: int
    logits_forward: int = 0
    details: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        """Activations at their largest: everything kept plus one recomputed block."""
        return self.kept + self.recompute


def _site(spec: ModelSpec, target) -> str:
    """Where a block's linear layer reads its input: ``attn_in`` (the attention norm's output),
    ``attn_out`` (attention's output), ``mlp_in`` (the MLP norm's output) or ``mlp_out``."""
    if target.part == "mlp":
        return "mlp_out" if target.out_features == spec.hidden_size else "mlp_in"
    h = spec.hidden_size
    if target.out_features == h and target.in_features == h:
        # square projections: q (attn_in) vs o (attn_out) decided by the name
        return "attn_out" if target.name in ("o_proj", "dense", "out_proj", "c_proj") else "attn_in"
    return "attn_out" if target.out_features == h else "attn_in"


def _lora_sites(spec: ModelSpec, settings: TrainSettings) -> dict[str, list[tuple[int, int]]]:
    """LoRA-wrapped layers per block by where their input comes from: (in, count-per-block)."""
    sites: dict[str, list[tuple[int, int]]] = {}
    if not settings.uses_lora:
        return sites
    wanted = set(settings.lora_targets)
    all_linear = "all-linear" in wanted
    layers = max(spec.num_layers, 1)
    for target in spec.lora_targets:
        if target.kind == "expert":
            continue  # expert slices are only wrapped through target_parameters
        if not all_linear and target.name not in wanted:
            continue
        per_block = max(target.count // layers, 1)
        sites.setdefault(_site(spec, target), []).append((target.in_features, per_block))
    return sites


def _readers(spec: ModelSpec, site: str) -> int:
    """How many of a block's linear layers read the input at `site` (q, k and v: three)."""
    layers = max(spec.num_layers, 1)
    return max(
        sum(
            max(t.count // layers, 1)
            for t in spec.lora_targets
            if t.kind != "expert" and _site(spec, t) == site
        ),
        1,
    )


def stream_bytes(settings: TrainSettings) -> int:
    """Bytes per element of the residual stream: the dtype the weights are held in.

    Mixed precision keeps fp32 master weights, so the embeddings, residual adds and norm
    outputs stay fp32 while only the matmuls run in 16 bits. A LoRA base, a quantized base
    (the runner's `prepare_quantized_base` leaves its embeddings and norms in the compute
    dtype, where peft's ``prepare_model_for_kbit_training`` would upcast them to fp32) or a
    pure-bf16 model is held (and streams) in the compute dtype.
    """
    b = BYTES[settings.compute_dtype]
    if settings.method in ("full", "freeze") and settings.precision != "bf16-pure":
        return 4
    return b


def linear_out_bytes(settings: TrainSettings) -> int:
    """Bytes per element of a base linear layer's output: autocast's 16 bits, except that
    bitsandbytes' quantized layers cast their output back to their input's dtype (the stream)."""
    if settings.effective_quantization != "none":
        return stream_bytes(settings)
    return BYTES[settings.compute_dtype]


def mask_bytes(device_kind: str, dtype_bytes: int) -> int:
    """Bytes per element of a dropout mask: CUDA's fused kernel keeps a bool mask; on the CPU
    ``at::dropout`` multiplies by a noise tensor of the input's dtype and keeps that."""
    return 1 if device_kind == "cuda" else dtype_bytes


def _lora_saved(
    sites: dict[str, list[tuple[int, int]]],
    site: str,
    tokens: int,
    settings: TrainSettings,
    b: int,
    autocast: bool,
    device_kind: str = "cuda",
) -> tuple[int, bool]:
    """Bytes the LoRA branches at one input site keep, and whether one of them keeps the input itself."""
    total = 0
    keeps_input = False
    cast = b != 4  # adapters are fp32 (peft upcasts them) while the input is 16-bit
    for width, count in sites.get(site, []):
        for _ in range(count):
            elems = tokens * width
            if settings.lora_dropout > 0:
                # peft casts the input to the adapters' fp32 before dropout, so a CPU noise
                # mask is fp32 whatever the compute dtype (CUDA keeps a bool mask)
                total += elems * mask_bytes(device_kind, 4)
                total += elems * (b if autocast else 4)  # what lora_A's matmul keeps
            elif cast:
                total += elems * (b if autocast else 4)
            else:
                keeps_input = True
            total += tokens * settings.lora_rank * (b if autocast else 4)
    return total, keeps_input


def _norm(
    t: Traits, elems: int, r: int, *, input_grad: bool, weight_trains: bool, autocast: bool
) -> int:
    """Bytes a norm keeps (its output excluded: consumers decide).

    `r` is the residual stream's bytes per element (`stream_bytes`). Autocast runs LayerNorm
    in fp32, so it keeps an fp32 input whatever the stream holds.
    """
    if t.norm == "layer":
        return elems * (4 if autocast else r) if (input_grad or weight_trains) else 0
    kept = elems * 4 if input_grad else 0  # fp32 upcast of the input (pow and mul keep it)
    if weight_trains:
        kept += elems * (4 if t.norm == "rms_gemma" else r)  # the normalized tensor
    return kept


def block_bytes(
    spec: ModelSpec,
    settings: TrainSettings,
    device_kind: str,
    *,
    trainable: bool,
    input_grad: bool = True,
) -> dict[str, int]:
    """Saved bytes of one transformer block for one micro-batch, term by term.

    Args:
        trainable: the block's own weights train (full, freeze's trainable blocks).
        input_grad: the block's input needs a gradient (False for the first block when
            nothing below it trains).
    """
    t = traits(spec)
    # a pack is one row of all its examples' tokens: attention spans the whole of it
    bsz, seq = (
        (1, settings.micro_batch_tokens)
        if settings.packing
        else (settings.micro_batch, settings.seq_len)
    )
    tokens = bsz * seq
    # a padding mask, or a pack's block-diagonal one: k/v repeated to every head, and SDPA
    # keeps the mask in the query's dtype at every layer (`TrainSettings.masked_pack`)
    masked = settings.padded or settings.masked_pack
    b = BYTES[settings.compute_dtype]
    r = stream_bytes(settings)
    autocast = settings.precision in ("bf16", "fp16")
    # an fp32 stream under autocast: every linear casts its input to 16 bits and keeps its own
    # copy (q, k and v three), where a 16-bit stream is kept once by all of them
    own_copy = autocast and r != b
    o = linear_out_bytes(settings)
    h, nh, nkv, hd = spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim
    q_dim = nh * hd
    inter = spec.intermediate_size
    sites = _lora_sites(spec, settings)
    out: dict[str, int] = {}

    # attention side: norm, its output, q/k/v
    out["norm_attn"] = _norm(
        t, tokens * h, r, input_grad=input_grad, weight_trains=trainable, autocast=autocast
    )
    lora_in, lora_keeps_in = _lora_saved(
        sites, "attn_in", tokens, settings, b, autocast, device_kind
    )
    out["lora_attn_in"] = lora_in
    if t.post_ln:
        out["norm_attn"] = 0  # BERT's norms sit after the residual add (counted below)
    readers = _readers(spec, "attn_in") if own_copy and trainable else 1
    out["attn_input"] = readers * tokens * h * b if (trainable or lora_keeps_in) else 0

    kernel = attention_kernel(spec, settings, device_kind)
    heads_kv = nh if (masked or kernel == "math") and not t.mqa_broadcast else nkv
    kv_term = 2 * tokens * heads_kv * hd * b
    if kernel == "flash":
        out["sdpa"] = tokens * q_dim * b * 2 + kv_term + bsz * nh * seq * 4
        if spec.model_type == "phi3":
            # phi3's attention output reaches o_proj as its own copy, not SDPA's output storage
            out["sdpa"] += tokens * q_dim * b
        if masked:
            out["attn_mask"] = bsz * seq * seq * b
    else:
        probs = bsz * nh * seq * seq
        # q, and k and v broadcast to every head (k transposed for the scores). Eager
        # attention keeps the fp32 softmax and its cast back to the compute dtype (and, under
        # Gemma 2's soft cap, the tanh of the scores); SDPA's math fallback works
        # in fp32 throughout (16-bit q, k and v are upcast first, as PyTorch does unless
        # ``allow_fp16_bf16_reduction_math_sdp`` is set), so everything it keeps is fp32.
        eager = settings.attention == "eager" or spec.model_type in EAGER_ONLY
        a = b if eager else 4
        out["sdpa"] = tokens * q_dim * a + 2 * tokens * nh * hd * a
        out["attn_probs"] = probs * 4 + (probs * a if a != 4 else 0)
        if t.attn_softcap:
            out["attn_probs"] += probs * a  # tanh output of the soft cap, in the scores' dtype
        if spec.attention_dropout > 0:
            out["attn_probs"] += probs * (mask_bytes(device_kind, a) + a)
        lora_o, keeps_o = _lora_saved(sites, "attn_out", tokens, settings, b, autocast, device_kind)
        out["attn_out_input"] = tokens * q_dim * b if (trainable or keeps_o) else 0
    if kernel == "flash":
        lora_o, _ = _lora_saved(sites, "attn_out", tokens, settings, b, autocast, device_kind)
    out["lora_attn_out"] = lora_o
    if spec.hidden_dropout > 0:
        out["dropout_masks"] = 2 * tokens * h * mask_bytes(device_kind, r)

    # MLP side
    if not t.shared_norm:
        out["norm_mlp"] = _norm(
            t, tokens * h, r, input_grad=True, weight_trains=trainable, autocast=autocast
        )
    if t.norms_per_block == 4:
        out["norm_post"] = 2 * _norm(
            t, tokens * h, r, input_grad=True, weight_trains=trainable, autocast=autocast
        )
    lora_mi, keeps_mi = _lora_saved(sites, "mlp_in", tokens, settings, b, autocast, device_kind)
    out["lora_mlp_in"] = lora_mi
    if not t.shared_norm:
        readers = _readers(spec, "mlp_in") if own_copy and trainable else 1
        out["mlp_input"] = readers * tokens * h * b if (trainable or keeps_mi) else 0
    lora_mo, keeps_mo = _lora_saved(sites, "mlp_out", tokens, settings, b, autocast, device_kind)
    out["lora_mlp_out"] = lora_mo
    routed = tokens
    # transformers 5 runs fused experts through ``torch._grouped_mm``, which autocast does not
    # cast: expert matmuls keep the residual stream's dtype (fp32 under fp32 masters)
    e = r if spec.num_experts else o
    experts_wrapped = (
        settings.uses_lora
        and settings.lora_dropout == 0
        and "all-linear" in settings.lora_targets
        and has_fused_experts(spec)
    )
    if spec.num_experts:
        routed = tokens * spec.experts_per_token
        out["router"] = tokens * spec.num_experts * 4 + tokens * spec.experts_per_token * 16
        expert_trains = trainable or experts_wrapped
        out["expert_io"] = routed * h * r * (2 if expert_trains else 1)
        if experts_wrapped:
            # peft's ParamWrapper adds B@A to each 3-D expert weight in forward: the merged
            # weight (one per expert tensor) is saved like a trained weight
            expert_params = sum(
                t.in_features * t.out_features * (t.count // max(spec.num_layers, 1))
                for t in spec.lora_targets
                if t.kind == "expert"
            )
            # in the experts' own dtype: the base's (a quantized base leaves them unquantized)
            out["expert_merged_weights"] = expert_params * r
            keeps_mo = True
    if spec.mlp_kind == "gated":
        out["mlp"] = 3 * routed * inter * e
    else:
        out["mlp"] = routed * inter * e * t.act_saved
    shares_output = spec.mlp_kind != "gated" and (spec.hidden_act or "") in SAVES_OUTPUT
    # relu keeps its output, which is also the down projection's input: one tensor
    out["mlp_down_input"] = (
        routed * inter * (e if spec.num_experts else b)
        if (trainable or keeps_mo) and not shares_output
        else 0
    )
    if t.post_ln:
        # post-LN: the second norm's input; its output is the next block's input (counted there)
        out["norm_post"] = tokens * h * b
    return out


def estimate_activations(
    spec: ModelSpec, settings: TrainSettings, device_kind: str
) -> ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch on `device_kind` (``cuda`` or ``cpu``)."""
    t = traits(spec)
    tokens = settings.micro_batch_tokens
    b = BYTES[settings.compute_dtype]
    h, layers = spec.hidden_size, spec.num_layers
    method = settings.method
    first_trainable = 0
    if method == "freeze":
        first_trainable = max(layers - settings.trainable_layers, 0)
    full = method == "full"
    blocks = layers - first_trainable
    details: dict[str, int] = {}
    per_block_terms = block_bytes(spec, settings, device_kind, trainable=full or method == "freeze")
    per_block = sum(per_block_terms.values())
    first_input_grad = full or settings.gradient_checkpointing
    first_terms = block_bytes(
        spec,
        settings,
        device_kind,
        trainable=full or method == "freeze",
        input_grad=first_input_grad,
    )
    first_block = sum(first_terms.values()) if blocks else 0
    head_trains = method in ("full", "freeze")
    r = stream_bytes(settings)
    autocast = settings.precision in ("bf16", "fp16")
    final = (
        _norm(t, tokens * h, r, input_grad=True, weight_trains=head_trains, autocast=autocast)
        if spec.is_decoder
        else 0
    )
    final += tokens * h * b if head_trains else 0  # lm_head input
    if not spec.is_decoder:  # BERT's MLM transform: dense, gelu, LayerNorm, decoder
        final = tokens * h * b * (4 if head_trains else 2)
    embed = 0
    if spec.hidden_dropout > 0 and spec.model_type in ("gpt2", "opt", "bert"):
        embed += tokens * h * mask_bytes(device_kind, r)  # embedding dropout mask
    if spec.model_type == "bert":
        embed += tokens * h * b  # embedding LayerNorm input
    if method == "freeze" and spec.tied_embeddings and first_trainable:
        # a tied head trains the token embeddings, so every frozen block below still keeps
        # what its input gradient needs: freezing saves no activation memory here
        frozen = block_bytes(spec, settings, device_kind, trainable=False)
        if settings.gradient_checkpointing:
            embed += first_trainable * tokens * h * r  # checkpointed too: their inputs only
        else:
            embed += first_trainable * sum(frozen.values())
        first_block = per_block
    details["first_block"] = first_block
    details["per_block"] = per_block
    details["blocks_kept"] = blocks
    details["final"] = final
    details["embedding"] = embed
    if settings.gradient_checkpointing:
        kept = blocks * tokens * h * r + final + embed
        if settings.padded:
            kept += settings.micro_batch * settings.seq_len  # the boolean mask, shared
        elif settings.masked_pack:
            # the pack's block-diagonal mask, shared by the blocks and kept as their input:
            # bool for sdpa, the stream's dtype for eager's additive mask
            kept += tokens * tokens * (1 if settings.attention == "sdpa" else r)
        recompute = per_block
        details["checkpoint_inputs"] = blocks * tokens * h * r
    else:
        kept = first_block + max(blocks - 1, 0) * per_block + final + embed
        recompute = 0
    # A bare encoder or a classifier has no vocabulary head: no vocabulary-sized logits.
    vocab_elems = tokens * spec.vocab_size if spec.has_lm_head else 0
    logits_saved = vocab_elems * 4
    if t.logit_softcap:
        logits_saved += vocab_elems * b  # tanh output of the final soft cap
    logits_peak = vocab_elems * 12 + (vocab_elems * b if t.logit_softcap else 0)
    logits_forward = vocab_elems * (b + (4 if b != 4 else 0) + 4)
    if t.logit_softcap:
        logits_forward += vocab_elems * b
    if settings.loss_kernel == "liger" and spec.has_lm_head:
        # a trained head's weight gradient is made in the forward, in the weight's dtype
        head_grad = spec.vocab_size * h * r if head_trains else 0
        fused = fused_loss_bytes(spec, tokens, r, head_grad=head_grad)
        details.update({f"fused_loss.{k}": v for k, v in fused.items()})
        logits_saved = fused["saved"]
        logits_peak = fused["saved"]
        logits_forward = fused["saved"] + fused["chunk"]
    return ActivationEstimate(
        kept=kept,
        recompute=recompute,
        logits_saved=logits_saved,
        logits_peak=logits_peak,
        logits_forward=logits_forward,
        per_block=per_block,
        details=details | {f"block.{k}": v for k, v in per_block_terms.items()},
    )


def fused_loss_bytes(
    spec: ModelSpec, tokens: int, input_bytes: int, *, head_grad: int = 0
) -> dict[str, int]:
    """What liger-kernel's fused linear cross-entropy holds instead of the full logits.

    It computes the loss and its gradients during the forward, chunk by chunk: each chunk is
    ``next_pow2(ceil(tokens / ceil(vocab / hidden)))`` tokens, so a chunk's logits are about as
    large as the hidden states. A chunk's logits (in the input's dtype) become their own
    gradient in place, with a matmul's working copy beside them; what is kept for backward is
    the input's gradient (tokens x hidden) and the per-token loss (fp32), and, when the head
    trains, its weight's gradient, made in the forward instead of at the start of backward.

    Args:
        tokens: tokens in the micro-batch.
        input_bytes: bytes per element of the last hidden states (the residual stream's).
        head_grad: bytes of the head weight's gradient when it trains (0 when frozen).

    Returns:
        ``chunk`` (the forward's vocabulary-sized working set), ``saved`` (kept for backward)
        and ``head_grad`` (the part of ``saved`` that is the head's gradient, not logits).
    """
    h, vocab = max(spec.hidden_size, 1), spec.vocab_size
    per_chunk = -(-tokens // max(1, -(-vocab // h)))
    chunk_tokens = min(tokens, 1 << max(per_chunk - 1, 0).bit_length())
    return {
        "chunk": 2 * chunk_tokens * vocab * input_bytes,
        "saved": tokens * h * input_bytes + tokens * 4 + head_grad,
        "head_grad": head_grad,
    }
