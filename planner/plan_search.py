"""The search for a way to run one method: its base settings, the variants, the micro-batch.

`_base_settings` takes every stated setting of the request and today's defaults for the rest;
`_variants` lists the cheaper ways to run it (8-bit optimizer, pure bf16) where those settings
are unstated; `_sized` finds the largest micro-batch that fits, with gradient checkpointing only
when nothing fits without it; `_search` takes the first variant that fits.
`longest_sequence_for` asks the same variants how long a sequence fits.
"""

from __future__ import annotations

from affiner.planner.hardware import DeviceTarget
from affiner.planner.levers import resolve_loss_kernel, resolve_packing
from affiner.planner.memory import MemoryEstimate, estimate_memory
from affiner.planner.models import ModelSpec, has_fused_experts
from affiner.planner.plan_request import PlanRequest
from affiner.planner.sequence_fit import LongestSequence, longest_sequence
from affiner.planner.settings import ALL_LINEAR, TrainSettings
from affiner.planner.timing import run_steps
from affiner.planner.vocabulary import (
    BASE_WEIGHT_METHODS,
    FOUR_BIT,
    QUANTIZED_METHODS,
    resolve_auto_precision,
)

MICRO_BATCHES = (64, 32, 16, 8, 4, 2, 1)


def default_precision(device: DeviceTarget, requested: str | None = None) -> str:
    """The precision a plan for `device` trains in: `requested`, or for None and ``auto`` what
    ``precision = "auto"`` runs in there (bf16 on a GPU that has it, compute capability >= 8.0,
    else fp16 on a GPU, fp32 on a CPU: `resolve_auto_precision`)."""
    return resolve_auto_precision(
        requested or "auto", gpu=not device.is_cpu, bf16=device.bf16, fp16=device.fp16
    )


def _takes_quantization(method: str, quantization: str | None) -> bool:
    """Whether run.toml lets `method` store its base in `quantization` (None: as implied)."""
    if quantization in (None, "none"):
        return True
    if method == "qlora":
        return quantization in FOUR_BIT
    if method == "lora8":
        return quantization == "int8"
    return method == "lora"


def _base_settings(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str
) -> TrainSettings:
    """`method` with every stated setting of `request`, and today's defaults for the rest."""
    seq = request.p95_len or request.seq_len
    rank = request.lora_rank or TrainSettings.lora_rank
    dropout = request.lora_dropout
    if dropout is None:
        dropout = 0.0 if has_fused_experts(spec) else TrainSettings.lora_dropout
    layers = request.trainable_layers
    if layers is None:
        layers = max(1, min(spec.num_layers // 4, 8)) if spec.num_layers else 2
    quantization = request.quantization or "none"
    # ranking every method, LoRA stays the 16-bit-base candidate (qlora and lora8 are the
    # quantized ones); a forced LoRA takes the stated storage, as run.toml's method "lora" does
    if method not in QUANTIZED_METHODS and not (method == "lora" == request.method):
        quantization = "none"
    return TrainSettings(
        packing=resolve_packing(spec, request),
        loss_kernel=resolve_loss_kernel(spec, device, request),
        longest_rows=request.longest_rows or (),
        method=method,
        precision=default_precision(device, request.precision),
        quantization=quantization,
        double_quant=True if request.double_quant is None else request.double_quant,
        optimizer=request.optimizer or "adamw",
        seq_len=seq,
        attention=request.attention or "sdpa",
        lora_rank=rank,
        lora_alpha=request.lora_alpha or 2 * rank,
        lora_dropout=dropout,
        lora_targets=request.lora_targets or ALL_LINEAR,
        num_gpus=request.num_gpus,
        nodes=request.nodes,
        sharding=_sharding(request),
        trainable_layers=layers,
    )


def _sharding(request: PlanRequest) -> str:
    """The request's strategy: ``none`` on one device, ``ddp`` when several are asked for
    with no strategy (run.toml's default)."""
    if request.num_gpus <= 1:
        return "none"
    return request.sharding if request.sharding != "none" else "ddp"


def _variants(base: TrainSettings, request: PlanRequest) -> list[TrainSettings]:
    """Ways to run a method, cheapest change first: plain, 8-bit optimizer, (full) pure bf16.

    Only settings the request leaves unstated vary: a stated optimizer or precision is kept.
    """
    out = [base]
    if request.optimizer is None:
        out.append(base.with_(optimizer="adamw8bit"))
    if (
        request.precision is None
        and base.method in BASE_WEIGHT_METHODS
        and base.precision == "bf16"
    ):
        optimizer = base.optimizer if request.optimizer is not None else "adamw8bit"
        out.append(base.with_(optimizer=optimizer, precision="bf16-pure"))
    return out


def _sized(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    settings: TrainSettings,
    usable: int,
) -> tuple[TrainSettings, MemoryEstimate, bool]:
    """The largest micro-batch that fits, checkpointing only if needed (and not stated off);
    else the smallest setting tried."""
    target = request.target_batch
    sizes = (
        [request.micro_batch]
        if request.micro_batch
        # each device takes its share of the effective batch: no more rows than that a pass
        else [m for m in MICRO_BATCHES if m <= max(target // settings.num_gpus, 1)] or [1]
    )
    stated = request.gradient_checkpointing
    checkpointings = (False, True) if stated is None else (stated,)
    for checkpointing in checkpointings:
        for mb in sizes:
            accum = max(1, -(-target // (mb * settings.num_gpus)))
            s = settings.with_(
                micro_batch=mb,
                grad_accum=accum,
                gradient_checkpointing=checkpointing,
                padded=mb > 1 and not settings.packing,
            )
            est = estimate_memory(spec, s, device, steps=_steps(request, s))
            if est.peak_bytes <= usable:
                return s, est, True
    mb = sizes[-1]
    s = settings.with_(
        micro_batch=mb,
        grad_accum=max(1, -(-target // (mb * settings.num_gpus))),
        gradient_checkpointing=checkpointings[-1],
        padded=mb > 1 and not settings.packing,
    )
    return s, estimate_memory(spec, s, device, steps=_steps(request, s)), False


def _steps(request: PlanRequest, settings: TrainSettings) -> int | None:
    """The run's optimizer steps at `settings`, when the request knows the data's size."""
    return run_steps(
        settings,
        train_rows=request.train_rows,
        train_tokens=request.train_tokens,
        epochs=request.epochs,
    )


def _search(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str, usable: int
) -> tuple[TrainSettings, MemoryEstimate, bool]:
    """The first variant that fits, or the one with the lowest peak."""
    best = None
    for variant in _variants(_base_settings(spec, device, request, method), request):
        found = _sized(spec, device, request, variant, usable)
        if found[2]:
            return found
        if best is None or found[1].peak_bytes < best[1].peak_bytes:
            best = found
    assert best is not None
    return best


def longest_sequence_for(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str
) -> LongestSequence:
    """The longest sequence `method` fits, with every setting the plan would use at that length.

    At its longest a plan runs micro-batch 1 (or the stated one) with the accumulation that
    reaches the target batch, and the optimizer and precision `_variants` would choose there
    (cheapest change first), not those a 512-token plan chose; stated settings stay as stated
    and the margin is the request's.
    """
    mb = request.micro_batch or 1
    # the longest row the memory allows, not the data's: a pack is `micro_batch` full rows
    ways = [
        v.with_(
            micro_batch=mb,
            grad_accum=max(1, -(-request.target_batch // (mb * v.num_gpus))),
            padded=mb > 1 and not v.packing,
            longest_rows=(),
        )
        for v in _variants(_base_settings(spec, device, request, method), request)
    ]
    return longest_sequence(
        spec,
        device,
        ways,
        margin=request.safety_margin,
        checkpointing=request.gradient_checkpointing,
    )
