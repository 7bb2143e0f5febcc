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
from typing import TYPE_CHECKING, Protocol, TypeVar

from affiner.planner.errors import AffinerError
from affiner.planner.settings import LOSS_KERNEL_SETTINGS, LossKernel

if TYPE_CHECKING:
    from affiner.planner.hardware import DeviceTarget
    from affiner.planner.models import ModelSpec


class LeverRequest(Protocol):
    """What these rules read of a `affiner.planner.plan_request.PlanRequest` (which imports
    this module, so it is named by its fields here)."""

    packing: bool | None
    loss_kernel: str | None
    task: str | None


R = TypeVar("R", bound=LeverRequest)

#: Families whose attention takes its positions from an ALiBi bias built on the attention
#: mask, not from position ids: a pack's examples would see each other.
ALIBI_FAMILIES = frozenset({"bloom", "mpt"})
#: Families whose learned positions sit at an offset from the position ids (OPT adds 2): a
#: pack's restarting ids put its later examples at the wrong positions. The runner's check on
#: the loaded model (`affiner.runner.training.batching.packing_is_exact`) finds the same.
OFFSET_POSITION_FAMILIES = frozenset({"opt"})
#: The settings these levers are, as `LeverRequest` and `TrainSettings` name them.
LEVERS = ("packing", "loss_kernel")


def causal_lm(spec: ModelSpec, request: LeverRequest) -> bool:
    """The run trains a vocabulary head on next tokens (what packing and the fused loss serve)."""
    return spec.is_decoder and spec.has_lm_head and request.task != "classification"


def packing_problem(spec: ModelSpec, request: LeverRequest) -> str | None:
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
    if spec.model_type in OFFSET_POSITION_FAMILIES:
        return (
            f"{spec.model_type}'s learned positions are offset from the position ids, so a "
            "pack's later examples would be read at the wrong positions"
        )
    return None


def liger_installed() -> bool:
    """liger-kernel is installed here (found by name: importing it needs torch and Triton)."""
    return find_spec("liger_kernel") is not None


def liger_problem(spec: ModelSpec, device: DeviceTarget, request: LeverRequest) -> str | None:
    """Why the fused loss cannot run in this plan, or None when it can."""
    if not causal_lm(spec, request):
        return "the fused loss is a language-model head's; a classification head has none"
    if device.is_cpu:
        return "its kernels are Triton's, CUDA only, and this plan is for the CPU"
    return None


def resolve_packing(spec: ModelSpec, request: LeverRequest) -> bool:
    """What the run will do: the stated setting, or on wherever a pack stays exact."""
    if request.packing is not None:
        return request.packing
    return packing_problem(spec, request) is None


def resolve_loss_kernel(spec: ModelSpec, device: DeviceTarget, request: LeverRequest) -> LossKernel:
    """What the run will compute its loss with: stated, or liger where it runs and is installed."""
    stated = request.loss_kernel or "auto"
    if stated == "torch":
        return "torch"
    if stated == "liger":
        return "liger"
    if liger_problem(spec, device, request) is None and liger_installed():
        return "liger"
    return "torch"


def check_levers(spec: ModelSpec, device: DeviceTarget, request: LeverRequest) -> None:
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


def without_levers(request: R) -> R:
    """`request` as the run would be with padded batches and torch's loss."""
    return replace(request, packing=False, loss_kernel="torch")
