"""The recommendation: every method sized for the device, ranked, one chosen, all explained.

For each method the planner looks for the best way it fits under a safety margin of the free
memory: the largest micro-batch (gradient accumulation makes up the target effective batch),
gradient checkpointing only when nothing fits without it, and an 8-bit optimizer only when it
is what lets the method fit. A method that cannot fit even at micro-batch 1 with
checkpointing is kept as a rejected candidate that says by how much it misses.

Choosing (priority ``quality``, the default): the highest-fidelity method that fits, in the
order full > LoRA (16-bit base) > 8-bit LoRA > QLoRA > freeze. Freeze trains only the last
blocks and the head: it is fast and cheap, but the lower layers never adapt, and LoRA on
every block generally tracks full fine-tuning more closely, so freeze ranks last for quality
and is offered as the fast alternative (it wins under ``speed`` when its step is shortest).
Priority ``speed`` takes the fitting candidate with the shortest step, ``memory`` the one
with the lowest peak.

When nothing fits: the longest sequence that would fit, a catalog GPU that would fit, and how
many GPUs with FSDP full sharding would fit full fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from affiner.planner import explain
from affiner.planner.errors import AffinerError
from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import MemoryEstimate, estimate_memory, quantizable_params
from affiner.planner.models import ModelSpec, has_fused_experts
from affiner.planner.sequence_fit import SAFETY_MARGIN, max_seq_len, usable_memory
from affiner.planner.settings import TrainSettings
from affiner.planner.timing import TimeEstimate, estimate_time
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import (
    BASE_WEIGHT_METHODS,
    METHODS,
    PRECISION_SETTINGS,
    QUANTIZED_METHODS,
    Method,
    PrecisionSetting,
    resolve_auto_precision,
)

QUALITY_ORDER: tuple[Method, ...] = ("full", "lora", "lora8", "qlora", "freeze")
PRIORITIES = ("quality", "speed", "memory")
MICRO_BATCHES = (64, 32, 16, 8, 4, 2, 1)


@dataclass
class PlanRequest:
    """What the user asked for.

    Attributes:
        seq_len: tokens per row to plan for (the data's p95 length when known).
        target_batch: effective batch (rows per optimizer step) to reach.
        method: force one method; None ranks them all.
        priority: ``quality``, ``speed`` or ``memory``.
        micro_batch: force the micro-batch; None searches.
        lora_rank: LoRA rank for the adapter methods.
        p95_len, train_rows, train_tokens, epochs: the data, when known (for time).
        num_gpus, sharding: multi-GPU layout.
        safety_margin: share of free memory kept free.
        precision: force a precision (``fp32``, ``bf16``, ``fp16``, ``bf16-pure``); None or
            ``auto`` plans what ``precision = "auto"`` will run (`resolve_auto_precision`).
    """

    seq_len: int = 512
    target_batch: int = 16
    method: Method | None = None
    priority: str = "quality"
    micro_batch: int | None = None
    lora_rank: int = 16
    p95_len: int | None = None
    train_rows: int | None = None
    train_tokens: int | None = None
    epochs: float = 1.0
    num_gpus: int = 1
    sharding: str = "none"
    safety_margin: float = SAFETY_MARGIN
    precision: PrecisionSetting | None = None

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise AffinerError(
                f"unknown method {self.method!r}",
                hint=f"use one of: {', '.join(METHODS)}",
                where="--method",
            )
        if self.precision is not None and self.precision not in PRECISION_SETTINGS:
            raise AffinerError(
                f"unknown precision {self.precision!r}",
                hint=f"use one of: {', '.join(PRECISION_SETTINGS)}",
                where="--precision",
            )
        if self.priority not in PRIORITIES:
            raise AffinerError(
                f"unknown priority {self.priority!r}",
                hint="use quality, speed or memory",
                where="--priority",
            )
        if self.seq_len < 1 or self.target_batch < 1:
            raise AffinerError(
                "sequence length and batch must be at least 1", where="--seq-len/--batch"
            )


@dataclass
class Candidate:
    """One sized way to train, fitting or not, with its reasons."""

    settings: TrainSettings
    memory: MemoryEstimate
    time: TimeEstimate
    fits: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def peak_bytes(self) -> int:
        return self.memory.peak_bytes

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "method": s.method,
            "quantization": s.effective_quantization,
            "precision": s.precision,
            "optimizer": s.optimizer,
            "gradient_checkpointing": s.gradient_checkpointing,
            "micro_batch": s.micro_batch,
            "grad_accum": s.grad_accum,
            "seq_len": s.seq_len,
            "lora_rank": s.lora_rank if s.uses_lora else None,
            "trainable_params": self.memory.trainable_params,
            "peak_bytes": self.memory.peak_bytes,
            "breakdown": self.memory.breakdown,
            "fits": self.fits,
            "step_seconds": self.time.step_seconds,
            "reasons": list(self.reasons),
            "phase": self.memory.phase,
            "time": self.time.to_json(),
            "num_gpus": s.num_gpus,
            "sharding": s.sharding,
        }


@dataclass
class PlanReport:
    """All candidates, the chosen one, and what would help when nothing fits."""

    spec: ModelSpec
    device: DeviceTarget
    request: PlanRequest
    candidates: list[Candidate]
    recommended: int | None
    usable_bytes: int
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return None if self.recommended is None else self.candidates[self.recommended]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.spec.to_json(),
            "gpu": self.device.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "recommended": self.recommended,
            "usable_bytes": self.usable_bytes,
            "suggestions": list(self.suggestions),
            "notes": list(self.notes),
        }


def default_precision(device: DeviceTarget, requested: str | None = None) -> str:
    """The precision a plan for `device` trains in: `requested`, or for None and ``auto`` what
    ``precision = "auto"`` runs in there (bf16 on a GPU that has it, compute capability >= 8.0,
    else fp16 on a GPU, fp32 on a CPU: `resolve_auto_precision`)."""
    return resolve_auto_precision(
        requested or "auto", gpu=not device.is_cpu, bf16=device.bf16, fp16=device.fp16
    )


def _base_settings(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str
) -> TrainSettings:
    seq = request.p95_len or request.seq_len
    return TrainSettings(
        method=method,
        precision=default_precision(device, request.precision),
        seq_len=seq,
        lora_rank=request.lora_rank,
        lora_dropout=0.0 if has_fused_experts(spec) else TrainSettings.lora_dropout,
        num_gpus=request.num_gpus,
        sharding=request.sharding if request.num_gpus > 1 else "none",
        trainable_layers=max(1, min(spec.num_layers // 4, 8)) if spec.num_layers else 2,
    )


def _variants(base: TrainSettings) -> list[TrainSettings]:
    """Ways to run a method, cheapest change first: plain, 8-bit optimizer, (full) pure bf16."""
    out = [base]
    out.append(base.with_(optimizer="adamw8bit"))
    if base.method in BASE_WEIGHT_METHODS and base.precision == "bf16":
        out.append(base.with_(optimizer="adamw8bit", precision="bf16-pure"))
    return out


def _sized(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    settings: TrainSettings,
    usable: int,
) -> tuple[TrainSettings, MemoryEstimate, bool]:
    """The largest micro-batch that fits, checkpointing only if needed; else the smallest setting."""
    target = request.target_batch
    sizes = (
        [request.micro_batch]
        if request.micro_batch
        else [m for m in MICRO_BATCHES if m <= max(target, 1)] or [1]
    )
    for checkpointing in (False, True):
        for mb in sizes:
            accum = max(1, -(-target // (mb * settings.num_gpus)))
            s = settings.with_(
                micro_batch=mb,
                grad_accum=accum,
                gradient_checkpointing=checkpointing,
                padded=mb > 1,
            )
            est = estimate_memory(spec, s, device)
            if est.peak_bytes <= usable:
                return s, est, True
    mb = sizes[-1]
    s = settings.with_(
        micro_batch=mb,
        grad_accum=max(1, -(-target // (mb * settings.num_gpus))),
        gradient_checkpointing=True,
        padded=mb > 1,
    )
    return s, estimate_memory(spec, s, device), False


def _candidate(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str, usable: int
) -> Candidate:
    base = _base_settings(spec, device, request, method)
    best = None
    for variant in _variants(base):
        s, est, ok = _sized(spec, device, request, variant, usable)
        if ok:
            best = (s, est, ok)
            break
        if best is None or est.peak_bytes < best[1].peak_bytes:
            best = (s, est, ok)
    s, est, ok = best
    t = estimate_time(
        spec,
        s,
        device,
        train_tokens=request.train_tokens,
        train_rows=request.train_rows,
        epochs=request.epochs,
    )
    reasons = []
    name = explain.METHOD_NAMES[method]
    if ok:
        reasons.append(explain.fits(method, est.peak_bytes, usable))
    else:
        reasons.append(
            explain.miss(method, est.peak_bytes, usable)
            + " even at micro-batch 1 with gradient checkpointing"
        )
    reasons.append(explain.largest_part(est.breakdown))
    if s.gradient_checkpointing and ok:
        reasons.append(
            "gradient checkpointing is on because nothing fits without it (about a third slower)"
        )
    if s.optimizer == "adamw8bit" and ok:
        reasons.append(
            "8-bit AdamW (bitsandbytes) is what lets it fit: optimizer state drops from 8 to about 2 bytes a parameter"
        )
    if s.precision == "bf16-pure" and ok:
        reasons.append(
            "weights kept in bf16 without an fp32 master copy: fits, at some cost in update precision"
        )
    if s.grad_accum > 1:
        reasons.append(
            f"micro-batch {s.micro_batch} x {s.grad_accum} accumulation steps reaches the effective batch of {s.effective_batch}"
        )
    if method == "freeze":
        reasons.append(
            f"trains only the last {s.trainable_layers} of {spec.num_layers} blocks and the head: fast and cheap, lower layers do not adapt"
        )
        if spec.tied_embeddings:
            reasons.append(
                "the head is tied to the embeddings, so freezing saves little activation memory"
            )
    if s.uses_lora and has_fused_experts(spec):
        reasons.append(
            "LoRA also adapts the fused expert weights, which peft does without dropout: lora_dropout is 0"
        )
    if method in QUANTIZED_METHODS and has_fused_experts(spec):
        experts = spec.params_total - quantizable_params(spec)
        reasons.append(
            f"bitsandbytes quantizes linear layers only: the fused experts and the rest "
            f"({experts / 1e9:.1f}B parameters) stay unquantized, in fp32 after k-bit preparation"
        )
    if method in QUANTIZED_METHODS:
        reasons.append(
            f"{name} stores the base weights in {s.effective_quantization}: less memory, slower matmuls, slightly lower fidelity"
        )
    if s.precision == "fp16":
        reasons.append("fp16 with loss scaling: this GPU has no bf16")
    if t.step_seconds is not None:
        reasons.append(f"about {format_duration(t.step_seconds)} per optimizer step (estimate)")
    return Candidate(s, est, t, ok, reasons)


def _choose(candidates: list[Candidate], priority: str) -> int | None:
    fitting = [i for i, c in enumerate(candidates) if c.fits]
    if not fitting:
        return None
    quality = {m: r for r, m in enumerate(QUALITY_ORDER)}
    if priority == "memory":
        return min(fitting, key=lambda i: (candidates[i].peak_bytes, quality[candidates[i].method]))
    if priority == "speed" and all(candidates[i].time.step_seconds is not None for i in fitting):
        return min(
            fitting, key=lambda i: (candidates[i].time.step_seconds, quality[candidates[i].method])
        )
    return min(fitting, key=lambda i: quality[candidates[i].method])


def plan(spec: ModelSpec, device: DeviceTarget, request: PlanRequest) -> PlanReport:
    """Size every method (or the forced one) for `device`, rank them and choose one."""
    usable = usable_memory(device, request.safety_margin)
    methods = [request.method] if request.method else list(QUALITY_ORDER)
    if not spec.is_decoder:
        methods = [m for m in methods if m not in QUANTIZED_METHODS] or methods
    candidates = [_candidate(spec, device, request, m, usable) for m in methods]
    chosen = _choose(candidates, request.priority)
    report = PlanReport(spec, device, request, candidates, chosen, usable)
    if chosen is not None:
        c = candidates[chosen]
        c.reasons.insert(0, f"recommended: {_why_chosen(c, request.priority)}")
        for other in candidates:
            if (
                other is not c
                and other.fits
                and request.priority == "quality"
                and QUALITY_ORDER.index(other.method) < QUALITY_ORDER.index(c.method)
            ):
                other.reasons.append("fits too, ranked lower")
    else:
        report.suggestions = suggestions(spec, device, request, candidates)
    if device.is_cpu:
        report.notes.extend(
            cpu_notes(spec, request, candidates[chosen] if chosen is not None else None)
        )
    return report


def _why_chosen(c: Candidate, priority: str) -> str:
    if priority == "memory":
        return "the lowest peak memory of the plans that fit"
    if priority == "speed":
        return "the shortest step of the plans that fit"
    return f"the highest-fidelity method that fits ({explain.METHOD_NAMES[c.method]})"


def suggestions(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, candidates: list[Candidate]
) -> list[str]:
    """What would fit when nothing does: a shorter sequence, a bigger GPU, more GPUs."""
    out = []
    smallest = min(candidates, key=lambda c: c.peak_bytes)
    seq = max_seq_len(
        spec,
        device,
        smallest.settings.with_(micro_batch=1, gradient_checkpointing=True),
        margin=request.safety_margin,
    )
    if seq >= 16:
        out.append(
            f"a sequence of at most {seq} tokens fits with {explain.METHOD_NAMES[smallest.method]} at micro-batch 1 with checkpointing"
        )
    else:
        out.append("no sequence length fits on this device: the weights alone are too large")
    out.extend(_catalog_suggestions(spec, request))
    full = next((c for c in candidates if c.method == "full"), None)
    if full is not None and not device.is_cpu:
        for n in (2, 4, 8, 16):
            s = full.settings.with_(
                num_gpus=n, sharding="fsdp", micro_batch=1, gradient_checkpointing=True
            )
            if estimate_memory(spec, s, device).peak_bytes <= usable_memory(
                device, request.safety_margin
            ):
                out.append(f"{n} of these GPUs with FSDP full sharding fit full fine-tuning")
                break
    return out


def _catalog_suggestions(spec: ModelSpec, request: PlanRequest) -> list[str]:
    from affiner.planner.hardware import CATALOG, target_from_catalog

    found: dict[str, str] = {}
    for model in sorted(CATALOG, key=lambda m: m.memory):
        device = target_from_catalog(model.name)
        for method in ("qlora", "lora", "full"):
            if method in found:
                continue
            c = _candidate(
                spec, device, request, method, usable_memory(device, request.safety_margin)
            )
            if c.fits:
                found[method] = (
                    f"{explain.METHOD_NAMES[method]} fits on one {model.name} ({format_bytes(model.memory)})"
                )
    return list(found.values())


def cpu_notes(spec: ModelSpec, request: PlanRequest, chosen: Candidate | None) -> list[str]:
    """A CPU plan says plainly that it is one, how long it takes, and the GPU alternative."""
    from affiner.planner.hardware import target_from_catalog

    notes = ["This is a CPU run: memory is RAM, and training is far slower than on a GPU."]
    if chosen is None:
        return notes
    if chosen.time.total_seconds is not None:
        notes.append(
            f"Estimated total time on this CPU: {format_duration(chosen.time.total_seconds)}."
        )
    elif chosen.time.step_seconds is not None:
        notes.append(
            f"Estimated time per optimizer step on this CPU: {format_duration(chosen.time.step_seconds)}."
        )
    gpu = target_from_catalog("RTX 4090")
    alt = _candidate(spec, gpu, request, chosen.method, usable_memory(gpu, request.safety_margin))
    step = format_duration(alt.time.step_seconds)
    notes.append(
        f"The same job on one {gpu.name}: {explain.METHOD_NAMES[alt.method]} needs {format_bytes(alt.peak_bytes)}"
        f" ({'fits' if alt.fits else 'does not fit'}), about {step} per step."
    )
    return notes
