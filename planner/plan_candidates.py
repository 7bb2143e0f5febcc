"""One sized candidate and why it is what it is: `Candidate`, `Alternative`, and their words.

`_candidate` searches a method (`affiner.planner.plan_search`), then says why it fits or misses,
which settings were stated and which chosen (and why), and, when it misses with stated settings,
which `Alternative` plans would fit with some of them left to the planner. `_costlier_than_lora`
says why a quantized plan that fits can need more memory than LoRA on a 16-bit base.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from affiner.planner import explain
from affiner.planner.communication import NOTABLE_SHARE
from affiner.planner.hardware import DeviceTarget
from affiner.planner.levers import LEVERS
from affiner.planner.memory import MemoryEstimate, estimate_memory, quantizable_params
from affiner.planner.models import ModelSpec, has_fused_experts
from affiner.planner.plan_request import (
    RELAXABLE,
    SETTING_FIELDS,
    PlanRequest,
    _applies,
    _why_chosen_settings,
)
from affiner.planner.plan_search import _search
from affiner.planner.settings import TrainSettings
from affiner.planner.timing import TimeEstimate, estimate_time
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import QUANTIZED_METHODS


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
        stated_levers: ``packing`` and ``loss_kernel`` as the request stated them, in
            run.toml's words (``loss_kernel: "auto"`` stays ``auto``): what a saved run.toml
            writes, so that an unstated one is left to the run to decide.
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
    stated_levers: dict[str, Any] = field(default_factory=dict)

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
            "nodes": s.nodes,
            "sharding": s.sharding,
            "reserved_bytes": self.memory.reserved_bytes,
            "allocated_bytes": self.memory.allocated_bytes,
            "attention": s.attention,
            "double_quant": s.double_quant,
            "lora_targets": list(s.lora_targets) if s.uses_lora else None,
            "lora_alpha": s.lora_alpha if s.uses_lora else None,
            "lora_dropout": s.lora_dropout if s.uses_lora else None,
            "trainable_layers": s.trainable_layers if s.method == "freeze" else None,
            "packing": s.packing,
            "loss_kernel": s.loss_kernel,
            "micro_batch_tokens": s.micro_batch_tokens,
            "stated_levers": dict(self.stated_levers),
            "stated": sorted(self.stated),
            "chosen": dict(self.chosen),
            "alternatives": [a.to_json() for a in self.alternatives],
        }


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
        "packing": f"packing {on_off[s.packing]}",
        "loss_kernel": f"loss kernel {s.loss_kernel}",
    }[name]


def _value(name: str, s: TrainSettings) -> Any:
    """A setting of `s` as run.toml writes it (for `Alternative.change`)."""
    if name == "lora_targets":
        return list(s.lora_targets)
    if name == "quantization":
        return s.effective_quantization
    return getattr(s, name)


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
        if request.loss_kernel == "auto":
            words = [
                w.replace(f"loss kernel {s.loss_kernel}", f"loss kernel auto ({s.loss_kernel})")
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
    reasons.extend(time_reasons(t))
    levers = {f: getattr(request, f) for f in LEVERS if getattr(request, f) is not None}
    return Candidate(s, est, t, ok, reasons, frozenset(stated), chosen, found, levers)


def time_reasons(t: TimeEstimate) -> list[str]:
    """What a candidate's reasons say of its time: the step, and why it is impractical."""
    out = []
    if t.step_seconds is not None:
        how = "calibrated by a measured step" if t.calibration else "estimate"
        out.append(f"about {format_duration(t.step_seconds)} per optimizer step ({how})")
    if t.communication_share > NOTABLE_SHARE and t.communication:
        c = t.communication
        out.append(
            f"communication takes {t.communication_share:.0%} of the step: "
            f"{format_bytes(c['bytes_per_step'])} sent per GPU a step over {c['link']}"
        )
    if t.impractical_reason:
        out.append(t.impractical_reason)
    return out


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
