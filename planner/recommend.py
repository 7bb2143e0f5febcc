"""The recommendation: every method sized for the device, ranked, one chosen, all explained.

For each method the planner looks for the best way it fits under a safety margin of the free
memory: the largest micro-batch (gradient accumulation makes up the target effective batch),
gradient checkpointing only when nothing fits without it, and an 8-bit optimizer only when it
is what lets the method fit. A method that cannot fit is kept as a rejected candidate that
says by how much it misses.

The plan a user sees is the run they get: a setting the request states (`PlanRequest`: any
of `SETTING_FIELDS` not None) is never changed. Only the unstated ones are searched, and the
candidate's reasons and `Candidate.chosen` say which were chosen and why. When a plan with
stated settings does not fit, it says so, and `Candidate.alternatives` names what would fit
with one of them (or all of them) left to the planner, as a separate plan, never in its place.

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

from dataclasses import dataclass, field, replace
from typing import Any

from affiner.planner import explain
from affiner.planner.errors import AffinerError
from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import MemoryEstimate, estimate_memory, quantizable_params
from affiner.planner.models import ModelSpec, has_fused_experts
from affiner.planner.sequence_fit import (
    SAFETY_MARGIN,
    LongestSequence,
    longest_sequence,
    max_seq_len,
    usable_memory,
)
from affiner.planner.settings import ALL_LINEAR, ATTENTIONS, TrainSettings
from affiner.planner.timing import TimeEstimate, estimate_time
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import (
    BASE_WEIGHT_METHODS,
    FOUR_BIT,
    LORA_METHODS,
    METHODS,
    OPTIMIZERS,
    PRECISION_SETTINGS,
    QUANTIZATIONS,
    QUANTIZED_METHODS,
    Method,
    Optimizer,
    PrecisionSetting,
    Quantization,
    resolve_auto_precision,
)

QUALITY_ORDER: tuple[Method, ...] = ("full", "lora", "lora8", "qlora", "freeze")
PRIORITIES = ("quality", "speed", "memory")
MICRO_BATCHES = (64, 32, 16, 8, 4, 2, 1)
#: The `PlanRequest` fields that are run.toml settings: stated when not None, else chosen.
SETTING_FIELDS = (
    "micro_batch",
    "precision",
    "optimizer",
    "gradient_checkpointing",
    "attention",
    "quantization",
    "double_quant",
    "lora_targets",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "trainable_layers",
)
#: Stated settings an alternative may hand back to the planner, in the order they are tried.
RELAXABLE = ("gradient_checkpointing", "optimizer", "precision", "micro_batch")


@dataclass
class PlanRequest:
    """What the user asked for.

    Every field of `SETTING_FIELDS` is a run.toml setting: None leaves it to the planner, any
    other value states it, and a stated setting is planned as it is, fitting or not.

    Attributes:
        seq_len: tokens per row to plan for (the data's p95 length when known).
        target_batch: effective batch (rows per optimizer step) to reach.
        method: force one method; None ranks them all.
        priority: ``quality``, ``speed`` or ``memory``.
        micro_batch: force the micro-batch; None searches.
        lora_rank: LoRA rank for the adapter methods (None: 16).
        p95_len, train_rows, train_tokens, epochs: the data, when known (for time).
        num_gpus, sharding: multi-GPU layout.
        safety_margin: share of free memory kept free.
        precision: a `PRECISION_SETTINGS` word; ``auto`` plans what ``precision = "auto"``
            will run (`resolve_auto_precision`), and so does None, which may also choose
            ``bf16-pure`` for full or freeze when only that fits.
        optimizer: an `OPTIMIZERS` word; None: ``adamw``, or ``adamw8bit`` when only that fits.
        gradient_checkpointing: on or off; None: off, or on when only that fits.
        attention: ``sdpa``, ``eager`` or ``flash_attention_2`` (None: ``sdpa``).
        quantization: ``nf4``, ``fp4`` or ``int8`` for the quantized methods (``qlora`` takes
            the 4-bit ones, ``lora8`` int8; the other is left out); None: as implied.
        double_quant: QLoRA's double quantization (None: on).
        lora_targets: module names LoRA wraps, or ``("all-linear",)`` (None: all-linear).
        lora_alpha: LoRA's alpha (None: twice the rank). lora_dropout: None: 0.05 (0 for
            fused experts, which peft adapts without dropout).
        trainable_layers: blocks freeze trains (None: a quarter of them, 1 to 8).
    """

    seq_len: int = 512
    target_batch: int = 16
    method: Method | None = None
    priority: str = "quality"
    micro_batch: int | None = None
    lora_rank: int | None = None
    p95_len: int | None = None
    train_rows: int | None = None
    train_tokens: int | None = None
    epochs: float = 1.0
    num_gpus: int = 1
    sharding: str = "none"
    safety_margin: float = SAFETY_MARGIN
    precision: PrecisionSetting | None = None
    optimizer: Optimizer | None = None
    gradient_checkpointing: bool | None = None
    attention: str | None = None
    quantization: Quantization | None = None
    double_quant: bool | None = None
    lora_targets: tuple[str, ...] | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    trainable_layers: int | None = None

    @property
    def stated(self) -> frozenset[str]:
        """The `SETTING_FIELDS` this request states (the planner never changes them)."""
        return frozenset(f for f in SETTING_FIELDS if getattr(self, f) is not None)

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, (list, str)):
            targets = (
                [self.lora_targets] if isinstance(self.lora_targets, str) else self.lora_targets
            )
            self.lora_targets = tuple(targets)
        for key, value, allowed, flag in (
            ("optimizer", self.optimizer, OPTIMIZERS, "--optimizer"),
            ("attention", self.attention, ATTENTIONS, "--attention"),
            ("quantization", self.quantization, QUANTIZATIONS, "--quantization"),
        ):
            if value is not None and value not in allowed:
                raise AffinerError(
                    f"unknown {key} {value!r}", hint=f"use one of: {', '.join(allowed)}", where=flag
                )
        q = self.quantization
        if q not in (None, "none") and self.method is not None:
            refused = (
                self.method in BASE_WEIGHT_METHODS
                or (self.method == "qlora" and q not in FOUR_BIT)
                or (self.method == "lora8" and q != "int8")
            )
            if refused:
                raise AffinerError(
                    f"method {self.method!r} does not take quantization {q!r}",
                    hint="qlora takes nf4 or fp4, lora8 int8; full and freeze train the base "
                    "weights, which cannot be quantized",
                    where="--quantization",
                )
        if self.lora_targets is not None and not any(t.strip() for t in self.lora_targets):
            raise AffinerError(
                "no LoRA target modules", hint="all-linear or q_proj,v_proj,...", where="--targets"
            )
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise AffinerError("lora_dropout must be in [0, 1)", where="--lora-dropout")
        for key, value in (
            ("lora_rank", self.lora_rank),
            ("lora_alpha", self.lora_alpha),
            ("trainable_layers", self.trainable_layers),
            ("micro_batch", self.micro_batch),
        ):
            if value is not None and value < 1:
                raise AffinerError(
                    f"{key} must be at least 1, got {value}",
                    where="--" + key.replace("_", "-"),
                )
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
class Alternative:
    """What would fit if some stated settings were left to the planner: offered, never taken.

    Attributes:
        change: the stated settings given up, with the values the planner would use instead.
        settings, memory: the plan it would be.
        fits: whether it fits (alternatives that do not are not offered).
        text: it in words ("with gradient checkpointing on: 14.2 GiB, fits").
    """

    change: dict[str, Any]
    settings: TrainSettings
    memory: MemoryEstimate
    fits: bool
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "change": dict(self.change),
            "peak_bytes": self.memory.peak_bytes,
            "reserved_bytes": self.memory.reserved_bytes,
            "allocated_bytes": self.memory.allocated_bytes,
            "micro_batch": self.settings.micro_batch,
            "grad_accum": self.settings.grad_accum,
            "fits": self.fits,
            "text": self.text,
        }


@dataclass
class Candidate:
    """One sized way to train, fitting or not, with its reasons.

    Attributes:
        stated: the settings (`SETTING_FIELDS`) the request stated: planned as they are.
        chosen: the settings the planner chose, each with why (``"it fits without"``).
        alternatives: plans that would fit with stated settings given up (when this does not).
    """

    settings: TrainSettings
    memory: MemoryEstimate
    time: TimeEstimate
    fits: bool
    reasons: list[str] = field(default_factory=list)
    stated: frozenset[str] = frozenset()
    chosen: dict[str, str] = field(default_factory=dict)
    alternatives: list[Alternative] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def peak_bytes(self) -> int:
        """The device's need (what "fits" is judged on): reserved plus CUDA context."""
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
            "practical": self.time.practical,
            "reasons": list(self.reasons),
            "phase": self.memory.phase,
            "time": self.time.to_json(),
            "num_gpus": s.num_gpus,
            "sharding": s.sharding,
            "reserved_bytes": self.memory.reserved_bytes,
            "allocated_bytes": self.memory.allocated_bytes,
            "attention": s.attention,
            "double_quant": s.double_quant,
            "lora_targets": list(s.lora_targets) if s.uses_lora else None,
            "lora_alpha": s.lora_alpha if s.uses_lora else None,
            "lora_dropout": s.lora_dropout if s.uses_lora else None,
            "trainable_layers": s.trainable_layers if s.method == "freeze" else None,
            "stated": sorted(self.stated),
            "chosen": dict(self.chosen),
            "alternatives": [a.to_json() for a in self.alternatives],
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
        sharding=request.sharding if request.num_gpus > 1 else "none",
        trainable_layers=layers,
    )


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
        else [m for m in MICRO_BATCHES if m <= max(target, 1)] or [1]
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
                padded=mb > 1,
            )
            est = estimate_memory(spec, s, device)
            if est.peak_bytes <= usable:
                return s, est, True
    mb = sizes[-1]
    s = settings.with_(
        micro_batch=mb,
        grad_accum=max(1, -(-target // (mb * settings.num_gpus))),
        gradient_checkpointing=checkpointings[-1],
        padded=mb > 1,
    )
    return s, estimate_memory(spec, s, device), False


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


def _applies(s: TrainSettings) -> set[str]:
    """The `SETTING_FIELDS` that mean something for `s`'s method."""
    out = {"micro_batch", "precision", "optimizer", "gradient_checkpointing", "attention"}
    if s.uses_lora:
        out |= {"lora_targets", "lora_rank", "lora_alpha", "lora_dropout"}
    if s.method == "freeze":
        out.add("trainable_layers")
    if s.effective_quantization != "none":
        out.add("quantization")
    if s.effective_quantization in FOUR_BIT:
        out.add("double_quant")
    return out


def _label(name: str, s: TrainSettings) -> str:
    """A setting of `s` in words, with run.toml's values ("gradient checkpointing off")."""
    on_off = {True: "on", False: "off"}
    return {
        "micro_batch": f"micro-batch {s.micro_batch}",
        "precision": f"precision {s.precision}",
        "optimizer": f"optimizer {s.optimizer}",
        "gradient_checkpointing": f"gradient checkpointing {on_off[s.gradient_checkpointing]}",
        "attention": f"attention {s.attention}",
        "quantization": f"quantization {s.effective_quantization}",
        "double_quant": f"double quantization {on_off[s.double_quant]}",
        "lora_targets": f"targets {','.join(s.lora_targets)}",
        "lora_rank": f"LoRA rank {s.lora_rank}",
        "lora_alpha": f"LoRA alpha {s.lora_alpha}",
        "lora_dropout": f"LoRA dropout {s.lora_dropout:g}",
        "trainable_layers": f"{s.trainable_layers} trainable layers",
    }[name]


def _value(name: str, s: TrainSettings) -> Any:
    """A setting of `s` as run.toml writes it (for `Alternative.change`)."""
    if name == "lora_targets":
        return list(s.lora_targets)
    if name == "quantization":
        return s.effective_quantization
    return getattr(s, name)


def _why_chosen_settings(s: TrainSettings, ok: bool, request: PlanRequest) -> dict[str, str]:
    """Why each searched setting the request left open has the value it has."""
    why: dict[str, str] = {}
    if request.micro_batch is None:
        why["micro_batch"] = "the largest that fits" if ok else "the smallest tried"
    if request.gradient_checkpointing is None:
        if not ok:
            why["gradient_checkpointing"] = "the smallest setting tried"
        elif s.gradient_checkpointing:
            why["gradient_checkpointing"] = "it does not fit without"
        else:
            why["gradient_checkpointing"] = "it fits without"
    if request.optimizer is None:
        if not ok:
            why["optimizer"] = "the smallest setting tried"
        elif s.optimizer == "adamw8bit":
            why["optimizer"] = "it does not fit with adamw"
        else:
            why["optimizer"] = "it fits with it"
    if request.precision is None:
        if s.precision == "bf16-pure" and not ok:
            why["precision"] = "the smallest setting tried"
        elif s.precision == "bf16-pure":
            why["precision"] = "it does not fit with fp32 master weights"
        else:
            why["precision"] = 'what precision = "auto" runs on this device'
    return why


def _alternatives(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    s: TrainSettings,
    usable: int,
) -> list[Alternative]:
    """Plans that would fit with stated settings left to the planner: each one alone first,
    then all of them together when none alone is enough."""
    relax = [f for f in RELAXABLE if f in request.stated and f in _applies(s)]
    tries = [(f,) for f in relax]
    out: list[Alternative] = []
    for fields in tries + ([tuple(relax)] if len(relax) > 1 else []):
        if out and len(fields) > 1:
            break
        loose = replace(request, **{f: None for f in fields})
        s2, est, ok = _search(spec, device, loose, s.method, usable)
        changed = [f for f in fields if _value(f, s2) != _value(f, s)]
        if not ok or not changed:
            continue
        words = " and ".join(_label(f, s2) for f in changed)
        text = f"with {words}: {format_bytes(est.peak_bytes)}, fits"
        out.append(Alternative({f: _value(f, s2) for f in changed}, s2, est, ok, text))
    return out


def _candidate(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    method: str,
    usable: int,
    *,
    alternatives: bool = True,
) -> Candidate:
    s, est, ok = _search(spec, device, request, method, usable)
    t = estimate_time(
        spec,
        s,
        device,
        train_tokens=request.train_tokens,
        train_rows=request.train_rows,
        epochs=request.epochs,
    )
    stated = request.stated & _applies(s)
    chosen = _why_chosen_settings(s, ok, request)
    reasons = []
    name = explain.METHOD_NAMES[method]
    if ok:
        reasons.append(explain.fits(method, est.peak_bytes, usable))
    else:
        how = ", ".join(
            _label(f, s) + (" (stated)" if f in stated else "")
            for f in ("micro_batch", "gradient_checkpointing", "optimizer", "precision")
        )
        reasons.append(explain.miss(method, est.peak_bytes, usable) + f" at {how}")
    found = _alternatives(spec, device, request, s, usable) if alternatives and not ok else []
    reasons.extend(f"would fit {a.text}" for a in found)
    reasons.append(explain.largest_part(est.breakdown))
    if stated:
        words = [_label(f, s) for f in SETTING_FIELDS if f in stated]
        if request.precision == "auto":  # say what auto became here
            words = [
                w.replace(f"precision {s.precision}", f"precision auto ({s.precision})")
                for w in words
            ]
        reasons.append("as stated: " + ", ".join(words))
    notable = set()
    if s.gradient_checkpointing and ok and "gradient_checkpointing" in chosen:
        notable.add("gradient_checkpointing")
        reasons.append(
            "gradient checkpointing on (chosen: it does not fit without; about a third slower)"
        )
    if s.optimizer == "adamw8bit" and ok and "optimizer" in chosen:
        notable.add("optimizer")
        reasons.append(
            "8-bit AdamW (chosen: it does not fit with adamw): optimizer state drops from 8 to about 2 bytes a parameter"
        )
    if s.precision == "bf16-pure" and ok and "precision" in chosen:
        notable.add("precision")
        reasons.append(
            "weights kept in bf16 without an fp32 master copy (chosen: it does not fit with "
            "them), at some cost in update precision"
        )
    plain = [f for f in chosen if f not in notable]
    if plain:
        reasons.append("chosen: " + ", ".join(f"{_label(f, s)} ({chosen[f]})" for f in plain))
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
        if s.lora_dropout == 0:
            reasons.append(
                "LoRA also adapts the fused expert weights, which peft does without dropout: lora_dropout is 0"
            )
        else:
            reasons.append(
                f"lora_dropout is {s.lora_dropout:g} as stated: peft adapts fused expert weights "
                "only without dropout, so they are planned without adapters"
            )
    if method in QUANTIZED_METHODS and has_fused_experts(spec):
        experts = spec.params_total - quantizable_params(spec)
        reasons.append(
            f"bitsandbytes quantizes linear layers only: the fused experts and the rest "
            f"({experts / 1e9:.1f}B parameters) stay unquantized, in {s.compute_dtype}"
        )
    if s.effective_quantization != "none":
        reasons.append(
            f"{name} stores the base weights in {s.effective_quantization}: less memory, slower matmuls, slightly lower fidelity"
        )
    if s.precision == "fp16" and request.precision in (None, "auto"):
        reasons.append("fp16 with loss scaling: this GPU has no bf16")
    if t.step_seconds is not None:
        reasons.append(f"about {format_duration(t.step_seconds)} per optimizer step (estimate)")
    if t.impractical_reason:
        reasons.append(t.impractical_reason)
    return Candidate(s, est, t, ok, reasons, frozenset(stated), chosen, found)


def _choose(candidates: list[Candidate], priority: str) -> int | None:
    fitting = [i for i, c in enumerate(candidates) if c.fits]
    if not fitting:
        return None
    # a plan nobody would wait for is chosen only when every plan that fits is one
    fitting = [i for i in fitting if candidates[i].time.practical] or fitting
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
    _check_lora(spec, request)
    methods = [request.method] if request.method else list(QUALITY_ORDER)
    if not spec.is_decoder:
        methods = [m for m in methods if m not in QUANTIZED_METHODS] or methods
    # a stated storage leaves out the quantized method that cannot take it (int8 drops qlora)
    methods = [
        m
        for m in methods
        if m not in QUANTIZED_METHODS or _takes_quantization(m, request.quantization)
    ] or methods
    candidates = [_candidate(spec, device, request, m, usable) for m in methods]
    lora = next((c for c in candidates if c.method == "lora"), None)
    for c in candidates:
        if lora is not None and c.method in QUANTIZED_METHODS:
            why = _costlier_than_lora(spec, device, c, lora)
            if why:
                c.reasons.insert(1, why)
    chosen = _choose(candidates, request.priority)
    report = PlanReport(spec, device, request, candidates, chosen, usable)
    if chosen is not None:
        c = candidates[chosen]
        c.reasons.insert(0, f"recommended: {_why_chosen(c, request.priority)}")
        passed_over = [
            o for o in candidates if o.fits and not o.time.practical and c.time.practical
        ]
        if passed_over:
            names = ", ".join(explain.METHOD_NAMES[o.method] for o in passed_over)
            fit = "fits" if len(passed_over) == 1 else "fit"
            c.reasons.insert(
                1, f"preferred over {names}: {fit} too, but impractical on this device"
            )
        for other in candidates:
            if (
                other is not c
                and other.fits
                and (other.time.practical or not c.time.practical)
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


def _check_lora(spec: ModelSpec, request: PlanRequest) -> None:
    """Stated LoRA targets must be linear layers of the model (else nothing would be planned),
    and stated dropout cannot go with all-linear on fused experts (run.toml refuses it)."""
    targets = request.lora_targets
    all_linear = not targets or "all-linear" in targets
    dropout = request.lora_dropout
    lora = request.method is None or request.method in LORA_METHODS
    if lora and dropout and all_linear and has_fused_experts(spec):
        # run.toml's check refuses the same: peft's ParamWrapper takes no dropout
        raise AffinerError(
            f"lora_dropout {dropout:g} with all-linear targets: {spec.name}'s experts are "
            "fused 3-D weights, which peft adapts only without dropout",
            hint="use --lora-dropout 0, or --targets without the experts (q_proj,k_proj,v_proj,o_proj)",
            where="--lora-dropout",
        )
    if all_linear or not spec.lora_targets:
        return
    names = sorted({t.name for t in spec.lora_targets})
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise AffinerError(
            f"{', '.join(unknown)}: not a linear layer of {spec.name}",
            hint=f"use all-linear or some of: {','.join(names)}",
            where="--targets",
        )


def _why_chosen(c: Candidate, priority: str) -> str:
    if priority == "memory":
        return "the lowest peak memory of the plans that fit"
    if priority == "speed":
        return "the shortest step of the plans that fit"
    return f"the highest-fidelity method that fits ({explain.METHOD_NAMES[c.method]})"


#: Settings two plans of one model can differ in that change the peak (the searched ones).
_COMPARED = ("micro_batch", "gradient_checkpointing", "optimizer", "precision")


def _costlier_than_lora(
    spec: ModelSpec, device: DeviceTarget, quant: Candidate, lora: Candidate
) -> str | None:
    """Why a quantized plan that fits needs more memory than the LoRA plan, or None.

    A quantized base needs less at the same settings (the runner's `prepare_quantized_base`
    keeps its frozen embeddings, head and norms 16-bit, so a row costs what it costs LoRA):
    the planner then spends what it saves on a larger micro-batch (or on leaving gradient
    checkpointing off), and the reason says so, with the figure at LoRA's settings. Should it
    need more even at LoRA's settings, on a model too small for quantizing to pay, the reason
    says how little it saves.
    """
    if not quant.fits or quant.peak_bytes <= lora.peak_bytes:
        return None
    q, lo = quant.settings, lora.settings
    changed = [f for f in _COMPARED if getattr(q, f) != getattr(lo, f)]
    at_lora = {f: getattr(lo, f) for f in (*changed, "grad_accum")}
    same = estimate_memory(spec, q.with_(**at_lora), device)
    name = explain.METHOD_NAMES[quant.method]
    than = f"needs more than LoRA on a 16-bit base ({format_bytes(lora.peak_bytes)})"
    if changed and same.peak_bytes <= lora.peak_bytes:
        mine = ", ".join(_label(f, q) for f in changed)
        theirs = ", ".join(_label(f, lo) for f in changed)
        return (
            f"{name} {than} because it spends what its quantized base saves on {mine} "
            f"(LoRA runs {theirs}): at LoRA's settings it needs {format_bytes(same.peak_bytes)}"
        )
    saved = lora.memory.weights - same.weights
    extra = same.peak_bytes - lora.peak_bytes + saved
    return (
        f"{name} {than} at the same settings: quantizing the linear layers saves only "
        f"{format_bytes(saved)} of weights at this size, and its matmuls need "
        f"{format_bytes(extra)} more working memory (each 4-bit or 8-bit weight is "
        f"dequantized to 16 bits when it is used)"
    )


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
                spec,
                device,
                request,
                method,
                usable_memory(device, request.safety_margin),
                alternatives=False,
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
    alt = _candidate(
        spec,
        gpu,
        request,
        chosen.method,
        usable_memory(gpu, request.safety_margin),
        alternatives=False,
    )
    step = format_duration(alt.time.step_seconds)
    notes.append(
        f"The same job on one {gpu.name}: {explain.METHOD_NAMES[alt.method]} needs {format_bytes(alt.peak_bytes)}"
        f" ({'fits' if alt.fits else 'does not fit'}), about {step} per step."
    )
    return notes


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
    ways = [
        v.with_(
            micro_batch=mb,
            grad_accum=max(1, -(-request.target_batch // (mb * v.num_gpus))),
            padded=mb > 1,
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
