"""The rules a ``run.toml`` must follow: allowed values, ranges and impossible combinations.

Each rule yields ``(key, message, hint)`` with ``key`` as ``section.field``; `affiner.runner.config.io`
turns them into one `ConfigError` with the file and line. Machine checks are deliberately cheap:
whether bitsandbytes has a backend for the device is decided from the installed files and the
platform (importing bitsandbytes costs seconds and pulls torch), CPU bf16 from /proc/cpuinfo.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

from affiner.planner.vocabulary import (
    BASE_WEIGHT_METHODS,
    EIGHT_BIT_OPTIMIZERS,
    FOUR_BIT,
    METHODS,
    OPTIMIZERS,
    PRECISION_SETTINGS,
    QUANTIZATIONS,
    TASKS,
)
from affiner.runner.config.schema import (
    DATA_FORMATS,
    DEEPSPEED_STRATEGIES,
    DEVICES,
    LOSS_KERNELS,
    SCHEDULERS,
    STRATEGIES,
    RunConfig,
)

ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# Canonical column names a [data].columns table may rename to.
COLUMN_NAMES = (
    "text",
    "label",
    "instruction",
    "input",
    "output",
    "system",
    "messages",
    "conversations",
    "prompt",
    "completion",
)
Problem = tuple[str, str, "str | None"]
#: Addresses only this machine reaches ("" too: no address given).
LOOPBACK = ("", "127.0.0.1", "localhost", "::1")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> Iterator[Problem]:
    if value not in allowed:
        yield key, f"{value!r} is not allowed", "allowed: " + ", ".join(allowed)


def _at_least(key: str, value: float, low: float, strict: bool = False) -> Iterator[Problem]:
    if value < low or (strict and value == low):
        relation = "greater than" if strict else "at least"
        yield key, f"must be {relation} {low:g} (got {value:g})", None


def _between(
    key: str, value: float, low: float, high: float, high_open: bool = False
) -> Iterator[Problem]:
    if value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        yield key, f"must be in [{low:g}, {high:g}{bracket} (got {value:g})", None


#: peft's ParamWrapper refuses dropout: said by the check and by the loader alike.
MOE_DROPOUT = "this model's experts are fused 3-D weights, which peft adapts without dropout"
MOE_DROPOUT_HINT = (
    "Set lora_dropout = 0, or list target_modules without the experts, e.g. "
    '["q_proj", "k_proj", "v_proj", "o_proj"].'
)


def find_problems(cfg: RunConfig) -> list[Problem]:
    """Every error in `cfg`, in file order (model, method, data, training, eval, checkpoint)."""
    out: list[Problem] = []
    m, me, d, t, e, c = cfg.model, cfg.method, cfg.data, cfg.training, cfg.eval, cfg.checkpoint

    # [model]
    if not m.name_or_path.strip():
        out.append(
            (
                "model.name_or_path",
                "no model given",
                'set name_or_path = "path/to/model" or a hub id',
            )
        )
    out += _choice("model.task", m.task, TASKS)
    if m.attn_implementation not in ATTENTION and "/" not in m.attn_implementation:
        out.append(("model.attn_implementation", f"{m.attn_implementation!r} is not allowed",
                    "allowed: " + ", ".join(ATTENTION) + " (or a hub kernel id)"))  # fmt: skip

    # [method]
    out += _choice("method.name", me.name, METHODS)
    out += _choice("method.quantization", me.quantization, QUANTIZATIONS)
    if me.name in BASE_WEIGHT_METHODS and me.quantization != "none":
        out.append(("method.quantization", f"method {me.name!r} trains the base weights, which cannot be quantized",
                    'use quantization = "none", or method "qlora"/"lora8" to train adapters on a quantized base'))  # fmt: skip
    if me.name == "qlora" and me.quantization == "int8":
        out.append(
            ("method.quantization", 'qlora is 4-bit; int8 is method "lora8"', 'use "nf4" or "fp4"')
        )
    if me.name == "lora8" and me.quantization in FOUR_BIT:
        out.append(("method.quantization", 'lora8 is 8-bit; 4-bit is method "qlora"', 'use "int8"'))
    if cfg.uses_lora:
        out += _at_least("method.lora_rank", me.lora_rank, 1)
        out += _at_least("method.lora_alpha", me.lora_alpha, 0, strict=True)
        out += _between("method.lora_dropout", me.lora_dropout, 0.0, 1.0, high_open=True)
        modules = me.target_modules
        if (isinstance(modules, str) and not modules.strip()) or (
            isinstance(modules, list) and (not modules or not all(x.strip() for x in modules))
        ):
            out.append(
                (
                    "method.target_modules",
                    "no target modules",
                    '"all-linear" or a list like ["q_proj", "v_proj"]',
                )
            )
        if me.lora_dropout > 0 and modules == "all-linear" and _has_fused_experts(m.name_or_path):
            out.append(("method.lora_dropout", MOE_DROPOUT + " (all-linear includes them)",
                        MOE_DROPOUT_HINT))  # fmt: skip
    if me.name == "freeze":
        out += _at_least("method.trainable_layers", me.trainable_layers, 1)
    if cfg.quantization != "none" and me.name in METHODS and me.quantization in QUANTIZATIONS:
        problem = bitsandbytes_problem(effective_device(t.device))
        if problem:
            out.append(("method.name", f"{cfg.quantization} quantization needs bitsandbytes: {problem}",
                        'use method = "lora" (no quantization), or run on a CUDA GPU'))  # fmt: skip

    # [data]
    if not d.train.strip():
        out.append(
            (
                "data.train",
                "no training data given",
                'set train = "data/train.jsonl" (or .json, .csv, .parquet, .txt)',
            )
        )
    out += _choice("data.format", d.format, DATA_FORMATS)
    if m.task == "classification" and d.format not in ("auto", "classification"):
        out.append(("data.format", f"a classification model needs classification data (text and label), not {d.format!r}",
                    'use format = "classification" or "auto", or task = "causal_lm"'))  # fmt: skip
    if m.task == "causal_lm" and d.format == "classification":
        out.append(("data.format", "classification data needs task = \"classification\"",
                    'set [model].task = "classification", or pick a generation format'))  # fmt: skip
    for canonical, column in d.columns.items():
        if canonical not in COLUMN_NAMES:
            out.append(("data.columns", f"unknown column name {canonical!r}",
                        "the left side is one of: " + ", ".join(COLUMN_NAMES)))  # fmt: skip
        elif not column.strip():
            out.append(("data.columns", f"empty source column for {canonical!r}", None))
    out += _at_least("data.max_seq_len", d.max_seq_len, 8)
    out += _between("data.eval_fraction", d.eval_fraction, 0.0, 0.5)
    out += _between("data.max_dropped_fraction", d.max_dropped_fraction, 0.0, 1.0)
    out += _at_least("data.limit", d.limit, 0)
    if len(set(d.labels)) != len(d.labels):
        out.append(("data.labels", "labels repeat", "list each class name once, in id order"))

    # [training]
    if t.max_steps <= 0 and t.max_steps != -1:
        out.append(
            ("training.max_steps", f"must be -1 (use epochs) or positive (got {t.max_steps})", None)
        )
    if t.max_steps == -1:
        out += _at_least("training.epochs", t.epochs, 0, strict=True)
    out += _at_least("training.learning_rate", t.learning_rate, 0, strict=True)
    out += _at_least("training.micro_batch", t.micro_batch, 1)
    out += _at_least("training.grad_accum", t.grad_accum, 1)
    out += _choice("training.precision", t.precision, PRECISION_SETTINGS)
    out += _choice("training.optimizer", t.optimizer, OPTIMIZERS)
    out += _choice("training.lr_scheduler", t.lr_scheduler, SCHEDULERS)
    out += _choice("training.device", t.device, DEVICES)
    out += _between("training.warmup_ratio", t.warmup_ratio, 0.0, 1.0, high_open=True)
    out += _at_least("training.weight_decay", t.weight_decay, 0)
    out += _at_least("training.max_grad_norm", t.max_grad_norm, 0)
    out += _at_least("training.logging_steps", t.logging_steps, 1)
    out += _choice("training.loss_kernel", t.loss_kernel, LOSS_KERNELS)
    if t.packing and m.task == "classification":
        out.append(("training.packing", "packing joins the rows of a causal-LM batch; a classification "
                    "model scores each row on its own", "remove packing (or set it to false): "
                    "classification batches are padded and grouped by length"))  # fmt: skip
    if t.loss_kernel == "liger":
        problem = liger_problem(effective_device(t.device)) if t.device in DEVICES else None
        if m.task == "classification":
            problem = "the fused loss is a language-model head's; a classification head has none"
        if problem:
            out.append(("training.loss_kernel", f"liger's fused cross-entropy cannot run: {problem}",
                        'use loss_kernel = "auto" (it picks liger where it can) or "torch"'))  # fmt: skip
    if t.optimizer in EIGHT_BIT_OPTIMIZERS and t.device in DEVICES:
        problem = bitsandbytes_problem(effective_device(t.device))
        if problem:
            out.append(
                (
                    "training.optimizer",
                    f"{t.optimizer} needs bitsandbytes: {problem}",
                    'use optimizer = "adamw"',
                )
            )

    # [eval] and [checkpoint]
    out += _at_least("eval.every_steps", e.every_steps, 0)
    out += _at_least("eval.early_stopping_patience", e.early_stopping_patience, 0)
    out += _at_least("eval.overfit_patience", e.overfit_patience, 0)
    out += _at_least("eval.max_rows", e.max_rows, 0)
    if e.early_stopping_patience > 0 and not d.eval.strip() and d.eval_fraction == 0:
        out.append(("eval.early_stopping_patience", "early stopping needs held-out data, and there is none",
                    "set [data].eval, or [data].eval_fraction above 0, or early_stopping_patience = 0"))  # fmt: skip
    out += _at_least("checkpoint.every_steps", c.every_steps, 0)
    out += _at_least("checkpoint.keep_last", c.keep_last, 1)
    out += _distributed_problems(cfg)
    return out


def _distributed_problems(cfg: RunConfig) -> Iterator[Problem]:
    """``[distributed]``: counts, the strategy, the rendezvous (what this machine can run is
    `machine_problems`, asked before a launch)."""
    d, t = cfg.distributed, cfg.training
    yield from _at_least("distributed.processes", d.processes, 1)
    yield from _at_least("distributed.nodes", d.nodes, 1)
    yield from _choice("distributed.strategy", d.strategy, STRATEGIES)
    if not 0 <= d.node_rank < max(d.nodes, 1):
        yield ("distributed.node_rank", f"must be in [0, {max(d.nodes, 1) - 1}] with {d.nodes} "
               f"node(s) (got {d.node_rank})", "0 is the main node; each other node takes the next number")  # fmt: skip
    yield from _between("distributed.main_port", d.main_port, 0, 65535)
    yield from _at_least("distributed.timeout_minutes", d.timeout_minutes, 0, strict=True)
    if d.nodes > 1:
        if d.main_address.strip() in LOOPBACK:
            yield ("distributed.main_address", f"{d.nodes} nodes need the main node's address as the "
                   f"others reach it (got {d.main_address!r})", 'e.g. main_address = "10.0.0.1" (the address of node_rank 0)')  # fmt: skip
        if d.main_port == 0:
            yield ("distributed.main_port", "several nodes must agree on one port; 0 (any free port) "
                   "works on one node only", "e.g. main_port = 29500 (open between the nodes)")  # fmt: skip
    if not d.enabled or t.device not in DEVICES or d.strategy not in STRATEGIES:
        return
    if t.device == "cpu":  # said in the file itself: refused wherever it is read
        yield from _strategy_on_the_cpu(d.strategy)
    if d.strategy != "ddp" and cfg.quantization != "none":
        yield ("distributed.strategy", f"{d.strategy} shards the weights it trains, and a "
               f"{cfg.quantization}-quantized base cannot be sharded here",
               'use strategy = "ddp" (each GPU holds the quantized base and trains its own '
               'copy of the adapters), or method = "lora" to shard a bf16 base')  # fmt: skip


def _strategy_on_the_cpu(strategy: str) -> Iterator[Problem]:
    if strategy in DEEPSPEED_STRATEGIES:
        yield ("distributed.strategy", f"DeepSpeed's {strategy} trains on CUDA GPUs, not on the CPU",
               'use strategy = "ddp" on the CPU')  # fmt: skip
    if strategy == "fsdp":
        yield ("distributed.strategy", "accelerate applies FSDP to GPU processes only: on the CPU the "
               "processes would each hold the whole model (plain DDP) while the plan said sharded",
               'use strategy = "ddp" on the CPU, or run on CUDA GPUs')  # fmt: skip


def machine_problems(cfg: RunConfig) -> list[Problem]:
    """What this machine cannot run of ``[distributed]``: asked before a launch here, not when
    a file is read (a plan saved for an 8-GPU server is a valid file on a laptop)."""
    d, t = cfg.distributed, cfg.training
    out: list[Problem] = []
    if not d.enabled or t.device not in DEVICES or d.strategy not in STRATEGIES:
        return out
    device = effective_device(t.device)
    if d.strategy in DEEPSPEED_STRATEGIES and find_spec("deepspeed") is None:
        out.append(("distributed.strategy", f"{d.strategy} is DeepSpeed's ZeRO, and DeepSpeed is not installed",
                    'pip install "affiner[deepspeed]", or use strategy = "fsdp" (torch\'s own sharding)'))  # fmt: skip
    if t.device == "auto" and device == "cpu":  # device = "cpu" was refused with the file
        out += [
            (key, f'{message} (device = "auto" is the CPU on this machine: no NVIDIA GPU)', hint)
            for key, message, hint in _strategy_on_the_cpu(d.strategy)
        ]
    if device == "cuda":
        gpus = visible_gpu_count()
        if gpus is not None and d.processes > gpus:
            visible = " visible" if os.environ.get("CUDA_VISIBLE_DEVICES") else ""
            seen = f"{gpus} GPU{'' if gpus == 1 else 's'}{visible}" if gpus else "no NVIDIA GPU"
            hint = (
                f"use processes = {gpus}" if gpus else "run it on the machine it was planned for"
            ) + ', or [training].device = "cpu" to run the processes on the CPU (ddp)'
            out.append(("distributed.processes", f"{d.processes} processes on each node need "
                        f"{d.processes} GPUs, and this machine has {seen}", hint))  # fmt: skip
    return out


def visible_gpu_count() -> int | None:
    """GPUs a CUDA run on this machine can use: NVML's count, narrowed by CUDA_VISIBLE_DEVICES;
    None when that cannot be told without starting CUDA (no NVML)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v for v in visible.split(",") if v.strip()]
        if not entries or entries[0].strip() == "-1":
            return 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver
        return 0 if not nvidia_gpu_present() else None
    return min(count, len(entries)) if visible is not None else count


def _has_fused_experts(name_or_path: str) -> bool:
    """True for a local model folder whose config describes fused experts (read, not loaded).

    Hub ids are not looked up here (no network in a check); the loader says the same later.
    """
    import json

    from affiner.planner.models import has_fused_experts, spec_from_config

    config = Path(name_or_path) / "config.json"
    try:
        spec = spec_from_config(json.loads(config.read_text("utf-8")), name=name_or_path)
    except Exception:  # not a local folder, or a config the loader will explain better
        return False
    return has_fused_experts(spec)


def find_warnings(cfg: RunConfig) -> list[tuple[str, str]]:
    """Things that run but probably not as meant (half precision on a CPU that lacks it)."""
    out: list[tuple[str, str]] = []
    precision = cfg.training.precision
    if effective_device(cfg.training.device) == "cpu" and precision in (
        "bf16",
        "fp16",
        "bf16-pure",
    ):
        flags = cpu_flags()
        wanted = (
            ("avx512_bf16", "amx_bf16")
            if precision.startswith("bf16")
            else ("avx512_fp16", "amx_fp16")
        )
        if not flags.intersection(wanted):
            out.append(("training.precision", f"{precision} on a CPU without native support ({' or '.join(wanted)}) "
                        "is emulated and slow; precision = \"auto\" uses fp32 on the CPU"))  # fmt: skip
    if (
        cfg.training.optimizer == "paged_adamw8bit"
        and effective_device(cfg.training.device) == "cpu"
    ):
        out.append(
            ("training.optimizer", "paging only helps on a GPU; adamw8bit does the same on the CPU")
        )
    return out


def effective_device(device: str) -> str:
    """``cuda`` or ``cpu``: what ``auto`` will pick, judged without importing torch."""
    if device != "auto":
        return device
    return "cuda" if nvidia_gpu_present() else "cpu"


def nvidia_gpu_present() -> bool:
    """A cheap guess that CUDA will find a GPU: a loaded NVIDIA driver and visible devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        return Path("/proc/driver/nvidia/version").exists() or bool(glob.glob("/dev/nvidia[0-9]*"))
    if sys.platform == "win32":
        import shutil

        return shutil.which("nvidia-smi") is not None
    return False


def liger_problem(device: str) -> str | None:
    """Why liger-kernel's fused linear cross-entropy cannot run on `device`, or None when it can.

    Its kernels are Triton's, which compile for CUDA GPUs only.
    """
    if device != "cuda":
        return "its kernels are written in Triton, which runs on CUDA GPUs, not on the CPU"
    if find_spec("liger_kernel") is None:
        return 'liger-kernel is not installed (pip install "affiner[liger]")'
    return None


def bitsandbytes_problem(device: str) -> str | None:
    """Why bitsandbytes cannot quantize on `device` (``cuda``/``cpu``), or None when it can.

    bitsandbytes 0.50 ships native backends for CUDA (Linux, Windows) and for the CPU on Linux
    x86-64 and aarch64; the library files it ships say which are present.
    """
    spec = find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    folder = Path(next(iter(spec.submodule_search_locations)))
    system, machine = platform.system(), platform.machine().lower()
    if device == "cuda":
        if system == "Darwin":
            return "there is no CUDA on macOS"
        if not list(folder.glob("*bitsandbytes_cuda*")):
            return f"this bitsandbytes build has no CUDA backend ({folder})"
        return None
    if system != "Linux" or machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"its CPU backend supports Linux on x86-64 and aarch64, not {system} on {machine}"
    if not list(folder.glob("*bitsandbytes_cpu*")):
        return f"this bitsandbytes build has no CPU backend ({folder})"
    return None


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
