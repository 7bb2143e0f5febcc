"""Packing and the fused loss in a plan: what the runner will do, refused where it cannot.

run.toml's ``[training].packing`` and ``loss_kernel`` (``affiner plan --packing``,
``--loss-kernel``) are planned as the runner resolves them:

- packing left out ("auto") is on for a causal language model, whose attention keeps packed
  examples apart (transformers' mask builder reads the restarting position ids; the runner
  checks it on the loaded model), and off for classification, which scores each row alone;
- ``loss_kernel = "auto"`` is liger-kernel's fused linear cross-entropy on a CUDA device where
  liger-kernel is installed (looked up, never imported: it pulls torch and Triton), else torch's.

A stated setting is never changed: one that cannot work (packing for classification, liger
on a CPU) is refused with what to say instead. `lever_reasons` says in plain words what the
levers change in the chosen plan, and whether they are what lets it fit.
"""

from __future__ import annotations

from dataclasses import replace
from importlib.util import find_spec
from typing import TYPE_CHECKING

from affiner.planner import explain
from affiner.planner.errors import AffinerError
from affiner.planner.settings import LOSS_KERNEL_SETTINGS, LossKernel
from affiner.planner.units import format_bytes

if TYPE_CHECKING:
    from affiner.planner.hardware import DeviceTarget
    from affiner.planner.models import ModelSpec
    from affiner.planner.plan_candidates import Candidate
    from affiner.planner.plan_request import PlanRequest
    from affiner.planner.settings import TrainSettings

#: Families whose attention takes its positions from an ALiBi bias built on the attention
#: mask, not from position ids: a pack's examples would see each other.
ALIBI_FAMILIES = frozenset({"bloom", "mpt"})
#: The settings these levers are, as `PlanRequest` and `TrainSettings` name them.
LEVERS = ("packing", "loss_kernel")


def causal_lm(spec: ModelSpec, request: PlanRequest) -> bool:
    """The run trains a vocabulary head on next tokens (what packing and the fused loss serve)."""
    return spec.is_decoder and spec.has_lm_head and request.task != "classification"


def packing_problem(spec: ModelSpec, request: PlanRequest) -> str | None:
    """Why a pack would not keep its examples apart in this run, or None when it would."""
    if not causal_lm(spec, request):
        return (
            "packing joins the rows of a causal-LM batch; a classification model scores each "
            "row on its own"
        )
    raw = spec.raw_config or {}
    if spec.model_type in ALIBI_FAMILIES or raw.get("alibi"):
        return (
            f"{spec.model_type}'s ALiBi attention takes positions from the attention mask, "
            "not the position ids, so packed examples would see each other"
        )
    return None


def liger_installed() -> bool:
    """liger-kernel is installed here (found by name: importing it needs torch and Triton)."""
    return find_spec("liger_kernel") is not None


def liger_problem(spec: ModelSpec, device: DeviceTarget, request: PlanRequest) -> str | None:
    """Why the fused loss cannot run in this plan, or None when it can."""
    if not causal_lm(spec, request):
        return "the fused loss is a language-model head's; a classification head has none"
    if device.is_cpu:
        return "its kernels are Triton's, CUDA only, and this plan is for the CPU"
    return None


def resolve_packing(spec: ModelSpec, request: PlanRequest) -> bool:
    """What the run will do: the stated setting, or on wherever a pack stays exact."""
    if request.packing is not None:
        return request.packing
    return packing_problem(spec, request) is None


def resolve_loss_kernel(spec: ModelSpec, device: DeviceTarget, request: PlanRequest) -> LossKernel:
    """What the run will compute its loss with: stated, or liger where it runs and is installed."""
    stated = request.loss_kernel or "auto"
    if stated == "torch":
        return "torch"
    if stated == "liger":
        return "liger"
    if liger_problem(spec, device, request) is None and liger_installed():
        return "liger"
    return "torch"


def check_levers(spec: ModelSpec, device: DeviceTarget, request: PlanRequest) -> None:
    """Refuse a stated packing or loss kernel this plan's run could not honour.

    Raises:
        AffinerError: ``--packing on`` for classification or an ALiBi family, or
            ``--loss-kernel liger`` for a CPU or a classification head.
    """
    if request.packing:
        problem = packing_problem(spec, request)
        if problem:
            raise AffinerError(
                f"packing cannot be exact here: {problem}",
                hint="use --packing off (or leave it out: the planner then pads batches, "
                "grouped by length, as the run will)",
                where="--packing",
            )
    if request.loss_kernel == "liger":
        problem = liger_problem(spec, device, request)
        if problem:
            raise AffinerError(
                f"liger's fused cross-entropy cannot run: {problem}",
                hint="use --loss-kernel auto (liger where it can run) or torch",
                where="--loss-kernel",
            )


def check_words(packing: object, loss_kernel: object) -> None:
    """Refuse a packing or loss-kernel value outside run.toml's words."""
    if packing is not None and not isinstance(packing, bool):
        raise AffinerError(
            f"packing must be on or off, got {packing!r}", hint="on or off", where="--packing"
        )
    if loss_kernel is not None and loss_kernel not in LOSS_KERNEL_SETTINGS:
        raise AffinerError(
            f"unknown loss kernel {loss_kernel!r}",
            hint=f"use one of: {', '.join(LOSS_KERNEL_SETTINGS)}",
            where="--loss-kernel",
        )


def without_levers(request: PlanRequest) -> PlanRequest:
    """`request` as the run would be with padded batches and torch's loss."""
    return replace(request, packing=False, loss_kernel="torch")


def lever_reasons(
    spec: ModelSpec,
    device: DeviceTarget,
    chosen: Candidate,
    plain: Candidate | None,
    plain_best: Candidate | None,
    *,
    row_tokens: float | None,
) -> list[str]:
    """What packing and the fused loss do for the chosen plan, in words.

    Args:
        chosen: the recommended candidate (levers as the run resolves them).
        plain: the same method planned without the levers (None when they are off).
        plain_best: what the recommendation would be without them (None: nothing fits).
        row_tokens: the data's mean tokens a row (None when unknown).
    """
    from affiner.planner.memory.activations import estimate_activations

    s = chosen.settings
    out: list[str] = []
    if s.packing and row_tokens is not None and row_tokens < s.seq_len:
        # with the lengths unknown every row is planned full: packing then changes no figure
        share = 1 - row_tokens / s.seq_len
        out.append(
            f"packing removes padding: rows average {row_tokens:.0f} of {s.seq_len} tokens, "
            f"~{share:.0%} fewer tokens computed"
        )
    if s.loss_kernel == "liger":
        full = estimate_activations(spec, s.with_(loss_kernel="torch"), device.kind)
        fused = estimate_activations(spec, s, device.kind)
        before = max(full.logits_peak, full.logits_forward)
        after = max(fused.logits_peak, fused.logits_forward)
        out.append(
            f"fused loss (liger) drops the {format_bytes(before)} logits: "
            f"{format_bytes(after)} instead"
        )
    if plain is None:
        return out
    words = _lever_words(s, row_tokens)
    let = "let" if " and " in words else "lets"
    name = explain.METHOD_NAMES[chosen.method]
    if plain_best is None:
        out.append(f"without {words} nothing would fit: {words} {let} {name} fit")
    elif plain_best.method != chosen.method:
        other = explain.METHOD_NAMES[plain_best.method]
        if chosen.fits and not plain.fits:
            out.append(
                f"{words} {let} {name} fit: otherwise it needs "
                f"{format_bytes(plain.peak_bytes)} and the best that fits is {other}"
            )
        else:
            out.append(f"without {words} the recommendation would be {other}")
    elif plain.fits and chosen.fits:
        gain = _same_method_gain(chosen, plain)
        if gain:
            out.append(f"{words} {gain.replace('let ', let + ' ', 1)}")
    return out


def slower_text(chosen: Candidate, plain: Candidate) -> str:
    """Why the same plan with padded batches would take less time a step, in words."""
    from affiner.planner.units import format_duration

    return (
        f"with packing off a step would take about {format_duration(plain.time.step_seconds)} "
        f"instead of {format_duration(chosen.time.step_seconds)}: with "
        f"{chosen.settings.attention} a pack's attention spans all its "
        f"{chosen.settings.micro_batch} rows behind a mask; set [training].packing = false "
        "(--packing off) to plan it, or use flash_attention_2"
    )


def hurts_text(plain_best: Candidate) -> str:
    """Why padded batches would do better than the packing the run is set to, in words."""
    name = explain.METHOD_NAMES[plain_best.method]
    s = plain_best.settings
    how = f"micro-batch {s.micro_batch}" + (
        ", checkpointing on" if s.gradient_checkpointing else ""
    )
    return (
        f"with packing off, {name} would fit at {how} ({format_bytes(plain_best.peak_bytes)}): "
        "with sdpa or eager a pack's block-diagonal mask costs tokens x tokens at every layer "
        "(flash_attention_2 needs none); set [training].packing = false (--packing off) to plan it"
    )


def _lever_words(s: TrainSettings, row_tokens: float | None) -> str:
    """The levers that change this plan's figures, named: packing only where a pack is
    smaller than padded rows (the data's lengths are known), the fused loss wherever it is on."""
    on = []
    fewer = s.micro_batch_tokens < s.micro_batch * s.seq_len
    if s.packing and (fewer or (row_tokens is not None and row_tokens < s.seq_len)):
        on.append("packing")
    if s.loss_kernel == "liger":
        on.append("the fused loss")
    return " and ".join(on) or "packing"


def _same_method_gain(chosen: Candidate, plain: Candidate) -> str | None:
    """What the levers buy the same method: no checkpointing, a larger micro-batch."""
    a, b = chosen.settings, plain.settings
    if b.gradient_checkpointing and not a.gradient_checkpointing:
        return "let it run without gradient checkpointing (about a third faster)"
    if a.micro_batch > b.micro_batch:
        return f"let it run micro-batch {a.micro_batch} instead of {b.micro_batch}"
    if b.optimizer != a.optimizer and a.optimizer == "adamw":
        return "let it keep full AdamW state"
    return None
