"""How long a run takes: FLOPs per token over the device's throughput at a stated utilisation.

An estimate, always labelled as one. The arithmetic:

- Matmul FLOPs per token: a forward pass costs 2 FLOPs per active parameter; backward costs
  2 more for the input gradients and 2 for the weight gradients of what trains. So full
  fine-tuning is 6N, a frozen base with adapters 4N + 6·(adapter params), and freeze's frozen
  lower blocks 2N (no backward at all below the first trainable block).
- Attention scores add 2·2·layers·seq·(heads·head_dim) per token forward (QKᵀ and AV), halved
  for causal flash kernels, and three times that for forward plus backward.
- Packing (`TrainSettings.packing`) computes a row's real tokens, not `seq_len` of them: the
  mean row length comes from the data (train_tokens over train_rows). Attention then runs over
  the whole pack: with sdpa or eager a block-diagonal mask makes it the pack's length, every
  block computed (a mask stops a kernel skipping the causal half); FlashAttention's varlen
  kernels attend within each example. Unpacked, every row is counted at `seq_len`.
- The fused loss (liger) computes the same head matmuls chunk by chunk; the plan credits it
  with `LIGER_HEAD_SPEEDUP` on the head's share of the FLOPs (liger's published gain).
- Gradient checkpointing recomputes each block's forward once more in backward.
- Utilisation (model FLOPs utilisation, MFU) is an assumption, shown with every estimate:
  `MFU` below; bitsandbytes' 4-bit and int8 matmuls dequantize weights on the fly, which
  `QUANT_SLOWDOWN` accounts for. On the CPU the throughput is the matmul rate measured on
  this machine by `affiner.planner.hardware.device.cpu_target`, so the utilisation there is of a measured rate.
- A step never takes less than its fixed costs (`overhead_floor`): each micro-batch launches
  every block's kernels from Python and loads a batch, each optimizer step runs the optimizer,
  zeroes the gradients and logs. A small model's FLOPs alone would say "0 ms/step".
- A plan is impractical when one step or the whole run takes longer than anyone will wait
  (`IMPRACTICAL_STEP_SECONDS`, `IMPRACTICAL_TOTAL_SECONDS`); the estimate then says so, and why.
- Several devices (``num_gpus`` > 1) each compute their share of the step's tokens; what
  they spend talking (gradients, gathered weights) comes from
  `affiner.planner.communication`, by strategy and link, less what overlaps with compute.
  On the CPU the processes share one machine's cores, so its measured rate is divided
  among them rather than multiplied.
- A measured step calibrates the model: `calibrate` scales the estimate of other settings on
  the same device by how the measured step compared with its own estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from affiner.planner.communication import communication, communication_note
from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import block_params, trainable_shapes
from affiner.planner.models import ModelSpec
from affiner.planner.settings import TrainSettings
from affiner.planner.units import format_duration

#: Assumed model FLOPs utilisation on a GPU by method (bf16/fp16 tensor cores, HF Trainer,
#: SDPA; typical of single-GPU fine-tuning logs at seq 512-2048).
MFU = {"full": 0.40, "freeze": 0.40, "lora": 0.35, "qlora": 0.30, "lora8": 0.30}
#: Fraction of the measured CPU matmul rate a training step reaches (framework overhead,
#: element-wise ops, small matrices).
CPU_EFFICIENCY = 0.45
#: Extra time of bitsandbytes' quantized matmuls over 16-bit ones.
QUANT_SLOWDOWN = {"nf4": 1.30, "fp4": 1.30, "int8": 1.6}
#: Padding left in a batch grouped by length (the runner's order whenever it does not pack:
#: Trainer's ``group_by_length`` sorts megabatches of 50 batches), over the rows' real tokens.
GROUPED_PADDING = 1.05
#: LoRA dropout on the CPU: drawing each wrapped layer's Bernoulli mask and applying it, per
#: input element. Measured here (2-core Xeon, fp32, torch 2.13, SmolLM2-135M LoRA on all linear
#: layers, dropout 0.05): ``aten::bernoulli_`` 13 ns and the multiply 3 ns an element, a fifth
#: of the step. On a GPU the fused dropout kernel is a memory pass, which the MFU covers.
CPU_DROPOUT_SECONDS_PER_ELEMENT = 16e-9
#: Throughput of the vocabulary head under liger's fused linear cross-entropy over torch's
#: logits-then-loss (liger-kernel reports about 20% more on Llama-3-8B): the upcast, the
#: log-softmax and their gradients no longer make round trips through memory.
LIGER_HEAD_SPEEDUP = 1.2

# The per-step floor. Eager PyTorch dispatches every op from Python: a few microseconds of CPU
# time per kernel launch, 5-25 µs with autograd bookkeeping (the dispatcher's layers, then
# ``cudaLaunchKernel`` at 1-3 µs; PyTorch's "Accelerating PyTorch with CUDA Graphs" names
# launch overhead the first-order bottleneck of small workloads). A Llama-style block runs on
# the order of 100 kernels forward and backward (norms, projections, rotary, attention, MLP,
# residuals; more with LoRA's adapters on every linear), hence about half a millisecond a block
# per micro-batch. The GPU overlaps this with its own work, so it is a floor, not an addition.
#: CPU-side launch time of one block's forward and backward, per micro-batch (seconds).
LAUNCH_SECONDS_PER_LAYER = 0.5e-3
#: Per micro-batch outside the blocks: collate, host-to-device copy, embeddings, head and loss,
#: the Trainer's hooks (seconds).
MICRO_BATCH_OVERHEAD_SECONDS = 2e-3
#: Per optimizer step: the (foreach) optimizer over every trainable tensor, gradient clipping,
#: zero_grad, the scheduler and logging callbacks (seconds).
STEP_OVERHEAD_SECONDS = 10e-3
#: A step longer than this is impractical: a short fine-tune of 300 steps would take more
#: than a day (seconds).
IMPRACTICAL_STEP_SECONDS = 5 * 60
#: A run longer than this is impractical on one machine (seconds; a week).
IMPRACTICAL_TOTAL_SECONDS = 7 * 24 * 3600


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
        total_steps: optimizer steps of the whole run, as the Trainer counts them
            (``ceil(steps_per_epoch × epochs)``); `total_seconds` is `step_seconds` times it,
            so the step and the total always come from the same settings.
        overhead_seconds: the floor of one step (`overhead_floor`); `step_seconds` is never
            below it.
        practical: False when the step or the run is too long to wait for on this device.
        impractical_reason: why, in words (None when practical).
        calibration: measured over estimated step time when `calibrate` scaled this estimate
            (None when it is the model's own).
        calibration_note: what calibrated it, in words (also the last of `notes`).
        communication_seconds: the part of `step_seconds` spent in collectives that compute
            does not hide (0 on one device).
        communication_share: that part's share of the step (0 on one device).
        communication: the step's collectives in full
            (`affiner.planner.communication.Communication.to_json`), None on one device.
        devices: the devices the run is spread over (``num_gpus``).
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
    total_steps: int | None = None
    overhead_seconds: float = 0.0
    practical: bool = True
    impractical_reason: str | None = None
    calibration: float | None = None
    calibration_note: str | None = None
    communication_seconds: float = 0.0
    communication_share: float = 0.0
    communication: dict[str, Any] | None = None
    devices: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"is_estimate": True}


def mean_row_tokens(
    settings: TrainSettings, train_tokens: int | None, train_rows: int | None
) -> float | None:
    """The data's mean tokens a row, each cut at `seq_len` (None when the data is unknown)."""
    if not train_tokens or not train_rows:
        return None
    return min(train_tokens / train_rows, float(settings.seq_len))


def attention_span(settings: TrainSettings, row_tokens: float | None = None) -> float:
    """Keys a query attends over, on average: the row, or the whole pack behind a mask."""
    row = settings.seq_len if row_tokens is None else row_tokens
    if settings.packing and settings.masked_pack:
        return row * settings.micro_batch
    return row


def flops_per_token(
    spec: ModelSpec, settings: TrainSettings, *, row_tokens: float | None = None
) -> float:
    """Training FLOPs per token for `settings` (see the module docstring).

    `row_tokens` is the mean real length of a packed row (`mean_row_tokens`); None counts
    every row at `seq_len`.
    """
    n = spec.active_params
    layers = max(spec.num_layers, 1)
    q_dim = spec.num_attention_heads * spec.head_dim
    causal = 0.5 if (spec.is_decoder and settings.attention != "eager") else 1.0
    if settings.packing and settings.masked_pack:
        causal = 1.0  # an explicit mask: every block of scores is computed
    span = attention_span(settings, row_tokens)
    attn_fwd = 4 * layers * span * q_dim * causal
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
    if settings.loss_kernel == "liger" and spec.has_lm_head:
        head_trains = settings.method in ("full", "freeze")
        head = (6 if head_trains else 4) * spec.vocab_size * spec.hidden_size
        flops -= head * (1 - 1 / LIGER_HEAD_SPEEDUP)
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
            only `train_rows` is known); with both, a packed run computes their mean a row.
        train_rows: rows in the training set.
        epochs: passes over the data.
    """
    known = mean_row_tokens(settings, train_tokens, train_rows)
    grouped = not settings.packing and settings.padded and known is not None
    row = (
        known
        if settings.packing
        else (min(known * GROUPED_PADDING, settings.seq_len) if grouped else None)
    )
    per_token = flops_per_token(spec, settings, row_tokens=row)
    tokens = settings.tokens_per_step
    notes = []
    if grouped:
        tokens = max(1, round(tokens * row / settings.seq_len))
        notes.append(
            f"batches grouped by length: rows average {known:.0f} of {settings.seq_len} tokens, "
            f"padded to their batch's longest (about {GROUPED_PADDING - 1:.0%} more)"
        )
    if settings.packing and row is not None:
        tokens = max(1, round(tokens * row / settings.seq_len))
        notes.append(
            f"packed: rows average {row:.0f} of {settings.seq_len} tokens, so a step computes "
            f"{1 - row / settings.seq_len:.0%} fewer tokens than rows padded to {settings.seq_len}"
        )
    elif settings.packing:
        notes.append(
            f"packed, data lengths unknown: every row counted at {settings.seq_len} tokens"
        )
    if settings.packing and settings.masked_pack:
        notes.append(
            f"{settings.attention} attention spans the whole pack of {settings.micro_batch} rows "
            "(a block-diagonal mask), so its cost grows with the pack"
        )
    if settings.loss_kernel == "liger":
        notes.append(
            f"fused loss (liger): the head's matmuls counted {LIGER_HEAD_SPEEDUP - 1:.0%} faster"
        )
    peak = _peak(device, settings)
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
    overhead = overhead_floor(spec, settings)
    step = None
    comm = None
    if peak:
        # the GPUs each bring their own rate; CPU processes share the one rate measured
        devices = 1 if device.is_cpu else settings.num_gpus
        rate = peak * 1e12 * util * devices
        step = per_token * tokens * slowdown / rate
        comm = communication(spec, settings, device, step)
        if comm is not None:
            step += comm.exposed_seconds
        dropout = cpu_dropout_seconds(spec, settings, tokens) if device.is_cpu else 0.0
        if dropout > 0.05 * step:
            notes.append(
                f"LoRA dropout {settings.lora_dropout:g} draws a mask for every wrapped layer's "
                f"input: about {format_duration(dropout)} a step on the CPU (0 avoids it)"
            )
        step += dropout
        if step < overhead:
            notes.append(
                f"per-step overheads set the floor: at least {format_duration(overhead)} "
                f"(kernel launches of {max(spec.num_layers, 1)} blocks x {settings.grad_accum} "
                "micro-batches, the data loader, the optimizer)"
            )
            step = overhead
    else:
        notes.append("this device's speed is unknown (give --gpu NAME for a time estimate)")
    result = TimeEstimate(tokens, per_token, peak, util, step, notes=notes)
    result.overhead_seconds = overhead
    result.devices = settings.num_gpus
    if comm is not None and step:
        result.communication_seconds = comm.exposed_seconds
        result.communication_share = comm.exposed_seconds / step
        result.communication = comm.to_json()
        notes.append(communication_note(comm, settings, step))
    result.steps_per_epoch = run_steps(
        settings, train_rows=train_rows, train_tokens=train_tokens, epochs=1.0
    )
    result.total_steps = run_steps(
        settings, train_rows=train_rows, train_tokens=train_tokens, epochs=epochs
    )
    _totals(result, device)
    return result


def run_steps(
    settings: TrainSettings,
    *,
    train_rows: int | None = None,
    train_tokens: int | None = None,
    epochs: float = 1.0,
) -> int | None:
    """Optimizer steps of a run with `settings` over the data, when its size is known.

    Rows count as the Trainer counts them (`optimizer_steps`); with only a token count, a step
    takes `settings.tokens_per_step` of them. The time estimate and the CPU memory estimate
    (whose heap grows with the steps) both count with this.
    """
    if train_rows:
        batches = (settings.micro_batch, settings.grad_accum)
        return optimizer_steps(train_rows, *batches, epochs, settings.num_gpus)
    if train_tokens:
        per_epoch = max(1, -(-train_tokens // max(1, settings.tokens_per_step)))
        return max(1, math.ceil(per_epoch * epochs - 1e-9))
    return None


def optimizer_steps(
    rows: int, micro_batch: int, grad_accum: int = 1, epochs: float = 1.0, num_gpus: int = 1
) -> int:
    """Optimizer steps a run over `rows` takes, counted as the Trainer counts them.

    Each device's data loader yields ``ceil(rows / (micro_batch × num_gpus))`` micro-batches an
    epoch (the last one short, none dropped); a partial group of `grad_accum` micro-batches at
    an epoch's end still makes a step; fractional epochs round the total up. The plan, the
    pre-flight's "is this run long?" and the assistant all count with this one rule, so the
    steps a plan shows are the steps the run then logs.
    """
    micro_batches = max(1, math.ceil(rows / max(1, micro_batch * max(1, num_gpus))))
    per_epoch = max(1, math.ceil(micro_batches / max(1, grad_accum)))
    return max(1, math.ceil(per_epoch * epochs - 1e-9))


def cpu_dropout_seconds(spec: ModelSpec, settings: TrainSettings, tokens: int) -> float:
    """The CPU time of LoRA dropout in one step of `tokens` tokens a device.

    peft draws a separate mask for each wrapped layer's input (q, k and v each draw their own),
    so the elements are the tokens times the sum of the wrapped layers' input widths.
    """
    if not settings.uses_lora or settings.lora_dropout <= 0:
        return 0.0
    wanted = set(settings.lora_targets)
    widths = sum(
        t.count * t.in_features
        for t in spec.lora_targets
        if t.kind != "expert" and ("all-linear" in wanted or t.name in wanted)
    )
    return tokens * widths * CPU_DROPOUT_SECONDS_PER_ELEMENT


def overhead_floor(spec: ModelSpec, settings: TrainSettings) -> float:
    """The least one optimizer step takes whatever its FLOPs: `STEP_OVERHEAD_SECONDS` plus, for
    each of the `grad_accum` micro-batches a device runs, `MICRO_BATCH_OVERHEAD_SECONDS` and
    `LAUNCH_SECONDS_PER_LAYER` for every block (the figures' sources are beside them)."""
    layers = max(spec.num_layers, 1)
    per_micro = MICRO_BATCH_OVERHEAD_SECONDS + layers * LAUNCH_SECONDS_PER_LAYER
    return STEP_OVERHEAD_SECONDS + settings.grad_accum * per_micro


def _totals(result: TimeEstimate, device: DeviceTarget) -> None:
    """Epoch and total time from the one step time, then whether anyone would wait for it."""
    step = result.step_seconds
    result.epoch_seconds = result.total_seconds = None
    if step is not None and result.steps_per_epoch:
        result.epoch_seconds = step * result.steps_per_epoch
        result.total_seconds = step * (result.total_steps or result.steps_per_epoch)
    result.practical, result.impractical_reason = True, None
    if step is None:
        return
    if step > IMPRACTICAL_STEP_SECONDS:
        how_long = f"about {format_duration(step)} per step"
    elif result.total_seconds is not None and result.total_seconds > IMPRACTICAL_TOTAL_SECONDS:
        how_long = (
            f"about {format_duration(result.total_seconds)} in all ({result.total_steps} steps)"
        )
    else:
        return
    if device.is_cpu:
        where, instead = "on a CPU", "use a GPU (affiner plan --gpu NAME) or a smaller model"
    else:
        gpus = result.devices
        where = f"on one {device.name}" if gpus == 1 else f"on {gpus} x {device.name}"
        instead = (
            "use a faster GPU (affiner plan --gpu NAME), more GPUs (--gpus N) or a smaller model"
        )
    result.practical = False
    result.impractical_reason = f"{how_long}: impractical {where}; {instead}"


def calibrate(
    estimate: TimeEstimate,
    measured: TimeEstimate,
    measured_step_seconds: float,
    device: DeviceTarget,
    source: str = "a measured step",
) -> TimeEstimate:
    """`estimate` scaled by how a measured step compared with the model's estimate of it.

    A pre-flight or a run measures one step for some settings; the same device then runs other
    settings (a longer sequence, another micro-batch, checkpointing on) slower or faster in
    about the same proportion to the FLOPs model as the measured one, since what the model
    misses (the real utilisation, the overheads) is mostly the device's and the software's.

    Args:
        estimate: the estimate to correct (`estimate_time` for the settings to plan).
        measured: `estimate_time` for the settings the measured step ran with, same device.
        measured_step_seconds: the measured time of one optimizer step of those settings.
        device: the device both ran on (for the practicality judgement).
        source: where the measured step comes from, for the note ("the pre-flight").

    Returns:
        A copy of `estimate` with step, epoch and total time multiplied by measured over
        estimated (`calibration`), the utilisation divided by it, and a note saying so.
        `estimate` itself is unchanged; with no step estimate to compare, it comes back as is.
    """
    if measured.step_seconds is None or estimate.step_seconds is None or measured_step_seconds <= 0:
        return replace(estimate, notes=list(estimate.notes))
    ratio = measured_step_seconds / measured.step_seconds
    result = replace(
        estimate,
        step_seconds=estimate.step_seconds * ratio,
        utilisation=estimate.utilisation / ratio,
        calibration=ratio,
        notes=list(estimate.notes),
    )
    result.calibration_note = (
        f"calibrated by {source}: {format_duration(measured_step_seconds)} where the "
        f"model said {format_duration(measured.step_seconds)} (x{ratio:.2f})"
    )
    result.notes.append(result.calibration_note)
    _totals(result, device)
    return result
