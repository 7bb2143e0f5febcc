"""The pre-flight check: measure what a run really needs before committing hours to it.

A plan is a prediction. The pre-flight check runs a few optimizer steps on the LONGEST
sequences of the data set at the planned micro-batch, one evaluation batch and one save
(to a temporary folder), and measures the real peak memory (torch's peak reserved bytes plus
the CUDA context NVML sees, on a GPU; the process's peak RSS on the CPU) and the real step
time. If training, evaluating or saving runs out of memory, it halves the micro-batch and
doubles gradient accumulation (the effective batch stays the same) and tries again; the
result says ``adjusted=True`` and a warning event says what changed. The measured figures
(and an adjusted batch) are written back into the run's ``run.toml``.

`run_training` calls it automatically for long runs when ``[training].preflight`` is true
(`should_preflight`): before a new run, and before a resume whose settings that shape memory
or time (`memory_settings`) differ from those its checkpoint was made with (each checkpoint
records them). ``affiner preflight`` calls it on its own. The event states the batch it started
from (``from_micro_batch``, ``from_grad_accum``) beside the one that fits.

While it works it writes ``progress`` events (`affiner.runner.run.events.Progress`) to the run's
event log, so that a reader (the assistant's pre-flight, the monitor) can say what it is doing
instead of a static "running…": the phases `affiner.runner.run.phases` names (``PREFLIGHT_LOAD``: the
tokenizer, data and model, nothing to count; ``PREFLIGHT_TRAIN``: ``done`` of ``total`` micro-batches,
``step`` the optimizer steps done; ``PREFLIGHT_EVAL``; ``PREFLIGHT_SAVE``).
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import os
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.timing import optimizer_steps
from affiner.runner.config import RunConfig
from affiner.runner.run import EventWriter, Preflight, RunDir, Warning_
from affiner.runner.run.diskspace import DiskFullError, free_bytes, is_disk_full
from affiner.runner.run.events import Progress
from affiner.runner.run.phases import (
    PREFLIGHT_EVAL,
    PREFLIGHT_LOAD,
    PREFLIGHT_SAVE,
    PREFLIGHT_TRAIN,
)
from affiner.runner.training.oom import is_oom

#: A run is "long" (worth a pre-flight) above this many predicted seconds ...
LONG_RUN_SECONDS = 600.0
#: ... or, without a time prediction, above this many optimizer steps.
LONG_RUN_STEPS = 200

#: At most one training progress event every this many seconds (an optimizer step's end
#: always writes one).
PROGRESS_EVERY_SECONDS = 1.0


class _Progress:
    """Writes the pre-flight's ``progress`` events to a run folder (nothing without one)."""

    def __init__(self, run_dir: RunDir | str | None) -> None:
        self._writer = None
        if run_dir is not None and _rank() == 0:  # one writer per run: rank 0
            rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
            self._writer = EventWriter(rd.path)
        self._last = 0.0

    def __call__(
        self, phase: str, done: int = 0, total: int = 0, step: int = 0, *, often: bool = False
    ) -> None:
        """Write one event; an `often` one (a micro-batch) only every `PROGRESS_EVERY_SECONDS`."""
        if self._writer is None:
            return
        now = time.monotonic()
        if often and now - self._last < PROGRESS_EVERY_SECONDS:
            return
        self._last = now
        self._writer.write(Progress(step=step, phase=phase, done=done, total=total))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


#: The reporter of the attempt `_measure` is making. A context variable rather than an
#: argument: `_measure` is the unit an attempt is, and tests stand in for it with its
#: signature (cfg, data, tokenizer, device, precision, micro, accum, steps).
_REPORTER: contextvars.ContextVar[_Progress | None] = contextvars.ContextVar(
    "preflight_reporter", default=None
)


def planned_steps(cfg: RunConfig, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take (what the Trainer will compute)."""
    t = cfg.training
    if t.max_steps > 0:
        return t.max_steps
    return optimizer_steps(train_rows, t.micro_batch, t.grad_accum, t.epochs, world_size)


def is_long_run(cfg: RunConfig, train_rows: int) -> bool:
    """True when a mistake would cost enough time that a minute of measuring pays for itself."""
    steps = planned_steps(cfg, train_rows, cfg.distributed.world_size)
    if cfg.plan.predicted_step_seconds:
        return steps * cfg.plan.predicted_step_seconds > LONG_RUN_SECONDS
    return steps > LONG_RUN_STEPS


def memory_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings that change a step's memory or time: what a checkpoint records, and what a
    resume compares with its own to decide whether the pre-flight must measure again."""
    m, t = cfg.method, cfg.training
    return {
        "method": m.name,
        "quantization": cfg.quantization,
        "lora_rank": m.lora_rank,
        "target_modules": m.target_modules,
        "trainable_layers": m.trainable_layers,
        "max_seq_len": cfg.data.max_seq_len,
        "micro_batch": t.micro_batch,
        "grad_accum": t.grad_accum,
        "gradient_checkpointing": bool(t.gradient_checkpointing),
        "precision": t.precision,
        "optimizer": t.optimizer,
        "device": t.device,
        "attn_implementation": cfg.model.attn_implementation,
        "packing": t.packing,
        "loss_kernel": t.loss_kernel,
    }


def changed_settings(recorded: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """``key a → b`` for each setting that differs; none when nothing was recorded (an older
    checkpoint: nothing to compare, so nothing is assumed to have changed)."""
    if recorded is None:
        return []
    return [
        f"{key} {recorded.get(key)!r} → {value!r}"
        for key, value in now.items()
        if key in recorded and recorded[key] != value
    ]


def should_preflight(
    cfg: RunConfig, train_rows: int, *, resuming: bool, changed: list[str], world_size: int = 1
) -> bool:
    """Whether the run measures before it trains: a long run, new or resumed with changed
    settings (a resume at the settings its checkpoint ran with already ran). A multi-process
    run measures its own layout, every rank at once (`world_size` is no longer a reason not to)."""
    del world_size  # kept for callers; the layout is measured as it will run
    if not cfg.training.preflight or not is_long_run(cfg, train_rows):
        return False
    return not resuming or bool(changed)


@dataclass
class _Measured:
    peak_bytes: int
    step_seconds: float
    eval_peak_bytes: int | None
    seq_len: int
    device_name: str
    notes: list[str]


class _OutOfMemory(Exception):
    """Raised by `_measure` after it has let go of the model (it carries no traceback to it)."""

    def __init__(self, stage: str, detail: str = "") -> None:
        super().__init__(stage)
        self.stage = stage
        self.detail = detail


def run_preflight(
    cfg: RunConfig,
    run_dir: RunDir | str | None = None,
    *,
    prepared: Any = None,
    tokenizer: Any = None,
    steps: int = 3,
) -> Preflight:
    """Measure peak memory and step time for `cfg`; adjust the batch if it does not fit.

    Args:
        cfg: the run configuration; on adjustment its micro_batch/grad_accum are changed in
            place, and ``[plan].measured_*`` are filled in either way.
        run_dir: when given, a ``preflight`` event (and a warning when adjusted) is written to
            its event log and the figures are written back into its ``run.toml``.
        prepared, tokenizer: already prepared data and tokenizer (the recipe passes them).
        steps: optimizer steps to time (the first is a warm-up and not counted).
    """
    progress = _Progress(run_dir)
    try:
        return _run(cfg, run_dir, prepared, tokenizer, steps, progress)
    finally:
        progress.close()


def _run(
    cfg: RunConfig,
    run_dir: RunDir | str | None,
    prepared: Any,
    tokenizer: Any,
    steps: int,
    progress: _Progress,
) -> Preflight:
    from affiner.runner.data import prepare_data
    from affiner.runner.training.modeling import load_tokenizer, resolve_device, resolve_precision

    progress(PREFLIGHT_LOAD)
    device = resolve_device(cfg.training.device)
    precision = resolve_precision(cfg.training.precision, device)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    data = prepared if prepared is not None else prepare_data(cfg, tokenizer)
    first_micro, first_accum = cfg.training.micro_batch, cfg.training.grad_accum
    micro, accum = first_micro, first_accum
    notes: list[str] = []
    while True:
        try:
            token = _REPORTER.set(progress)
            try:
                measured = _measure(cfg, data, tokenizer, device, precision, micro, accum, steps)
            finally:
                _REPORTER.reset(token)
            break
        except _OutOfMemory as oom:
            stage = f"{oom.stage} ({oom.detail})" if oom.detail else oom.stage
            if _ranks() > 1:  # one rank cannot halve its batch alone: the layout is refused
                raise AffinerError(
                    f"Out of memory in the pre-flight check on rank {_rank()} ({stage}) at "
                    f"micro_batch {micro}.",
                    hint="Lower [training].micro_batch (raise grad_accum to keep the effective "
                    'batch), turn on gradient_checkpointing, or shard more: strategy = "fsdp".',
                    where="[training].micro_batch",
                ) from None
        # Freed here, out of the except block: while an exception is being handled, its
        # traceback keeps the failed attempt's frames (and the model in them) alive.
        _free_memory()
        if micro <= 1:
            raise AffinerError(
                f"The run does not fit in memory even at micro_batch 1 (out of memory in {stage}).",
                hint="Shorten [data].max_seq_len, turn on gradient_checkpointing, or use qlora.",
                where="[training].micro_batch",
            )
        notes.append(
            f"out of memory in {stage} at micro_batch {micro}; trying {micro // 2} "
            f"with grad_accum {accum * 2}"
        )
        micro, accum = micro // 2, accum * 2
    if device == "cuda":
        import torch

        # The run that follows in this process reports its own peak, not the pre-flight's.
        torch.cuda.reset_peak_memory_stats()
    adjusted = micro != first_micro
    rank_peaks: list[int] = []
    if _ranks() > 1:  # every rank's own peak, by rank; the run's is the largest
        from affiner.runner.training.ranks import gather_objects

        rank_peaks = [int(peak) for peak in gather_objects(measured.peak_bytes)]
        measured.peak_bytes = max(rank_peaks)
    event = Preflight(
        device=measured.device_name,
        measured_peak_bytes=measured.peak_bytes,
        predicted_peak_bytes=cfg.plan.predicted_peak_bytes,
        measured_step_seconds=measured.step_seconds,
        predicted_step_seconds=cfg.plan.predicted_step_seconds,
        eval_peak_bytes=measured.eval_peak_bytes,
        save_ok=True,
        micro_batch=micro,
        grad_accum=accum,
        adjusted=adjusted,
        seq_len=measured.seq_len,
        notes=notes + measured.notes,
        from_micro_batch=first_micro,
        from_grad_accum=first_accum,
        rank_peaks=rank_peaks,
    )
    cfg.training.micro_batch, cfg.training.grad_accum = micro, accum
    cfg.plan.measured_peak_bytes = measured.peak_bytes
    cfg.plan.measured_step_seconds = measured.step_seconds
    if run_dir is not None and _rank() == 0:
        rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
        with EventWriter(rd.path) as writer:
            writer.write(event)
            if adjusted:
                writer.write(
                    Warning_(
                        code="preflight_adjusted",
                        message=(
                            f"micro_batch {first_micro} x grad_accum {first_accum} did not fit; "
                            f"using {micro} x {accum} (same effective batch)."
                        ),
                        action="none",
                    )
                )
        write_back(rd, micro=micro, accum=accum, event=event)
    return event


def _ranks() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def write_back(rd: RunDir, *, micro: int, accum: int, event: Preflight) -> None:
    """Record the measured figures (and the batch that fits) in the run's ``run.toml``.

    The file is updated from its raw TOML, so relative paths stay relative.
    """
    from affiner.runner.config import config_from_dict, read_raw_config, save_config

    if not rd.config.exists():
        return
    data = read_raw_config(rd.config)
    plan = data.setdefault("plan", {})
    plan["measured_peak_bytes"] = int(event.measured_peak_bytes)
    plan["measured_step_seconds"] = round(float(event.measured_step_seconds), 4)
    training = data.setdefault("training", {})
    training["micro_batch"], training["grad_accum"] = micro, accum
    save_config(config_from_dict(data, source=str(rd.config)), rd.config)


def _longest_rows(dataset: Any, count: int, repeat: int) -> Any:
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: max(1, count)]
    while len(order) < count:  # fewer rows than a micro-batch: reuse the longest
        order.append(order[len(order) % len(order)])
    return dataset.select(order * repeat), lengths[order[0]]


def _measure(
    cfg: RunConfig,
    data: Any,
    tokenizer: Any,
    device: str,
    precision: Any,
    micro: int,
    accum: int,
    steps: int,
) -> _Measured:
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from affiner.runner.training.batching import decide_batching, trainer_arguments
    from affiner.runner.training.callbacks import CountingTrainer
    from affiner.runner.training.metrics import make_compute_metrics, preprocess_logits_for_metrics
    from affiner.runner.training.modeling import load_model
    from affiner.runner.training.sampler import peak_rss_bytes
    from affiner.runner.training.setup import build_collator, build_training_args

    cuda = device == "cuda"
    # each rank takes its share of the rows: every one of them gets the longest
    train_rows, seq_len = _longest_rows(data.train, micro, steps * accum * _ranks())
    eval_source = data.eval if data.eval is not None and len(data.eval) else data.train
    eval_rows, _ = _longest_rows(eval_source, micro, 1)
    classification = cfg.model.task == "classification"
    step_ends: list[float] = []

    progress = _REPORTER.get() or _Progress(None)
    total = steps * accum
    micro_batches = [0]

    class _Timer(TrainerCallback):
        def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            micro_batches[0] += 1
            progress(PREFLIGHT_TRAIN, micro_batches[0], total, len(step_ends), often=True)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())
            micro_batches[0] = len(step_ends) * accum
            progress(PREFLIGHT_TRAIN, micro_batches[0], total, len(step_ends))

    if cuda:
        _free_memory()
        torch.cuda.reset_peak_memory_stats()
    oom: _OutOfMemory | None = None
    with tempfile.TemporaryDirectory(prefix="affiner-preflight-") as tmp:
        stage = "loading the model"
        progress(PREFLIGHT_LOAD)
        try:
            loaded = load_model(
                cfg, tokenizer, device=device, precision=precision, labels=list(data.labels or [])
            )
            batching = decide_batching(cfg, loaded.model, device)
            args = build_training_args(
                cfg,
                output_dir=Path(tmp),
                device=device,
                precision=precision,
                has_eval=False,
                max_steps=steps,
                per_device_train_batch_size=micro,
                per_device_eval_batch_size=micro,
                gradient_accumulation_steps=accum,
                save_strategy="no",
                logging_strategy="no",
                logging_first_step=False,
                warmup_steps=0,
                **trainer_arguments(batching),
            )
            trainer = CountingTrainer(
                model=loaded.model,
                args=args,
                train_dataset=train_rows,
                data_collator=build_collator(cfg, tokenizer, device, packing=batching.packing),
                processing_class=tokenizer,
                compute_metrics=make_compute_metrics(len(data.labels)) if classification else None,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics
                if classification
                else None,
                callbacks=[_Timer()],
                packing=batching.packing,
                causal_lm=not classification,
            )
            trainer.remove_callback(PrinterCallback)
            stage = "training"
            progress(PREFLIGHT_TRAIN, 0, total, 0)
            started = time.perf_counter()
            trainer.train()
            train_peak = _peak_bytes(cuda)
            stage = "evaluation"
            progress(PREFLIGHT_EVAL)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer.evaluate(eval_dataset=eval_rows)
            eval_peak = _peak_bytes(cuda)
            stage = "saving a checkpoint"
            progress(PREFLIGHT_SAVE)
            trainer.save_model(str(Path(tmp) / "checkpoint"))
            if trainer.optimizer is not None:
                # every rank saves its optimizer state; only rank 0 wrote the folder's weights
                (Path(tmp) / "checkpoint").mkdir(parents=True, exist_ok=True)
                torch.save(
                    trainer.optimizer.state_dict(), Path(tmp) / "checkpoint" / "optimizer.pt"
                )
        except Exception as exc:
            if is_disk_full(exc):  # the test checkpoint: said plainly, not as torch says it
                what = "the pre-flight's test checkpoint"
                raise DiskFullError(tmp, None, free_bytes(tmp), what) from exc
            if not is_oom(exc):
                raise
            # The traceback's frames (trainer.train() and below) hold the model, gradients
            # and optimizer state; clear them, and raise only after leaving this block.
            traceback.clear_frames(exc.__traceback__)
            oom = _OutOfMemory(stage, _first_line(exc))
        finally:
            trainer = loaded = None  # release the model before the next attempt
    _free_memory()
    if oom is not None:
        raise oom
    times = [b - a for a, b in zip([started, *step_ends], step_ends, strict=False)]
    step_seconds = statistics.median(times[1:]) if len(times) > 1 else (times[0] if times else 0.0)
    notes = []
    context, context_note = cuda_context_bytes() if cuda else (None, "")
    if context_note:
        notes.append(context_note)
    peak = max(train_peak, eval_peak or 0) + (context or 0)
    if not cuda:
        peak = peak_rss_bytes() or train_peak
        notes.append("CPU: the peak is the process's peak resident memory")
    name = torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else "cpu"
    return _Measured(peak, step_seconds, eval_peak, seq_len, name, notes)


def _peak_bytes(cuda: bool) -> int:
    import torch

    from affiner.runner.training.sampler import peak_rss_bytes

    if cuda:
        return int(torch.cuda.max_memory_reserved())
    return peak_rss_bytes() or 0


def cuda_context_bytes() -> tuple[int | None, str]:
    """Memory this process holds on its GPU beyond torch's allocator (CUDA context, cuBLAS).

    NVML lists processes by PID on NVML's device, which is not torch's index under
    CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER, so the device is found by UUID. Inside a
    container NVML reports host PIDs that never equal ``os.getpid()``; when this process is
    then the only one on the GPU, that entry is taken as ours. Returns the bytes (None when
    unknown) and a note for the pre-flight event (empty when the figure is exact).
    """
    import os

    import torch

    from affiner.runner.training.sampler import nvml_handle_for_torch_device

    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:
        return None, f"NVML unavailable ({error}): the CUDA context is not in the peak"
    try:
        handle = nvml_handle_for_torch_device(pynvml, torch.cuda.current_device())
        if handle is None:
            return None, "NVML could not find this GPU: the CUDA context is not in the peak"
        processes = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
        mine = [p for p in processes if int(p.pid) == os.getpid()]
        note = ""
        if not mine and len(processes) == 1:
            mine = processes
            note = "NVML shows host PIDs here; the only process on the GPU was taken as this one"
        used = mine[0].usedGpuMemory if mine else None
        if used is None:
            why = "NVML does not say" if mine else "NVML does not list this process"
            return (
                None,
                f"{why} how much memory this process holds (a container or MIG?): the CUDA context is not in the peak",
            )
        return max(0, int(used) - int(torch.cuda.memory_reserved())), note
    except Exception as error:  # NVMLError_NoPermission, NotSupported under MIG, ...
        return None, f"NVML refused the process list ({error}): the CUDA context is not in the peak"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
