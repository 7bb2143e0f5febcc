"""What a plan is asked for: `PlanRequest`, the settings it states, and why the rest are chosen.

A setting the request states (any of `SETTING_FIELDS` not None) is planned as it is, never
changed. `_applies` says which settings mean something for a method, `_why_chosen_settings` why
each unstated one has the value the search gave it, and `RELAXABLE` which stated ones an
alternative may hand back to the planner. `_check_lora` refuses stated LoRA settings the model
cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass

from affiner.planner.errors import AffinerError
from affiner.planner.levers import check_words
from affiner.planner.models import ModelSpec, has_fused_experts
from affiner.planner.sequence_fit import SAFETY_MARGIN
from affiner.planner.settings import ATTENTIONS, SHARDINGS, TrainSettings
from affiner.planner.vocabulary import (
    BASE_WEIGHT_METHODS,
    FOUR_BIT,
    LORA_METHODS,
    METHODS,
    OPTIMIZERS,
    PRECISION_SETTINGS,
    QUANTIZATIONS,
    TASKS,
    Method,
    Optimizer,
    PrecisionSetting,
    Quantization,
)

PRIORITIES = ("quality", "speed", "memory")
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
    "packing",
    "loss_kernel",
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
        num_gpus, nodes, sharding: the multi-GPU layout: `num_gpus` devices over all
            `nodes` (each node runs `num_gpus` / `nodes`), spread by `sharding`; run.toml's
            ``[distributed]`` (processes x nodes, strategy) states them.
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
        packing: padding-free packed micro-batches on or off; None: as the run decides
            (`affiner.planner.levers.resolve_packing`: on for a causal LM).
        loss_kernel: ``auto``, ``liger`` or ``torch``; None is ``auto``: liger on a CUDA
            device where liger-kernel is installed, else torch.
        task: ``causal_lm`` or ``classification`` (None: what the model's head trains).
        longest_rows: the data's longest rows in tokens, longest first (None: unknown); a
            packed micro-batch is planned as the `micro_batch` longest.
        measured_step_seconds: one optimizer step of this request's own settings as measured
            on this device (a pre-flight's, or a run's median), for `method`; every
            candidate's time is then scaled by it (`affiner.planner.timing.calibrate`).
        measured_step_source: where that figure comes from, in words ("the pre-flight").
        measured_step_estimate: what the time model says for the settings that were measured,
            when they are not this request's (a "what if" beside a run.toml that ran); None:
            the request's own `method` candidate is what was measured.
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
    nodes: int = 1
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
    packing: bool | None = None
    loss_kernel: str | None = None
    task: str | None = None
    longest_rows: tuple[int, ...] | None = None
    measured_step_seconds: float | None = None
    measured_step_source: str = "a measured step"
    measured_step_estimate: float | None = None

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
        check_words(self.packing, self.loss_kernel)
        if self.task is not None and self.task not in TASKS:
            raise AffinerError(
                f"unknown task {self.task!r}",
                hint=f"use one of: {', '.join(TASKS)}",
                where="--task",
            )
        if self.longest_rows is not None:
            self.longest_rows = tuple(sorted((int(n) for n in self.longest_rows), reverse=True))
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
        _check_layout(self.num_gpus, self.nodes, self.sharding)
        if self.seq_len < 1 or self.target_batch < 1:
            raise AffinerError(
                "sequence length and batch must be at least 1", where="--seq-len/--batch"
            )


def _check_layout(num_gpus: int, nodes: int, sharding: str) -> None:
    """--gpus, --nodes and --sharding as one layout: counts at least 1, the GPUs spread evenly
    over the nodes, a strategy the planner knows."""
    if num_gpus < 1:
        raise AffinerError(f"--gpus must be at least 1, got {num_gpus}", where="--gpus")
    if nodes < 1:
        raise AffinerError(f"--nodes must be at least 1, got {nodes}", where="--nodes")
    if nodes > num_gpus:
        raise AffinerError(
            f"--nodes {nodes} is more machines than --gpus {num_gpus}",
            hint="--gpus is the total over all nodes: e.g. --gpus 16 --nodes 2 for 8 on each",
            where="--nodes",
        )
    if num_gpus % nodes:
        raise AffinerError(
            f"--gpus {num_gpus} cannot be spread evenly over --nodes {nodes}",
            hint="--gpus is the total over all nodes, each node running the same number: "
            f"e.g. --gpus {nodes * max(1, num_gpus // nodes)} --nodes {nodes}",
            where="--gpus",
        )
    if sharding not in SHARDINGS:
        raise AffinerError(
            f"unknown sharding {sharding!r}",
            hint=f"use one of: {', '.join(s for s in SHARDINGS if s != 'none')}",
            where="--sharding",
        )


def _applies(s: TrainSettings) -> set[str]:
    """The `SETTING_FIELDS` that mean something for `s`'s method."""
    out = {"micro_batch", "precision", "optimizer", "gradient_checkpointing", "attention"}
    out |= {"packing", "loss_kernel"}  # a stated one that cannot apply is refused up front
    if s.uses_lora:
        out |= {"lora_targets", "lora_rank", "lora_alpha", "lora_dropout"}
    if s.method == "freeze":
        out.add("trainable_layers")
    if s.effective_quantization != "none":
        out.add("quantization")
    if s.effective_quantization in FOUR_BIT:
        out.add("double_quant")
    return out


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
