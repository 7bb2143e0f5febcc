"""How long a run takes: FLOPs per token over the device's throughput at a stated utilisation.

An estimate, always labelled as one. The arithmetic:

- Matmul FLOPs per token: a forward pass costs 2 FLOPs per active parameter; backward costs
  2 more for the input gradients and 2 for the weight gradients of what trains. So full
  fine-tuning is 6N, a frozen base with adapters 4N + 6·(adapter params), and freeze's frozen
  lower blocks 2N (no backward at all below the first trainable block).
- Attention scores add 2·2·layers·seq·(heads·head_dim) per token forward (QKᵀ and AV), halved
  for causal flash kernels, and three times that for forward plus backward.
- Gradient checkpointing recomputes each block's forward once more in backward.
- Utilisation (model FLOPs utilisation, MFU) is an assumption, shown with every estimate:
  `MFU` below; bitsandbytes' 4-bit and int8 matmuls dequantize weights on the fly, which
  `QUANT_SLOWDOWN` accounts for. On the CPU the throughput is the matmul rate measured on
  this machine by `affiner.planner.hardware.device.cpu_target`, so the utilisation there is of a measured rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import block_params, trainable_shapes
from affiner.planner.models import ModelSpec
from affiner.planner.settings import TrainSettings

#: Assumed model FLOPs utilisation on a GPU by method (bf16/fp16 tensor cores, HF Trainer,
#: SDPA; typical of single-GPU fine-tuning logs at seq 512-2048).
MFU = {"full": 0.40, "freeze": 0.40, "lora": 0.35, "qlora": 0.30, "lora8": 0.30}
#: Fraction of the measured CPU matmul rate a training step reaches (framework overhead,
#: element-wise ops, small matrices).
CPU_EFFICIENCY = 0.45
#: Extra time of bitsandbytes' quantized matmuls over 16-bit ones.
QUANT_SLOWDOWN = {"nf4": 1.30, "fp4": 1.30, "int8": 1.6}
#: Multi-GPU scaling efficiency per extra device (communication not hidden by compute).
SCALING = 0.92


@dataclass
class TimeEstimate:
    """Predicted training time.

    Attributes:
        tokens_per_step: tokens in one optimizer step over all devices.
        flops_per_token: training FLOPs per token (matmuls and attention).
        peak_tflops: the device's dense peak for the precision used (None when unknown).
        utilisation: the assumed fraction of that peak the run reaches.
        step_seconds: one optimizer step (None when the device's speed is unknown).
        steps_per_epoch, epoch_seconds, total_seconds: None when the data size is unknown.
        notes: assumptions, in words.
    """

    tokens_per_step: int
    flops_per_token: float
    peak_tflops: float | None
    utilisation: float
    step_seconds: float | None
    steps_per_epoch: int | None = None
    epoch_seconds: float | None = None
    total_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"is_estimate": True}


def flops_per_token(spec: ModelSpec, settings: TrainSettings) -> float:
    """Training FLOPs per token for `settings` (see the module docstring)."""
    n = spec.active_params
    layers = max(spec.num_layers, 1)
    q_dim = spec.num_attention_heads * spec.head_dim
    causal = 0.5 if (spec.is_decoder and settings.attention != "eager") else 1.0
    attn_fwd = 4 * layers * settings.seq_len * q_dim * causal
    if settings.method == "full":
        flops = 6 * n + 3 * attn_fwd
        recompute = 2 * n + attn_fwd
    elif settings.method == "freeze":
        trained = min(settings.trainable_layers, layers)
        # a block's active parameters (a mixture uses only its routed experts per token)
        outside = spec.params_total - block_params(spec) * layers
        frozen_params = (n - outside) / layers * (layers - trained)
        active_trained = n - frozen_params
        frac = trained / layers
        flops = 2 * frozen_params + 6 * active_trained + attn_fwd * (1 - frac) + 3 * attn_fwd * frac
        recompute = (2 * active_trained + attn_fwd) * frac
    else:
        adapters = sum(a * b for a, b in trainable_shapes(spec, settings))
        flops = 4 * n + 6 * adapters + 3 * attn_fwd
        recompute = 2 * n + attn_fwd
    if settings.gradient_checkpointing:
        flops += recompute
    return float(flops)


def _peak(device: DeviceTarget, settings: TrainSettings) -> float | None:
    dtype = settings.compute_dtype
    if dtype == "bf16":
        return device.peak_tflops_bf16
    if dtype == "fp16":
        return device.peak_tflops_fp16
    return device.peak_tflops_fp32


def estimate_time(
    spec: ModelSpec,
    settings: TrainSettings,
    device: DeviceTarget,
    *,
    train_tokens: int | None = None,
    train_rows: int | None = None,
    epochs: float = 1.0,
) -> TimeEstimate:
    """Predict step, epoch and total time of a run.

    Args:
        train_tokens: tokens in the training set (padded to `settings.seq_len` per row when
            only `train_rows` is known).
        train_rows: rows in the training set.
        epochs: passes over the data.
    """
    per_token = flops_per_token(spec, settings)
    tokens = settings.tokens_per_step
    peak = _peak(device, settings)
    notes = []
    if device.is_cpu:
        util = CPU_EFFICIENCY
        what = "measured on this machine" if device.measured else "estimated for this CPU"
        notes.append(f"CPU run: {util:.0%} of the matmul rate {what} ({peak or 0:.2f} TFLOP/s)")
    else:
        util = MFU[settings.method]
        if settings.compute_dtype == "fp32":
            util *= 0.8
        notes.append(
            f"assumes {util:.0%} model-FLOPs utilisation of the {peak or 0:g} TFLOP/s dense peak"
        )
    quant = settings.effective_quantization
    slowdown = QUANT_SLOWDOWN.get(quant, 1.0)
    if slowdown > 1.0:
        notes.append(f"{quant} matmuls dequantize on the fly: about {slowdown - 1:.0%} slower")
    if settings.gradient_checkpointing:
        notes.append(
            "gradient checkpointing recomputes each block's forward (about a third more time)"
        )
    step = None
    if peak:
        rate = peak * 1e12 * util * settings.num_gpus * (SCALING ** (settings.num_gpus - 1))
        step = per_token * tokens * slowdown / rate
    else:
        notes.append("this device's speed is unknown (give --gpu NAME for a time estimate)")
    result = TimeEstimate(tokens, per_token, peak, util, step, notes=notes)
    rows_per_step = settings.effective_batch
    if train_rows:
        result.steps_per_epoch = max(1, -(-train_rows // rows_per_step))
    elif train_tokens:
        result.steps_per_epoch = max(1, -(-train_tokens // tokens))
    if step is not None and result.steps_per_epoch:
        result.epoch_seconds = step * result.steps_per_epoch
        result.total_seconds = result.epoch_seconds * epochs
    return result
