"""Turning the assistant's questions into specific answers from the plan.

Every function here takes plain data (a `PlanReport` from `affiner.planner.recommend`, a
`DeviceTarget`, a `HardwareReport`, a `ModelSpec`) and returns Markdown. Nothing is vague:
"why not full?" answers with the peak memory full fine-tuning needs and what the device has;
"how long?" gives the plan's own total, the optimizer steps the planner counted as the
Trainer does (`affiner.planner.timing.optimizer_steps`) times its step time: the assistant
never counts steps itself, so what it says is what the run then logs. Pure Python, so
the wording is unit-tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from affiner.planner.hardware import FALLBACK
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import QUANTIZED_METHODS
from affiner.tui.assistant.intents import Intent

#: Why a demo keeps its own method when the planner recommends another (see `demo.assistant_preset`).
DEMO_METHOD_WHY = (
    "its learning rate and settings were tuned with it, and full fine-tuning at that rate "
    "would wreck the model"
)

#: How methods are named to people.
METHOD_NAMES: dict[str, str] = {
    "full": "full fine-tuning",
    "freeze": "layer-wise freeze",
    "lora": "LoRA",
    "qlora": "QLoRA (4-bit base)",
    "lora8": "LoRA on an 8-bit base",
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def capitalized(text: str) -> str:
    """First letter up, the rest as written (``str.capitalize`` would turn LoRA into Lora)."""
    return text[:1].upper() + text[1:]


def device_memory(device: Any) -> int:
    """The memory a run may use on `device`: free VRAM (or RAM), falling back to the total."""
    return int(getattr(device, "memory_free", 0) or getattr(device, "memory_total", 0) or 0)


def find_candidate(report: Any, method: str) -> Any | None:
    """The plan's candidate for `method`, or None when the planner did not consider it."""
    for candidate in getattr(report, "candidates", ()) or ():
        if candidate.method == method:
            return candidate
    return None


def recommended(report: Any) -> Any | None:
    """The candidate the planner recommends (None when nothing fits)."""
    index = getattr(report, "recommended", None)
    candidates = getattr(report, "candidates", ()) or ()
    if index is None or not 0 <= index < len(candidates):
        return None
    return candidates[index]


def step_seconds(candidate: Any) -> float | None:
    """Predicted seconds an optimizer step: the planner keeps it in ``candidate.time``."""
    value = getattr(candidate, "step_seconds", None)
    if value is None:
        value = getattr(getattr(candidate, "time", None), "step_seconds", None)
    return value


def run_total(candidate: Any) -> tuple[int, float] | None:
    """The whole run as the plan counts it: (optimizer steps, seconds), from the candidate's
    `TimeEstimate` (``total_steps``, ``total_seconds``); None when the plan has no total
    (no data yet, or no step time)."""
    time = getattr(candidate, "time", None)
    steps = getattr(time, "total_steps", None)
    seconds = getattr(time, "total_seconds", None)
    return (steps, seconds) if steps and seconds is not None else None


def calibration_note(candidate: Any) -> str | None:
    """How a measured step calibrated the candidate's time, in the planner's words
    (``calibrated by the pre-flight: 1.1 s where the model said 900 ms (x1.22)``); None when
    its time is the model's estimate."""
    time = getattr(candidate, "time", None)
    if not getattr(time, "calibration", None):
        return None
    return getattr(time, "calibration_note", None) or "calibrated by a measured step"


def run_time(seconds: float | None) -> str:
    """A whole run's time as people read it: ``under a second`` below one, else
    `format_duration` (the assistant and the plan panel both write totals with this)."""
    if seconds is not None and 0 < seconds < 1:
        return "under a second"
    return format_duration(seconds)


def a_step(candidate: Any) -> str:
    """The candidate's step time in words, labelled when a measured step calibrated it:
    ``900 ms a step`` or ``2.5 s a step (measured)``."""
    words = f"{format_duration(step_seconds(candidate))} a step"
    return words + " (measured)" if calibration_note(candidate) else words


def per_step(seconds: float | None) -> str:
    """A step time with its unit of work: ``900 ms/step``, ``<1 ms/step``, ``N/A``."""
    return f"{format_duration(seconds)}/step" if seconds else "N/A"


def impractical(candidate: Any) -> str | None:
    """The planner's reason a candidate's time is more than anyone will wait for
    (`affiner.planner.timing.TimeEstimate.impractical_reason`); None when it is practical."""
    time = getattr(candidate, "time", None)
    if time is None or getattr(time, "practical", True):
        return None
    return getattr(time, "impractical_reason", None) or "too slow to wait for on this device"


def missing_reason(report: Any, method: str) -> str:
    """Why the plan has no candidate for `method`, in the planner's terms (`planner.recommend.plan`
    leaves a method out when the request states another, when the model is not a decoder for
    the quantized bases, or when a stated quantization cannot take it)."""
    name = method_name(method)
    request = getattr(report, "request", None)
    stated = getattr(request, "method", None)
    if stated and stated != method:
        return (
            f"This plan is for {method_name(stated)} alone (the pre-flight measured it); "
            "`use` another method plans every method again."
        )
    spec = getattr(report, "spec", None)
    if method in QUANTIZED_METHODS and spec is not None and not getattr(spec, "is_decoder", True):
        model = str(getattr(spec, "name", "") or "this model")
        model = model.rstrip("/").rsplit("/", 1)[-1] if model.startswith(("/", ".", "~")) else model
        return (
            f"The planner leaves {name} out for {model}: it is not a "
            "decoder, and the 4-bit and 8-bit bases are planned for decoder models only."
        )
    if method in QUANTIZED_METHODS and getattr(request, "quantization", None):
        return f"The stated quantization ({request.quantization}) cannot run {name}."
    return f"The planner did not consider {name} for this model and device."


def _reasons(candidate: Any) -> list[str]:
    return [str(r) for r in (getattr(candidate, "reasons", ()) or ())]


@dataclass
class AnswerContext:
    """What the answers may draw on; fields are None until the conversation has them.

    Attributes:
        device: the `DeviceTarget` plans are made for.
        plan: the latest `PlanReport`.
        method: the method the user (or the demo) chose, None to follow the recommendation.
        chosen_by: who chose `method` when it was not the user (``the demo``), None: the user.
        rows: training rows after validation (without them "how long?" asks for the data).
        epochs, batch: the settings' epochs and rows a step, for the words (the steps
            themselves are the plan's).
        hardware: the machine's `HardwareReport`.
        step: the assistant step the user is at (for "help").
    """

    device: Any = None
    plan: Any = None
    method: str | None = None
    chosen_by: str | None = None
    rows: int | None = None
    epochs: float = 3.0
    batch: int = 16
    hardware: Any = None
    step: str = "hardware"
    extra_help: Sequence[str] = field(default_factory=tuple)

    def chosen(self) -> Any | None:
        """The candidate that would run: the user's method, else the recommended one."""
        if self.plan is None:
            return None
        if self.method:
            return find_candidate(self.plan, self.method)
        return recommended(self.plan)


PHRASES: tuple[tuple[str, str], ...] = (
    ("what if I had a 4090 · plan for an A100 · plan for my GPU", "re-plan for another GPU"),
    ("use qlora · use lora · use full · use freeze · use 8-bit", "pick the method"),
    ("seq 4096 · max length 1024", "maximum sequence length"),
    ("batch 8 · rank 32 · lr 1e-4 · epochs 2", "change a setting"),
    (
        "targets q,v · checkpointing off|on|auto · optimizer adamw8bit · precision bf16-pure"
        " · attention eager · dropout 0",
        "state a run.toml setting: every re-plan keeps it (auto hands it back)",
    ),
    ("why not full? · why qlora? · why?", "the planner's reasons"),
    ("how long? · what fits? · hardware", "time, the methods that fit, the machine"),
    ("next (or Enter) · back · go to data · preflight · launch", "move through the steps"),
    ("demo classify · demo chat", "fine-tune a real model offline, on this machine"),
    ("PgUp · PgDn · ctrl+home · ctrl+end (keys)", "scroll the conversation, even while typing"),
    ("ctrl+t (key)", "fold the plan panel away, or bring it back"),
)


def help_text(step: str | None = None) -> str:
    """Every phrase the assistant understands, as a Markdown table."""
    lines = ["| type | to |", "| --- | --- |"]
    lines += [f"| `{phrases}` | {what} |" for phrases, what in PHRASES]
    if step:
        lines.append("")
        lines.append(f"You are at the **{step}** step; Enter accepts the default shown.")
    return "\n".join(lines)


def not_understood(text: str) -> str:
    """The reply to a line nothing matched: short, with what does work."""
    return (
        f"I did not understand “{text}”. I understand, for example: `what if I had a 4090`, "
        "`use qlora`, `seq 2048`, `batch 8`, `rank 32`, `lr 1e-4`, `epochs 2`, `why not full?`, "
        "`how long?`, `what fits?`, `hardware`, `back`, `next`. Type `help` for the full list."
    )


def chooser(chosen_by: str | None) -> str:
    """Who chose the method, as a sentence's subject and verb: ``the demo uses``, ``you chose``."""
    return f"{chosen_by} uses" if chosen_by else "you chose"


def why_not(
    report: Any,
    method: str,
    device: Any,
    chosen: str | None = None,
    chosen_by: str | None = None,
) -> str:
    """Why `method` is not what runs: the memory it needs against what the device has, or,
    when it is the recommendation and `chosen` (by `chosen_by`) is another method, that plainly."""
    name = method_name(method)
    candidate = find_candidate(report, method)
    if candidate is None:
        return missing_reason(report, method)
    have = device_memory(device)
    device_name = getattr(device, "name", "this device")
    reasons = _reasons(candidate)
    best = recommended(report)
    if not candidate.fits:
        text = (
            f"{capitalized(name)} needs **{format_bytes(candidate.peak_bytes)}** at its peak; "
            f"the {device_name} has **{format_bytes(have)}** free"
        )
        usable = getattr(report, "usable_bytes", None)
        text += (
            f" ({format_bytes(usable)} usable, keeping a safety margin)."
            if usable and usable < have
            else "."
        )
    elif best is not None and best.method == method and chosen and chosen != method:
        text = (
            f"{capitalized(name)} **is** the recommendation ({format_bytes(candidate.peak_bytes)} "
            f"of {format_bytes(have)}), but {chooser(chosen_by)} **{method_name(chosen)}**"
        )
        text += f": {DEMO_METHOD_WHY}." if chosen_by == "the demo" else "."
        text += f" `use {method}` switches to {name}."
    elif best is not None and best.method == method:
        text = f"{capitalized(name)} is the recommendation: {format_bytes(candidate.peak_bytes)} of {format_bytes(have)}."
    else:
        text = f"{capitalized(name)} fits ({format_bytes(candidate.peak_bytes)} of {format_bytes(have)})"
        if best is not None:
            text += f", but {method_name(best.method)} is recommended"
            if step_seconds(best) and step_seconds(candidate):
                ratio = step_seconds(candidate) / step_seconds(best)
                text += f" ({_speed_words(ratio)})"
        text += "."
    if reasons:
        text += "\n\n" + "\n".join(f"- {r}" for r in reasons)
    if not candidate.fits:
        fitting = [c for c in report.candidates if c.fits]
        if fitting:
            text += (
                "\n\nWhat fits instead: " + ", ".join(method_name(c.method) for c in fitting) + "."
            )
    return text


def _speed_words(ratio: float) -> str:
    if ratio > 1.05:
        return f"this one is {ratio:.1f}× slower per step"
    if ratio < 0.95:
        return f"this one is {1 / ratio:.1f}× faster per step but uses more memory"
    return "about the same speed"


def why(report: Any, method: str | None, device: Any) -> str:
    """Why the recommendation (or `method`) is what it is."""
    if method:
        return why_not(report, method, device)
    best = recommended(report)
    if best is None:
        return nothing_fits(report, device)
    text = (
        f"**{capitalized(method_name(best.method))}** is recommended: peak {format_bytes(best.peak_bytes)} "
        f"of {format_bytes(device_memory(device))}, {a_step(best)}."
    )
    slow = impractical(best)
    if slow:
        text += f"\n\n⚠ **Impractical here**: {slow}."
    reasons = [r for r in _reasons(best) if r != slow]
    if reasons:
        text += "\n\n" + "\n".join(f"- {r}" for r in reasons)
    return text


def nothing_fits(report: Any, device: Any) -> str:
    smallest = min(report.candidates, key=lambda c: c.peak_bytes, default=None)
    text = f"Nothing fits in the {format_bytes(device_memory(device))} the {getattr(device, 'name', 'device')} has free."
    if smallest is not None:
        text += (
            f" The smallest plan, {method_name(smallest.method)}, needs {format_bytes(smallest.peak_bytes)}: "
            "try a shorter `seq`, a smaller `batch`, or `what if I had` a larger GPU."
        )
    suggestions = list(getattr(report, "suggestions", ()) or ())
    if suggestions:
        text += "\n\n" + "\n".join(f"- {s}" for s in suggestions)
    return text


def what_fits(report: Any, device: Any) -> str:
    """Each method, fits or not, with its peak memory and step time."""
    have = device_memory(device)
    best = recommended(report)
    lines = [f"On the {getattr(device, 'name', 'device')} ({format_bytes(have)} free):", ""]
    for candidate in report.candidates:
        mark = "fits" if candidate.fits else "does not fit"
        if candidate.fits and impractical(candidate):
            mark = "fits but impractical here"
        star = " ← recommended" if best is not None and candidate is best else ""
        lines.append(
            f"- **{method_name(candidate.method)}**: {format_bytes(candidate.peak_bytes)}, {mark}, "
            f"{per_step(step_seconds(candidate))}"
            f"{' measured' if calibration_note(candidate) else ''}{star}"
        )
    missing = [m for m in METHOD_NAMES if find_candidate(report, m) is None]
    if missing:  # say why, once: a plan for one method alone explains all the others
        reasons = dict.fromkeys(missing_reason(report, m) for m in missing)
        lines += ["", *reasons]
    if best is None:
        lines += ["", nothing_fits(report, device)]
    return "\n".join(lines)


def how_long(ctx: AnswerContext) -> str:
    """Predicted training time: the plan's optimizer steps × its step time, the count in words,
    and, when a measured step calibrated the plan, by what."""
    candidate = ctx.chosen()
    if candidate is None:
        return "There is no plan yet: choose a model first (and data, for a total)."
    step = step_seconds(candidate)
    name = method_name(candidate.method)
    if step is None:
        return f"The planner has no time estimate for {name} on this device."
    total = run_total(candidate)
    if total is None:
        text = f"{capitalized(name)}: about **{format_duration(step)} a step** ({ctx.batch} rows)."
        text += " Give me the data for a total." if not ctx.rows else ""
    else:
        steps, seconds = total
        text = (
            f"{capitalized(name)}: {steps:,} steps ({_counted(ctx, candidate)}) × "
            f"{format_duration(step)} ≈ **{run_time(seconds)}**."
        )
    note = calibration_note(candidate)
    if note:
        text += f" {capitalized(note)}."
    return text


def _counted(ctx: AnswerContext, candidate: Any) -> str:
    """How the planner counted the steps, in words: rows × epochs over the rows a step
    (micro-batch × accumulation × GPUs), each epoch's short last group still a step."""
    request = getattr(ctx.plan, "request", None)  # what the plan counted: its rows and epochs
    rows = getattr(request, "train_rows", None) or ctx.rows
    epochs = getattr(request, "epochs", None) or ctx.epochs
    settings = getattr(candidate, "settings", candidate)
    micro = getattr(settings, "micro_batch", None)
    accum = getattr(settings, "grad_accum", 1) or 1
    gpus = getattr(settings, "num_gpus", 1) or 1
    plural = "" if epochs == 1 else "s"
    text = f"{rows:,} rows" if rows else "the data"
    text += f" × {epochs:g} epoch{plural}"
    if micro:
        text += f" ÷ (micro-batch {micro} × {accum} accumulated"
        text += f" × {gpus} GPUs)" if gpus > 1 else ")"
    per_epoch = getattr(getattr(candidate, "time", None), "steps_per_epoch", None)
    text += ", as the Trainer counts"
    if per_epoch:
        text += f": {per_epoch:,} an epoch, the last short one still a step"
    return text


def hardware_summary(report: Any) -> str:
    """The machine in a few lines: each GPU with free memory, or why there is none, and the CPU."""
    lines = []
    for gpu in report.gpus:
        cc = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "N/A"
        lines.append(
            f"- GPU {gpu.index}: **{gpu.name}**, {format_bytes(gpu.memory_free)} free of "
            f"{format_bytes(gpu.memory_total)} (compute {cc}, bf16 {'yes' if gpu.bf16 else 'no'})"
        )
    if not report.gpus:
        # the reason ends with the CLI's advice (--gpu NAME); in the app, F3 then p picks one
        reason = (report.gpu_reason or "none found").removesuffix(f": {FALLBACK}")
        lines.append(
            f"- No NVIDIA GPU: {reason}. Plans are for the CPU; to plan as if for a GPU, "
            "press F3 then p"
        )
    cpu = report.cpu
    lines.append(
        f"- CPU: {cpu.model}, {cpu.logical_cores} threads; RAM {format_bytes(report.ram_available)} "
        f"free of {format_bytes(report.ram_total)}; disk {format_bytes(report.disk_free)} free"
    )
    lines += [f"- ⚠ {w}" for w in report.warnings]
    return "\n".join(lines)


def model_summary(spec: Any) -> str:
    """A ModelSpec in one paragraph: parameters, shape, context, where it came from."""
    params = spec.params_total
    size = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"
    attention = (
        f"{spec.num_attention_heads} heads ({spec.num_kv_heads} KV)"
        if spec.num_kv_heads != spec.num_attention_heads
        else f"{spec.num_attention_heads} heads"
    )
    text = (
        f"**{spec.name}**: {spec.architecture} ({spec.model_type}), **{size} parameters**, "
        f"{spec.num_layers} layers, hidden {spec.hidden_size}, {attention}, "
        f"vocabulary {spec.vocab_size:,}, context {spec.max_position_embeddings:,}"
    )
    if spec.num_experts:
        text += f", {spec.num_experts} experts ({spec.experts_per_token} a token)"
    text += f". Shape from: {spec.source}."
    return text


def setting_changed(label: str, old: Any, new: Any, before: Any, after: Any, device: Any) -> str:
    """The reply to "rank 32": what changed, and what it did to memory and time."""
    text = f"{label}: {old} → **{new}**."
    if after is None:
        return text
    text += f" {capitalized(method_name(after.method))} now peaks at **{format_bytes(after.peak_bytes)}**"
    if (
        before is not None
        and before.method == after.method
        and before.peak_bytes != after.peak_bytes
    ):
        text += f" (was {format_bytes(before.peak_bytes)})"
    text += f" of {format_bytes(device_memory(device))}, {a_step(after)}."
    if not after.fits:
        text += " ⚠ That no longer fits."
    return text


def answer(intent: Intent, ctx: AnswerContext) -> str:
    """The reply to a question intent (``why_not``, ``why``, ``how_long``, ``what_fits``,
    ``hardware``, ``help``, ``unknown``). Commands that change state are the flow's job."""
    kind = intent.kind
    if kind == "help":
        return help_text(ctx.step)
    if kind == "hardware":
        if ctx.hardware is None:
            return "Still looking at the hardware; one moment."
        return hardware_summary(ctx.hardware)
    if kind in ("why_not", "why", "what_fits"):
        if ctx.plan is None:
            return "There is no plan yet: tell me the model first."
        if kind == "why_not":
            return why_not(ctx.plan, intent.value, ctx.device, ctx.method, ctx.chosen_by)
        if kind == "why":
            if intent.value:
                return why_not(ctx.plan, intent.value, ctx.device, ctx.method, ctx.chosen_by)
            return why(ctx.plan, None, ctx.device)
        return what_fits(ctx.plan, ctx.device)
    if kind == "how_long":
        return how_long(ctx)
    return not_understood(intent.text)
