"""Peak memory of a training step: `estimate_memory(spec, settings, device) -> MemoryEstimate`.

The peak is the larger of two moments of a step (the HF Trainer with torch AdamW):

- **backward starts**: weights, optimizer state (present from the first step on), gradients
  held over from earlier micro-batches (gradient accumulation), every saved activation, and
  the vocabulary-sized loss working set: transformers 5's ``ForCausalLMLoss`` calls
  ``logits.float()``, cross-entropy keeps the fp32 log-softmax, and its backward holds that
  plus two fp32 gradients of the same size (12 bytes per token per vocabulary entry).
- **the optimizer step**: weights, all gradients and all optimizer state at once, plus the
  optimizer's scratch (none for fused AdamW; Adafactor's fp32 copies of one tensor). On the
  first step this is also when the state is created, so a run that survives step one's
  ``optimizer.step()`` survives the rest.

Precision follows the Trainer: ``bf16``/``fp16`` keep fp32 weights (and fp32 gradients and
states) and autocast the matmuls, whose 16-bit weight copies are saved for backward;
``bf16-pure`` loads the model in bf16. LoRA loads the frozen base in the compute dtype and peft
keeps the adapters in fp32. QLoRA/8-bit LoRA follow `affiner.planner.memory.weights`.

On a GPU the reserved memory adds the CUDA context and the caching allocator's slack
(`overhead`); on the CPU the peak is the training process's resident memory, compared with the
``process_peak_rss`` of a run's ``system`` events: the overhead is the process's baseline (the
interpreter with the runner's libraries loaded and warmed up, measured on the machine by
`affiner.planner.hardware.process_baseline`, else `CPU_RUNTIME`) and glibc's heap slack.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory.activations import BYTES, estimate_activations
from affiner.planner.memory.optimizers import optimizer_bytes, step_transient
from affiner.planner.memory.weights import DTYPE_BYTES, quantized_targets, weight_bytes
from affiner.planner.models import ModelSpec
from affiner.planner.settings import TrainSettings
from affiner.planner.units import MIB

#: CUDA context of a PyTorch process (CUDA 12, lazy module loading), by architecture: the driver
#: context, cuBLAS/cuDNN handles and their workspaces. Hopper's is the one measured most often
#: (about 500 MiB plus cuBLAS workspace); older cards carry fewer kernels.
CUDA_CONTEXT = {9: 520 * MIB, 8: 450 * MIB, 7: 380 * MIB}
CUDA_CONTEXT_DEFAULT = 520 * MIB
#: The caching allocator reserves more than it hands out (rounding to 2 MiB blocks, split
#: blocks it cannot reuse): reserved ≈ allocated × (1 + this) for training loops.
ALLOCATOR_SLACK = 0.06
#: Resident memory of a CPU training process before its model exists, used when the machine's
#: own figure (`DeviceTarget.process_baseline`) was not measured. Measured 2026-12-01 by
#: `affiner.planner.hardware.process_baseline`'s child on the 2-core development machine
#: (x86-64, torch 2.13.0+cpu, transformers 5.24.0, peft 0.21.2, datasets 5.2.0,
#: accelerate 1.15.0, bitsandbytes 0.50.2, Python 3.11): peak RSS 494.5 MiB (imports alone:
#: 476 MiB). Rounded up to 500 MiB.
CPU_RUNTIME = 500 * MIB
#: glibc's ceiling on its dynamic mmap threshold (``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB on
#: 64-bit): once a freed mmapped block raised the threshold, every tensor below this size comes
#: from the heap, whose freed blocks glibc keeps; tensors above it are mmapped and returned.
GLIBC_MMAP_MAX = 32 * MIB
#: Freed heap memory glibc still holds at a CPU run's peak. Measured 2026-12-01 as the peak RSS
#: with glibc's defaults less the planned allocated peak and the process baseline, on three
#: fp32 LoRA runs of 20 steps with dynamic padding: classify (MiniLM-L6, 6 blocks, batch 32x64)
#: 1777 MiB, 542 MiB retained over 647 MiB of heap transients and 106 MiB per block; the same
#: model without attention dropout (CPU flash kernel) 1600 MiB, 455 over 557 and 91; chat
#: (SmolLM2-135M, 30 blocks, batch 8x128) 4796 MiB, 1118 over 2039 and 68. Runs of the same
#: settings with ``MALLOC_MMAP_THRESHOLD_=131072`` (every tensor mmapped and returned when freed)
#: peaked within 1.5% of the baseline plus the allocated peak for MiniLM (1163 MiB against
#: 1146), so what is missing is glibc's retention, not tensors, the tokenizer or the data. One
#: share of the transients cannot be both models (0.84 for MiniLM, 0.55 for SmolLM2): the heap
#: keeps a share of all of them (fragmentation between the saved activations) plus about two
#: blocks' worth of one block's working set (a block's forward temporaries and, in backward,
#: the gradients of its activations, in holes the next block cannot always reuse). Fitted on
#: the first and third run, the second lands within 2.5%.
CPU_HEAP_RETENTION = 0.47
#: Blocks' worth of one block's saved activations the heap keeps besides (see above).
CPU_HEAP_BLOCKS = 2.2
#: The retention grows slowly with the steps, as new batch shapes keep fragmenting the heap:
#: by this share per e-fold of steps past `CPU_HEAP_BASE_STEPS`, measured on both demos (MiniLM
#: 542 -> 654 MiB at 120 steps and 713 at 250; SmolLM2 1118 -> 1236 at 50): 0.115 to 0.125.
CPU_HEAP_GROWTH = 0.12
#: The run length the retention above was measured at.
CPU_HEAP_BASE_STEPS = 20
#: Steps assumed when the run's length is unknown (no data yet): a few hundred, a CPU run's size.
CPU_HEAP_DEFAULT_STEPS = 250


def heap_growth(steps: int | None) -> float:
    """How much more than at `CPU_HEAP_BASE_STEPS` glibc has kept by the end of `steps` steps."""
    n = CPU_HEAP_DEFAULT_STEPS if steps is None else max(int(steps), CPU_HEAP_BASE_STEPS)
    return 1.0 + CPU_HEAP_GROWTH * math.log(n / CPU_HEAP_BASE_STEPS)


@dataclass
class MemoryEstimate:
    """Predicted peak memory of one training step on one device.

    Attributes:
        peak_bytes: the predicted peak the device must hold, what "fits" is judged on (VRAM
            reserved plus the CUDA context on a GPU; resident memory on a CPU).
            `allocated_bytes` and `reserved_bytes` give the figures torch reports.
        weights, gradients, optimizer, activations, logits, overhead: the peak's parts.
        phase: which moment is the peak: ``forward`` (the loss computed), ``backward`` (its
            start), ``backward_end`` (every gradient made) or ``optimizer_step``.
        trainable_params: parameters that receive gradients.
        details: finer terms (bytes), for the bench and for explanations.
        notes: sentences for people about where an overhead figure came from
            (``process baseline measured on this machine: 494 MiB``).
    """

    peak_bytes: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    phase: str
    trainable_params: int
    details: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def breakdown(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "logits": self.logits,
            "overhead": self.overhead,
        }

    @property
    def allocated_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` would show: the tensors at the peak."""
        return self.details.get("allocated_peak", self.peak_bytes - self.overhead)

    @property
    def reserved_bytes(self) -> int:
        """What ``torch.cuda.max_memory_reserved`` would show: allocated plus the caching
        allocator's slack (on a CPU: plus the heap's fragmentation), without the CUDA context
        or the process's own resident memory that `peak_bytes` adds."""
        return self.details.get("reserved_peak", self.allocated_bytes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"breakdown": self.breakdown}


def block_params(spec: ModelSpec) -> int:
    """Parameters of one transformer block (attention, MLP and its norms)."""
    final_norm = spec.hidden_size * (2 if spec.norm_kind == "layernorm" else 1)
    in_blocks = spec.modules.get("attention", 0) + spec.modules.get("mlp", 0)
    in_blocks += max(spec.modules.get("norms", 0) - final_norm, 0)
    return in_blocks // max(spec.num_layers, 1)


def lora_shapes(spec: ModelSpec, settings: TrainSettings) -> list[tuple[int, int]]:
    """Shapes of the LoRA matrices peft adds (A: r×in, B: out×r) for the chosen targets."""
    wanted = set(settings.lora_targets)
    shapes: list[tuple[int, int]] = []
    r = settings.lora_rank
    layers = max(spec.num_layers, 1)
    for target in spec.lora_targets:
        if "all-linear" not in wanted and target.name not in wanted:
            continue
        if target.kind == "expert":
            # peft's ParamWrapper (target_parameters; it refuses lora_dropout > 0) adds one A/B
            # pair per 3-D expert tensor with rank r per expert; the fused gate_up tensor gets
            # two slices (gate and up) per expert
            if settings.lora_dropout > 0:
                continue
            experts = max(target.count // layers, 1)
            rank = r * experts * (2 if "gate_up" in target.name else 1)
            for _ in range(layers):
                shapes.append((rank, target.in_features))
                shapes.append((target.out_features, rank))
            continue
        for _ in range(target.count):
            shapes.append((r, target.in_features))
            shapes.append((target.out_features, r))
    if spec.num_experts and "all-linear" in wanted:
        for _ in range(layers):  # the router is an nn.Linear too
            shapes.extend([(r, spec.hidden_size), (spec.num_experts, r)])
    return shapes


def trainable_shapes(spec: ModelSpec, settings: TrainSettings) -> list[tuple[int, ...]]:
    """Shapes of the tensors that train (what the optimizer holds state for)."""
    if settings.uses_lora:
        return list(lora_shapes(spec, settings))
    h = spec.hidden_size
    layers = max(spec.num_layers, 1)
    linear: list[tuple[int, ...]] = []
    for target in spec.lora_targets:
        per_block = max(target.count // layers, 1)
        for _ in range(per_block):
            linear.append((target.out_features, target.in_features))
            if target.bias:
                linear.append((target.out_features,))
    linear_params = sum(_numel(s) for s in linear)
    rest = block_params(spec) - linear_params
    block = linear + ([(rest,)] if rest > 0 else [])
    head = spec.modules.get("head", 0)
    embed = spec.modules.get("embeddings", 0)
    final_norm: list[tuple[int, ...]] = [(h,)] * (2 if spec.norm_kind == "layernorm" else 1)
    if settings.method == "full":
        shapes = block * layers + final_norm
        shapes += [(embed // h, h)] if embed else []
        shapes += [(head // h, h)] if head else []
        other = spec.modules.get("other", 0)
        shapes += [(other,)] if other else []
        return shapes
    n = min(settings.trainable_layers, layers)
    shapes = block * n + final_norm
    if spec.tied_embeddings:
        shapes.append((spec.vocab_size, h))  # the head is the token embedding matrix
    elif head:
        shapes.append((head // h, h))
    return shapes


@dataclass(frozen=True)
class AutocastCopies:
    """16-bit copies autocast makes of fp32 weights that train (bytes).

    Autocast caches the copy of every trainable fp32 weight until the forward's autocast
    context ends, and a matmul saves it for backward. Under checkpointing the blocks' saved
    tensors are dropped, so backward starts with only the head's copy and each recomputed block
    makes its own again. Embedding lookups are not cast.

    Attributes:
        all: every copy (alive at the end of the forward).
        kept: copies still held when backward starts.
        per_block: one block's copies (made again when it is recomputed).
    """

    all: int = 0
    kept: int = 0
    per_block: int = 0


def autocast_copies(
    spec: ModelSpec, settings: TrainSettings, shapes: list[tuple[int, ...]]
) -> AutocastCopies:
    """The copies autocast keeps for mixed-precision training (fp32 masters, fp32 adapters)."""
    if settings.precision not in ("bf16", "fp16"):
        return AutocastCopies()
    if settings.uses_lora:
        total = sum(_numel(s) for s in shapes if len(s) == 2) * 2  # adapters live in blocks
        per_block = total // max(spec.num_layers, 1)
        kept = 0 if settings.gradient_checkpointing else total
        # a frozen head (LoRA's or a quantized base's) is held in the compute dtype: no copy
        return AutocastCopies(total, kept, per_block)
    if _param_dtype(settings) != "fp32":
        return AutocastCopies()
    layers = max(spec.num_layers, 1)
    block = 0
    for target in spec.lora_targets:
        # 3-D expert weights go through transformers' grouped matmul, which autocast leaves
        # alone: they are used in the stream's dtype and never copied (see `activations`)
        if target.kind != "expert":
            block += target.in_features * target.out_features * max(target.count // layers, 1)
    block *= 2
    blocks = layers if settings.method == "full" else min(settings.trainable_layers, layers)
    head = spec.vocab_size * spec.hidden_size * 2 if spec.has_lm_head else 0
    total = block * blocks + head
    return AutocastCopies(total, head if settings.gradient_checkpointing else total, block)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _param_dtype(settings: TrainSettings) -> str:
    """dtype of the base weights: fp32 masters for mixed precision, the compute dtype otherwise."""
    if settings.method in ("full", "freeze"):
        return "bf16" if settings.precision == "bf16-pure" else "fp32"
    return settings.compute_dtype  # a frozen base needs no fp32 master copy


def estimate_memory(
    spec: ModelSpec,
    settings: TrainSettings,
    device: DeviceTarget,
    *,
    steps: int | None = None,
) -> MemoryEstimate:
    """Predict the peak memory of training `spec` with `settings` on one `device`.

    Multi-GPU settings (``num_gpus`` > 1) give the per-device peak of the chosen sharding.
    `steps` is the run's length in optimizer steps, when known: on the CPU the heap glibc keeps
    grows with it (`heap_growth`); a GPU's peak does not depend on it.
    """
    details: dict[str, int] = {}
    pdtype = _param_dtype(settings)
    quant = settings.effective_quantization
    base = weight_bytes(
        spec, param_dtype=pdtype, quantization=quant, double_quant=settings.double_quant
    )
    details["weights_quantized"] = base["quantized"]
    details["weights_unquantized"] = base["unquantized"]
    shapes = trainable_shapes(spec, settings)
    trainable = sum(_numel(s) for s in shapes)
    train_bytes = 4 if settings.uses_lora else DTYPE_BYTES[pdtype]
    adapters = trainable * 4 if settings.uses_lora else 0
    details["adapter_weights"] = adapters
    weights = base["quantized"] + base["unquantized"] + adapters
    gradients = trainable * train_bytes
    optimizer = optimizer_bytes(settings.optimizer, shapes, param_bytes=train_bytes)
    largest = max((_numel(s) for s in shapes), default=0)
    opt_scratch = step_transient(settings.optimizer, largest, trainable, param_bytes=train_bytes)

    act = estimate_activations(spec, settings, device.kind)
    details.update({f"act.{k}": v for k, v in act.details.items()})
    details["activations_saved"] = act.kept
    details["activations_recompute"] = act.recompute
    details["logits_saved"] = act.logits_saved
    copies = autocast_copies(spec, settings, shapes)
    if _sharded_mixed(settings):
        copies = AutocastCopies()  # the sharded engines compute in 16 bits without autocast
    details["autocast_weight_copies"] = copies.all
    # dequantized weight of the largest layer exists while its matmul runs
    dequant = 0
    if quant != "none":
        widest = max((t.in_features * t.out_features for t in quantized_targets(spec)), default=0)
        dequant = widest * BYTES[settings.compute_dtype] * 2
    details["dequant_scratch"] = dequant

    weights, gradients, optimizer, extra_grad = _shard(
        spec, settings, weights, gradients, optimizer, details, trainable=trainable
    )
    held_grads = gradients if settings.grad_accum > 1 else 0
    resident = weights + optimizer + held_grads + extra_grad
    # the end of the forward: every kept activation, every cached weight copy, the loss
    forward_acts = act.kept + copies.all + dequant
    forward = resident + forward_acts + act.logits_forward
    # backward begins with the loss's vocabulary-sized working set; under checkpointing the
    # blocks are recomputed one at a time after it, never beside it
    backward_acts = act.kept + copies.kept + dequant
    loss_stage = act.logits_peak
    block_stage = act.recompute + copies.per_block
    backward = resident + backward_acts + max(loss_stage, block_stage)
    # backward ends with every gradient made; a tied embedding receives two (the head's and the
    # lookup's), and the second exists beside the first until autograd adds them up
    tied = _tied_gradient(spec, settings, train_bytes)
    details["tied_embedding_gradient"] = tied
    backward_end = weights + gradients + optimizer + extra_grad + tied
    step = weights + gradients + optimizer + opt_scratch + extra_grad
    moments = {
        "forward": forward,
        "backward": backward,
        "backward_end": backward_end,
        "optimizer_step": step,
    }
    phase = max(moments, key=lambda name: moments[name])
    allocated = moments[phase]
    if phase == "backward_end":
        act_part, logits_part, grad_part = 0, 0, gradients + tied + extra_grad
    elif phase == "optimizer_step":
        # report the step's parts: activations are gone by then
        act_part, logits_part, grad_part = 0, 0, gradients + opt_scratch + extra_grad
    elif phase == "forward":
        act_part, logits_part = forward_acts, act.logits_forward
        grad_part = held_grads + extra_grad
    elif loss_stage >= block_stage:
        act_part, logits_part = backward_acts, loss_stage
        grad_part = held_grads + extra_grad
    else:
        act_part, logits_part = backward_acts + block_stage, 0
        grad_part = held_grads + extra_grad
    notes: list[str] = []
    if device.kind == "cpu":
        baseline, note = _process_baseline(device)
        notes.append(note)
        details["process_baseline"] = baseline
        details["process_baseline_measured"] = int(device.process_baseline is not None)
        # the heap's high-water mark: a moment's live tensors plus what glibc kept of the
        # transients freed before (it reuses those blocks, so the retention counts once)
        small_vocab = act.logits_saved <= GLIBC_MMAP_MAX
        heap_forward = forward_acts + (act.logits_forward if small_vocab else 0)
        heap_backward = backward_acts + max(loss_stage if small_vocab else 0, block_stage)
        growth = heap_growth(steps)

        def kept(transient: int) -> int:
            return int(growth * (transient * CPU_HEAP_RETENTION + act.per_block * CPU_HEAP_BLOCKS))

        high = max(allocated, forward + kept(heap_forward), backward + kept(heap_backward))
        details["heap_transient"] = max(heap_forward, heap_backward)
        details["heap_steps"] = CPU_HEAP_DEFAULT_STEPS if steps is None else int(steps)
        details["heap_retained"] = high - allocated
        overhead = baseline + details["heap_retained"]
        details["reserved_peak"] = allocated + details["heap_retained"]
    else:
        major = device.compute_capability[0] if device.compute_capability else None
        context = CUDA_CONTEXT.get(major, CUDA_CONTEXT_DEFAULT) if major else CUDA_CONTEXT_DEFAULT
        details["cuda_context"] = context
        details["allocator_slack"] = int(allocated * ALLOCATOR_SLACK)
        overhead = context + details["allocator_slack"]
        details["reserved_peak"] = allocated + details["allocator_slack"]
    details["allocated_peak"] = allocated
    details["forward_peak"] = forward
    details["backward_peak"] = backward
    details["backward_end_peak"] = backward_end
    details["step_peak"] = step
    return MemoryEstimate(
        peak_bytes=allocated + overhead,
        weights=weights,
        gradients=grad_part,
        optimizer=optimizer,
        activations=act_part,
        logits=logits_part,
        overhead=overhead,
        phase=phase,
        trainable_params=trainable,
        details=details,
        notes=notes,
    )


def _process_baseline(device: DeviceTarget) -> tuple[int, str]:
    """(bytes, a sentence): the CPU process's baseline, measured on the machine or `CPU_RUNTIME`."""
    from affiner.planner.units import format_bytes

    if device.process_baseline is not None:
        baseline = device.process_baseline
        return baseline, f"process baseline measured on this machine: {format_bytes(baseline)}"
    return CPU_RUNTIME, (
        f"process baseline not measured on this machine: {format_bytes(CPU_RUNTIME)} assumed"
        " (`affiner hw --remeasure-cpu` measures it)"
    )


def _tied_gradient(spec: ModelSpec, settings: TrainSettings, grad_bytes: int) -> int:
    """Bytes of the second gradient of a tied input/output embedding, when it trains.

    The head's matmul gives the shared matrix its gradient at the start of backward; the
    embedding lookup's backward makes a dense vocabulary-sized gradient of its own at the end,
    which autograd then adds to the first: both exist for a moment.
    """
    if not spec.tied_embeddings or settings.uses_lora or not spec.has_lm_head:
        return 0  # full and freeze both train the head, and so the shared matrix
    return spec.vocab_size * spec.hidden_size * grad_bytes


def _sharded_mixed(settings: TrainSettings) -> bool:
    """A sharded run (FSDP, ZeRO) in mixed precision, which computes without autocast.

    accelerate gives FSDP2 a mixed-precision policy (each unit gathered in the compute dtype,
    the fp32 shard kept as the master), and DeepSpeed casts the model to bf16/fp16 and keeps the
    fp32 masters in its optimizer partitions: neither holds autocast's 16-bit weight copies.
    """
    return (
        settings.num_gpus > 1
        and settings.sharding in ("fsdp", "zero2", "zero3")
        and settings.precision in ("bf16", "fp16")
    )


def _shard(
    spec: ModelSpec,
    settings: TrainSettings,
    weights: int,
    gradients: int,
    optimizer: int,
    details: dict[str, int],
    *,
    trainable: int = 0,
) -> tuple[int, int, int, int]:
    """Per-device weights, gradients, optimizer state and communication buffers under sharding.

    Over `settings.num_gpus` devices (all nodes together):

    - ``ddp``: a full replica on each, plus DDP's flat gradient buckets, a second copy of the
      gradients (``gradient_as_bucket_view`` is off).
    - ``zero2``: gradients and optimizer state sharded; one block's full gradients wait for
      their reduce-scatter. DeepSpeed keeps the whole model in 16 bits on every device and
      the fp32 masters of what trains, sharded, beside the optimizer state.
    - ``fsdp``/``zero3``: weights sharded too, plus the units being used: the block computed
      and the one prefetched, gathered in the compute dtype under mixed precision.
    """
    n = settings.num_gpus
    mode = settings.sharding if n > 1 else "none"
    extra = 0
    layers = max(spec.num_layers, 1)
    mixed = _sharded_mixed(settings) and settings.method in ("full", "freeze")
    if mode == "ddp":
        extra = gradients  # DDP's flat gradient buckets (gradient_as_bucket_view is off)
    elif mode in ("zero2", "fsdp", "zero3"):
        optimizer //= n
        gradients //= n
        extra = gradients * n // layers  # one block's full gradients before reduce-scatter
        working = weights
        if mixed:
            working = weights // 2  # the 16-bit weights the forward and backward use
            if mode != "fsdp":  # DeepSpeed: the fp32 masters sit beside the optimizer state
                optimizer += trainable * 4 // n
        if mode in ("fsdp", "zero3"):
            gathered = 2 * working // layers  # the block being computed and the prefetched one
            weights = (weights if mode == "fsdp" else working) // n + gathered
            details["gathered_block"] = gathered
        else:
            weights = working
    details["comm_buffers"] = extra
    return weights, gradients, optimizer, extra
