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

When nothing fits: the longest sequence that would fit, a catalog GPU that would fit, and the
fewest of these GPUs (and the strategy) that fit full fine-tuning or LoRA
(`affiner.planner.multi_gpu`). On a machine with several GPUs the same search runs for every
method better than the best single-GPU plan (`PlanReport.layouts`), which the assistant offers.

A multi-GPU request (``num_gpus`` > 1) plans every device's peak; on the CPU its processes
share the machine's RAM, so each is planned against its share.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from affiner.planner import explain, lever_reasons, levers
from affiner.planner.hardware import DeviceTarget
from affiner.planner.models import ModelSpec
from affiner.planner.multi_gpu import Layout, machine_gpus, smallest_layout
from affiner.planner.plan_candidates import _candidate, _costlier_than_lora, time_reasons
from affiner.planner.plan_request import _check_lora
from affiner.planner.plan_search import _takes_quantization
from affiner.planner.sequence_fit import max_seq_len, usable_memory
from affiner.planner.timing import calibrate, mean_row_tokens
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import QUANTIZED_METHODS, Method

# Re-exported (``X as X``): callers import these from this module, the planner's entry.
from affiner.planner.plan_candidates import Alternative as Alternative  # isort: skip
from affiner.planner.plan_candidates import Candidate as Candidate  # isort: skip
from affiner.planner.plan_request import PRIORITIES as PRIORITIES  # isort: skip
from affiner.planner.plan_request import RELAXABLE as RELAXABLE  # isort: skip
from affiner.planner.plan_request import SETTING_FIELDS as SETTING_FIELDS  # isort: skip
from affiner.planner.plan_request import PlanRequest as PlanRequest  # isort: skip
from affiner.planner.plan_search import MICRO_BATCHES as MICRO_BATCHES  # isort: skip
from affiner.planner.plan_search import default_precision as default_precision  # isort: skip
from affiner.planner.plan_search import (  # isort: skip
    longest_sequence_for as longest_sequence_for,
)

QUALITY_ORDER: tuple[Method, ...] = ("full", "lora", "lora8", "qlora", "freeze")
#: A packed step this much slower than the same plan padded is worth a note (estimate noise
#: is smaller than this between two settings of one model on one device).
SLOWER_BY = 0.10


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
    #: Methods better than the best single-device plan, each over the fewest GPUs it fits
    #: (`affiner.planner.multi_gpu.smallest_layout`), best method first.
    layouts: list[Layout] = field(default_factory=list)

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
            "layouts": [layout.to_json() for layout in self.layouts],
        }


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
    usable = per_process_usable(device, request)
    _check_lora(spec, request)
    levers.check_levers(spec, device, request)
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
    _calibrate(candidates, device, request)
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
    report.layouts = _layouts(spec, device, request, methods, report, usable)
    if chosen is None:
        report.suggestions = suggestions(spec, device, request, candidates, report.layouts)
    _explain_levers(spec, device, request, methods, report, usable)
    if device.is_cpu and request.num_gpus > 1:
        report.notes.append(
            f"{request.num_gpus} processes share this machine's RAM: each is planned "
            f"against its share, {format_bytes(usable)}."
        )
    if device.is_cpu:
        report.notes.extend(
            cpu_notes(spec, request, candidates[chosen] if chosen is not None else None)
        )
    return report


def per_process_usable(device: DeviceTarget, request: PlanRequest) -> int:
    """The memory one process may plan on: a GPU's own; on the CPU the processes of one node
    share the RAM, so each gets its share."""
    usable = usable_memory(device, request.safety_margin)
    if device.is_cpu and request.num_gpus > 1:
        usable //= max(1, request.num_gpus // max(1, request.nodes))
    return usable


#: Layouts searched at most (each is a plan of its own).
MAX_LAYOUTS = 2


def _layouts(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    methods: list[str],
    report: PlanReport,
    usable: int,
) -> list[Layout]:
    """The fewest GPUs for each method better than the best single-GPU plan.

    Searched when one GPU is planned and either nothing fits or this machine has several of
    them (the assistant then offers the layout); best method first, at most `MAX_LAYOUTS`.
    """
    if device.is_cpu or request.num_gpus > 1:
        return []
    best = report.best
    several = (machine_gpus(device) or 0) > 1
    if best is not None and not several:
        return []
    rank = QUALITY_ORDER.index
    better = [
        m
        for m in QUALITY_ORDER
        if m in methods and m != "freeze" and (best is None or rank(m) < rank(best.method))
    ]
    out: list[Layout] = []
    for method in better:
        layout = smallest_layout(spec, device, request, method, usable)
        if layout is not None:
            out.append(layout)
        if len(out) >= MAX_LAYOUTS:
            break
    return out


def _explain_levers(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    methods: list[str],
    report: PlanReport,
    usable: int,
) -> None:
    """Say what packing and the fused loss do for the recommendation, planned once without them.

    The same methods are sized again with padded batches and torch's loss; where that changes
    what is recommended (a better method, no checkpointing, a larger micro-batch) the chosen
    plan's reasons say the levers are why. Where padded batches would do better (a pack's
    mask is quadratic in its tokens), the report says so and how to plan it, since the run
    packs unless told not to.
    """
    on = [c for c in report.candidates if c.settings.packing or c.settings.loss_kernel == "liger"]
    if not on:
        return
    plain_request = levers.without_levers(request)
    plain = [
        _candidate(spec, device, plain_request, m, usable, alternatives=False) for m in methods
    ]
    plain_index = _choose(plain, request.priority)
    plain_best = plain[plain_index] if plain_index is not None else None
    best = report.best
    rows = mean_row_tokens(on[0].settings, request.train_tokens, request.train_rows)
    same = None
    if best is not None:
        same = next((c for c in plain if c.method == best.method), None)
        words = lever_reasons.lever_reasons(spec, device, best, same, plain_best, row_tokens=rows)
        at = 0  # after "recommended: ..." and "preferred over ...", before the figures
        while at < len(best.reasons) and best.reasons[at].startswith(("recommended", "preferred")):
            at += 1
        best.reasons[at:at] = words
    packed = best.settings.packing if best is not None else on[0].settings.packing
    if not packed:
        return
    if plain_best is not None and _better(plain_best, best):
        report.notes.append(lever_reasons.hurts_text(plain_best))
    elif best is not None and same is not None and same.fits:
        fast, slow = same.time.step_seconds, best.time.step_seconds
        if fast is not None and slow is not None and fast < slow * (1 - SLOWER_BY):
            report.notes.append(lever_reasons.slower_text(best, same))


def _better(plain: Candidate, chosen: Candidate | None) -> bool:
    """`plain` (padded, torch's loss) is a better plan than `chosen` for quality's sake."""
    if chosen is None:
        return True
    rank = QUALITY_ORDER.index
    if rank(plain.method) != rank(chosen.method):
        return rank(plain.method) < rank(chosen.method)
    a, b = plain.settings, chosen.settings
    return (b.gradient_checkpointing and not a.gradient_checkpointing) or (
        a.gradient_checkpointing == b.gradient_checkpointing and a.micro_batch > b.micro_batch
    )


def _calibrate(candidates: list[Candidate], device: DeviceTarget, request: PlanRequest) -> None:
    """Scale every candidate's time by the measured step of the request's own method.

    The measured step ran the request's stated settings, which its method's candidate keeps
    (or other settings, whose model time `measured_step_estimate` gives); what the FLOPs model
    missed there (the real utilisation, the overheads) is the device's and
    the software's, so the other methods on the same device are scaled alike.
    """
    measured = request.measured_step_seconds
    ran = next((c for c in candidates if c.method == request.method), None)
    if not measured or ran is None or ran.time.step_seconds is None:
        return
    model = ran.time
    if request.measured_step_estimate:
        model = replace(model, step_seconds=request.measured_step_estimate)
    for c in candidates:
        before = time_reasons(c.time)
        c.time = calibrate(c.time, model, measured, device, request.measured_step_source)
        c.reasons = [r for r in c.reasons if r not in before] + time_reasons(c.time)


def _why_chosen(c: Candidate, priority: str) -> str:
    if priority == "memory":
        return "the lowest peak memory of the plans that fit"
    if priority == "speed":
        return "the shortest step of the plans that fit"
    return f"the highest-fidelity method that fits ({explain.METHOD_NAMES[c.method]})"


def suggestions(
    spec: ModelSpec,
    device: DeviceTarget,
    request: PlanRequest,
    candidates: list[Candidate],
    layouts: list[Layout] | None = None,
) -> list[str]:
    """What would fit when nothing does: a shorter sequence, a bigger GPU, more GPUs (the
    fewest of these GPUs and the strategy, `layouts`; searched here when not given)."""
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
    if layouts is None:
        if device.is_cpu or request.num_gpus > 1:
            layouts = []
        else:
            usable = per_process_usable(device, request)
            found = (smallest_layout(spec, device, request, c.method, usable) for c in candidates)
            layouts = [layout for layout in found if layout is not None][:MAX_LAYOUTS]
    out.extend(layout.text() for layout in layouts)
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
    t = chosen.time
    if t.total_seconds is not None and t.step_seconds is not None:
        notes.append(
            f"Estimated total time on this CPU: {format_duration(t.total_seconds)} "
            f"({t.total_steps} steps × {format_duration(t.step_seconds)})."
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
