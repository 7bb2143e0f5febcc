"""``run.toml``: what a run does, as dataclasses.

One file per run is the single source of truth: the planner's chosen plan converts to it,
a person can write or edit one by hand, and the training process reads nothing else.
Loading, validation (unknown keys, wrong types, impossible combinations) and writing live in
`affiner.runner.config.io`; this module only names the sections and their defaults.

Example::

    [model]
    name_or_path = "runs/models/smollm2-135m-instruct"

    [method]
    name = "lora"
    lora_rank = 16

    [data]
    train = "data/train.jsonl"

    [training]
    epochs = 2
    learning_rate = 2e-4
"""

from __future__ import annotations

from dataclasses import dataclass, field

from affiner.planner.settings import LOSS_KERNEL_SETTINGS
from affiner.planner.vocabulary import (
    LORA_METHODS,
    Method,
    Optimizer,
    PrecisionSetting,
    Quantization,
    default_learning_rate,
    effective_quantization,
)

# Methods, quantizations, precisions, optimizers and tasks are `affiner.planner.vocabulary`'s:
# the words below are run.toml's alone.
DATA_FORMATS = ("auto", "text", "instruction", "chat", "prompt_completion", "classification")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
DEVICES = ("auto", "cpu", "cuda")
#: ``[distributed].strategy``: the planner's sharding words for several processes
#: (`affiner.planner.settings.SHARDINGS` without ``none``). zero2/zero3 are DeepSpeed's.
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
DEEPSPEED_STRATEGIES = ("zero2", "zero3")
LOSS_KERNELS = LOSS_KERNEL_SETTINGS  # the planner's words: one vocabulary


@dataclass
class ModelSection:
    """The base model.

    Attributes:
        name_or_path: a local folder or a hub id (read from the local cache when offline).
        task: ``causal_lm`` (generation) or ``classification`` (sequence classification head).
        trust_remote_code: run the model repository's own Python code; off unless asked for.
        revision: hub revision (branch, tag or commit).
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2``.
    """

    name_or_path: str = ""
    task: str = "causal_lm"
    trust_remote_code: bool = False
    revision: str | None = None
    attn_implementation: str = "sdpa"


@dataclass
class MethodSection:
    """How the model is adapted.

    Attributes:
        name: ``full``, ``freeze`` (train only the last `trainable_layers` blocks and the head),
            ``lora``, ``qlora`` (4-bit base) or ``lora8`` (8-bit base).
        quantization: ``none``, ``nf4``, ``fp4`` or ``int8``; ``qlora`` implies ``nf4`` and
            ``lora8`` implies ``int8`` when left at ``none``.
        double_quant: quantize the 4-bit block constants too (QLoRA's double quantization).
        lora_rank, lora_alpha, lora_dropout: LoRA's hyper-parameters.
        target_modules: ``all-linear`` or a list of module names (``["q_proj", "v_proj"]``).
        trainable_layers: blocks left trainable by ``freeze``.
    """

    name: Method = "lora"
    quantization: Quantization = "none"
    double_quant: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    trainable_layers: int = 2


@dataclass
class DataSection:
    """The data set.

    Attributes:
        train: a JSONL/JSON/CSV/Parquet/text file, a saved `datasets` folder, or a hub data set id.
        eval: held-out data; when empty, `eval_fraction` of `train` is split off (seeded).
        format: ``auto`` (detected from the columns) or one of `DATA_FORMATS`.
        columns: renames, e.g. ``{text = "review", label = "sentiment"}``.
        max_seq_len: longer examples are truncated (and counted).
        eval_fraction: share of `train` held out when `eval` is empty.
        max_dropped_fraction: the run refuses to start if more rows than this are invalid.
        dedupe: drop exact duplicate rows (counted and reported).
        labels: class names for classification, in id order; detected when empty.
        limit: use at most this many training rows (0 = all).
        seed: seed of the split and shuffles.
    """

    train: str = ""
    eval: str = ""
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    max_seq_len: int = 512
    eval_fraction: float = 0.1
    max_dropped_fraction: float = 0.05
    dedupe: bool = True
    labels: list[str] = field(default_factory=list)
    limit: int = 0
    seed: int = 42


@dataclass
class TrainingSection:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training data (ignored when `max_steps` > 0).
        max_steps: stop after this many optimizer steps (-1 = use `epochs`).
        micro_batch: examples per forward pass per device.
        grad_accum: micro-batches per optimizer step.
        learning_rate: when a run.toml leaves it out, the method's usual rate
            (`affiner.planner.vocabulary.LEARNING_RATES`: full 2e-5, freeze 5e-5, LoRA 2e-4).
        precision: ``auto`` (bf16 on a GPU that has it, else fp16 on a GPU, fp32 on the CPU:
            `affiner.planner.vocabulary.resolve_auto_precision`), or explicit.
        device: ``auto``, ``cpu`` or ``cuda``.
        preflight: run the pre-flight check before training.
        packing: join a micro-batch's rows into one padding-free row whose position ids restart
            at each example (transformers' ``DataCollatorWithFlattening``), so no compute goes
            to padding. Left out: on for causal LM wherever the model's attention keeps the
            examples apart (checked on the loaded model before training), else padded batches
            grouped by length, with a warning. ``true`` refuses to start where it would not be
            exact; ``false`` pads each micro-batch to its longest row, grouped by length.
        loss_kernel: ``auto`` (liger-kernel's fused linear cross-entropy on CUDA when it is
            installed and supports the model, else torch's), ``liger`` (required: refused on
            the CPU or without ``affiner[liger]``) or ``torch`` (full logits, then the loss).
    """

    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = default_learning_rate(MethodSection.name)
    micro_batch: int = 4
    grad_accum: int = 1
    precision: PrecisionSetting = "auto"
    optimizer: Optimizer = "adamw"
    gradient_checkpointing: bool = False
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    seed: int = 42
    device: str = "auto"
    preflight: bool = True
    packing: bool | None = None
    loss_kernel: str = "auto"


@dataclass
class EvalSection:
    """Held-out evaluation.

    Attributes:
        every_steps: evaluate every N optimizer steps (0 = once per epoch).
        early_stopping_patience: stop after this many evaluations without improvement (0 = off).
        overfit_patience: warn when eval loss has risen this many evaluations while train loss fell.
        max_rows: evaluate on at most this many held-out rows (0 = all).
        at_start: evaluate the untouched model before the first step (an ``eval`` event at
            step 0), so results read "before → after". Skipped when resuming.
    """

    every_steps: int = 50
    early_stopping_patience: int = 0
    overfit_patience: int = 2
    max_rows: int = 0
    at_start: bool = False


@dataclass
class CheckpointSection:
    """Checkpoints: every N steps, keep the last K (the best by eval loss is kept besides)."""

    every_steps: int = 100
    keep_last: int = 2


@dataclass
class OutputSection:
    """What the finished run leaves behind besides the adapter and the model card."""

    merge: bool = False


@dataclass
class DistributedSection:
    """Several processes, on one machine or several, started by ``accelerate launch``.

    One process per GPU (on the CPU: per worker, with the gloo backend). Rank 0, on the node of
    ``node_rank = 0``, writes the run's events and status; every rank's memory reaches them.
    Left out, or ``processes = 1`` and ``nodes = 1``, the run is a single process.

    Attributes:
        processes: processes on each node (one per GPU used there).
        nodes: machines taking part; each runs `processes` of them.
        strategy: ``ddp`` (a full replica per process), ``fsdp`` (torch's FSDP2: weights,
            gradients and optimizer state sharded over every process), ``zero2`` (DeepSpeed:
            gradients and optimizer state sharded) or ``zero3`` (DeepSpeed: all three sharded);
            the zero strategies need the optional extra ``affiner[deepspeed]`` and CUDA.
        node_rank: this machine's place among the nodes (0 = the main node).
        main_address: the main node's address, reachable from every node (with ``nodes > 1``).
        main_port: the main node's rendezvous port; 0 picks a free port (one node only).
        timeout_minutes: a collective that waits longer than this fails the run (a rank that
            died or hangs ends the run with its name and cause, never a silent hang).
    """

    processes: int = 1
    nodes: int = 1
    strategy: str = "ddp"
    node_rank: int = 0
    main_address: str = "127.0.0.1"
    main_port: int = 0
    timeout_minutes: float = 30.0

    @property
    def world_size(self) -> int:
        """Processes over all nodes."""
        return self.processes * self.nodes

    @property
    def enabled(self) -> bool:
        """More than one process: the run is launched by accelerate."""
        return self.world_size > 1


@dataclass
class PlanSection:
    """What the planner predicted for this run (for comparison; never changes what runs)."""

    predicted_peak_bytes: int | None = None
    predicted_step_seconds: float | None = None
    device: str | None = None
    #: What the pre-flight check measured on the real hardware (written back by it).
    measured_peak_bytes: int | None = None
    measured_step_seconds: float | None = None


@dataclass
class RunConfig:
    """A whole ``run.toml``."""

    model: ModelSection = field(default_factory=ModelSection)
    method: MethodSection = field(default_factory=MethodSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    output: OutputSection = field(default_factory=OutputSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    plan: PlanSection = field(default_factory=PlanSection)

    @property
    def quantization(self) -> str:
        """The effective quantization (``qlora`` means nf4 and ``lora8`` int8 unless stated)."""
        return effective_quantization(self.method.name, self.method.quantization)

    @property
    def uses_lora(self) -> bool:
        return self.method.name in LORA_METHODS
