"""What several GPUs spend talking to each other in one optimizer step, and how much of it shows.

Every collective is a ring (NCCL's default for these sizes; gloo's on the CPU): each of the N
devices sends and receives (N-1)/N of the buffer for a reduce-scatter or an all-gather, and
twice that for an all-reduce, over the slowest link the ring crosses
(`affiner.planner.hardware.interconnect.ring_link`, at `LINK_EFFICIENCY` of its rate).

What travels, per optimizer step:

- ``ddp``: one all-reduce of the gradients of what trains, in their own dtype (fp32 for the
  Trainer's mixed precision and for LoRA's fp32 adapters), once a step: accumulation runs
  under ``no_sync``. LoRA's adapters are a few MiB, so a LoRA run hardly talks at all.
- ``zero2``: a reduce-scatter of the gradients every micro-batch (DeepSpeed reduces them as
  each backward makes them), and after the step an all-gather of the updated weights that
  train, in 16 bits.
- ``fsdp``/``zero3``: every micro-batch all-gathers every weight twice, for the forward and
  again for the backward (units are freed after use), in the compute dtype, and
  reduce-scatters the gradients: about 3 x the weights' bytes x (N-1)/N. A frozen base is
  sharded too, so LoRA under FSDP still gathers the whole base; only DDP makes LoRA cheap.

Overlap, kept simple: a collective hides under compute that runs beside it, up to `OVERLAP`
of that compute, and at least `EXPOSED_FLOOR` of it always shows (the last bucket waits for
the last gradient; the first gather waits for nothing to hide behind). DDP's all-reduce runs
during the last micro-batch's backward; ZeRO-2's reduce-scatters during every backward (its
weight all-gather after the step shows in full); FSDP's and ZeRO-3's gathers are prefetched
during the forward and backward of the unit before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from affiner.planner.hardware import DeviceTarget
from affiner.planner.hardware.interconnect import LINK_EFFICIENCY, ring_link
from affiner.planner.memory import trainable_shapes
from affiner.planner.memory.weights import DTYPE_BYTES, weight_bytes
from affiner.planner.models import ModelSpec
from affiner.planner.settings import TrainSettings
from affiner.planner.units import format_bytes, format_duration

#: At most this share of the compute running beside a collective hides it (the two contend
#: for memory bandwidth and SMs).
OVERLAP = 0.8
#: At least this share of a step's communication shows whatever the overlap.
EXPOSED_FLOOR = 0.1
#: A communication share of the step above this is named in the plan's reasons.
NOTABLE_SHARE = 0.10

STRATEGY_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}


@dataclass
class Communication:
    """One optimizer step's collectives on one device.

    Attributes:
        bytes_per_step: bytes each device sends (as much is received) in one optimizer step.
        seconds: how long that takes on the link, all of it.
        exposed_seconds: the part compute does not hide: what the step pays.
        link: the slowest link in words (``NVLink 4``, ``InfiniBand 400 Gb/s per node ...``).
        link_gbs: its nominal rate per direction, GB/s.
        what: what travels, in words.
    """

    bytes_per_step: int
    seconds: float
    exposed_seconds: float
    link: str
    link_gbs: float
    what: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ring(n: int) -> float:
    """The share of a buffer each device sends in a ring reduce-scatter or all-gather."""
    return (n - 1) / n


def _backward_share(settings: TrainSettings) -> float:
    """The backward's share of a step's compute: 4 of 6 FLOPs a parameter when the weights
    train, 2 of 4 when only adapters do."""
    return 2 / 3 if settings.method in ("full", "freeze") else 1 / 2


def communication(
    spec: ModelSpec, settings: TrainSettings, device: DeviceTarget, compute_seconds: float
) -> Communication | None:
    """The collectives of one optimizer step of `settings` (None for a single device).

    Args:
        compute_seconds: the step's compute on one device, what a collective can hide under.
    """
    n = settings.num_gpus
    if n <= 1:
        return None
    strategy = settings.sharding if settings.sharding != "none" else "ddp"
    shapes = trainable_shapes(spec, settings)
    trainable = sum(_numel(s) for s in shapes)
    grad_dtype = "fp32" if settings.uses_lora or settings.precision != "bf16-pure" else "bf16"
    grads = trainable * DTYPE_BYTES[grad_dtype]
    half = 2 if settings.compute_dtype != "fp32" else 4
    accum = settings.grad_accum
    compute = max(compute_seconds, 0.0)
    backward = compute * _backward_share(settings)
    if strategy == "ddp":
        sent = 2 * _ring(n) * grads
        hideable = OVERLAP * backward / accum
        exposed_always = 0.0
        what = f"an all-reduce of {format_bytes(grads)} of gradients a step"
    elif strategy == "zero2":
        scatter = accum * _ring(n) * grads
        gather = _ring(n) * trainable * half
        sent = scatter + gather
        hideable = OVERLAP * backward
        exposed_always = gather
        what = (
            f"a reduce-scatter of {format_bytes(grads)} of gradients each micro-batch and an "
            f"all-gather of the updated weights after the step"
        )
    else:
        base = weight_bytes(
            spec,
            param_dtype=settings.compute_dtype,
            quantization="none",
            double_quant=settings.double_quant,
        )
        weights = base["quantized"] + base["unquantized"]
        if settings.uses_lora:
            weights += trainable * 4
        sent = accum * _ring(n) * (2 * weights + grads)
        hideable = OVERLAP * compute
        exposed_always = 0.0
        what = (
            f"all-gathers of {format_bytes(weights)} of weights in forward and backward and a "
            f"reduce-scatter of the gradients, each micro-batch"
        )
    link = ring_link(device, settings.nodes)
    rate = link.gbs * 1e9 * LINK_EFFICIENCY
    seconds = sent / rate
    always = exposed_always / rate
    hidden_part = seconds - always
    exposed = always + max(hidden_part - hideable, EXPOSED_FLOOR * hidden_part)
    return Communication(int(sent), seconds, exposed, link.name, link.gbs, what)


def communication_note(comm: Communication, settings: TrainSettings, step_seconds: float) -> str:
    """The plan's sentence on the step's communication: what travels, over what, its share."""
    strategy = STRATEGY_NAMES.get(settings.sharding, "DDP")
    share = comm.exposed_seconds / step_seconds if step_seconds > 0 else 0.0
    where = (
        f"{settings.num_gpus} GPUs on {settings.nodes} nodes"
        if settings.nodes > 1
        else f"{settings.num_gpus} GPUs"
    )
    return (
        f"{strategy} over {where}: {what_sent(comm)} over {comm.link} "
        f"({comm.link_gbs:g} GB/s each way, {LINK_EFFICIENCY:.0%} reached), "
        f"{format_duration(comm.exposed_seconds)} not hidden by compute, {share:.0%} of the step"
    )


def what_sent(comm: Communication) -> str:
    """``12.4 GiB sent per GPU a step (an all-reduce of ...)``."""
    return f"{format_bytes(comm.bytes_per_step)} sent per GPU a step ({comm.what})"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
