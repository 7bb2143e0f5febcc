"""The training recipe: one run folder in, a fine-tuned model and a full event log out.

Read it top to bottom: setup (config, events, signals, versions), data, model, trainer, train,
save (adapter or full model, optional merge, tokenizer, model card), cleanup. Everything the
screens see goes through `affiner.runner.run.events`; everything the user asked for comes from
``run.toml``. This is the only module that trains, and it runs in-process: the detached
worker (`affiner.runner.worker`) is a thin shell around `run_training`.

Resuming continues from the newest complete checkpoint exactly where it stopped (optimizer,
scheduler, RNG and data order are the Trainer's) and appends to the same ``events.jsonl``
after a ``run_started`` that carries ``resumed_from_step`` (the rule readers apply is
`affiner.runner.run.events.effective_events`).

Return values (the worker's exit codes): 0 finished (early stopping included), 1 failed
(NaN/inf loss, out of memory, a crash), 2 the configuration or data cannot be used (nothing
trained), 3 stopped on request (SIGTERM/SIGINT) with a checkpoint saved, resumable.
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.config import RunConfig
from affiner.runner.run import (
    LOAD_MODEL,
    PREPARE_DATA,
    SAVE_OUTPUTS,
    Error,
    EventWriter,
    Progress,
    RunDir,
    RunFinished,
    RunStatus,
    Warning_,
    read_status,
    write_status,
)

EXIT_FINISHED, EXIT_FAILED, EXIT_USER_ERROR, EXIT_STOPPED = 0, 1, 2, 3


def run_training(
    run_dir: str | os.PathLike[str], *, resume: bool = False, callbacks: list[Any] | None = None
) -> int:
    """Train the run in `run_dir` (its ``run.toml``) in this process; returns an exit code.

    Args:
        run_dir: the run folder.
        resume: continue from the newest complete checkpoint in ``checkpoints/``.
        callbacks: extra TrainerCallbacks (tests use them to inject faults).
    """
    rd = RunDir(Path(run_dir).resolve())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    writer = EventWriter(rd.path) if rank0 else None
    status = read_status(rd.path) or RunStatus(run_id=rd.run_id)
    status.state, status.pid, status.message = "starting", os.getpid(), ""
    status.started = status.started or time.time()
    _status(rd, status, rank0)

    from affiner.runner.training import StopRequest

    stop = StopRequest()
    stop.install()
    run = _Run(rd, writer, status, rank0, stop, list(callbacks or []))
    try:
        return run.execute(resume)
    except AffinerError as exc:
        return run.fail(str(exc), code="config", exit_code=EXIT_USER_ERROR)
    except Exception as exc:
        traceback.print_exc()  # the worker's stdout/stderr is train.log
        code, message = _describe_crash(exc, run.step)
        return run.fail(message, code=code, exit_code=EXIT_FAILED)
    finally:
        run.cleanup()
        stop.restore()
        if writer is not None:
            writer.close()


def _status(rd: RunDir, status: RunStatus, rank0: bool) -> None:
    if rank0:
        write_status(rd.path, status)


def _describe_crash(exc: Exception, step: int) -> tuple[str, str]:
    """An error code and a message that says what to try."""
    from affiner.runner.training import is_oom

    text = str(exc)
    if is_oom(exc):
        return "oom", (
            f"Out of memory at step {step}. Lower [training].micro_batch (raise grad_accum to keep "
            "the effective batch), shorten [data].max_seq_len, turn on gradient_checkpointing, "
            "or use method qlora. `affiner preflight` measures what fits."
        )
    return (
        "crash",
        f"Training crashed at step {step}: {type(exc).__name__}: {text} (traceback in train.log)",
    )


class _Run:
    """One attempt at a run; `execute` is the recipe, the rest is bookkeeping."""

    def __init__(
        self,
        rd: RunDir,
        writer: EventWriter | None,
        status: RunStatus,
        rank0: bool,
        stop: Any,
        extra: list[Any],
    ) -> None:
        self.rd, self.writer, self.status, self.rank0 = rd, writer, status, rank0
        self.stop, self.extra = stop, extra
        self.trainer: Any = None
        self.sampler: Any = None
        self.events: Any = None
        self.train_seconds: float | None = None

    @property
    def step(self) -> int:
        return int(self.trainer.state.global_step) if self.trainer is not None else 0

    def emit(self, event: Any) -> None:
        if self.writer is not None:
            self.writer.write(event)

    # ------------------------------------------------------------------ the recipe
    def execute(self, resume: bool) -> int:
        from transformers import PrinterCallback, set_seed

        from affiner.runner.config import load_config
        from affiner.runner.data import prepare_data
        from affiner.runner.run import latest_checkpoint, read_log_history
        from affiner.runner.training import (
            CountingTrainer,
            EventCallback,
            RunInfo,
            SystemSampler,
            TokenCounter,
            build_collator,
            build_training_args,
            is_long_run,
            load_model,
            load_tokenizer,
            make_compute_metrics,
            preprocess_logits_for_metrics,
            resolve_device,
            resolve_precision,
            run_preflight,
            world_size,
            write_command,
            write_versions,
        )

        # -- setup
        rd = self.rd
        cfg = load_config(rd.config)
        # first: pinning a single-process run to one GPU only works before CUDA starts, and
        # recording the versions below asks torch for the GPUs' names
        device = resolve_device(
            cfg.training.device,
            on_note=lambda note: self.emit(Warning_(code="gpu", message=note, step=0)),
        )
        set_seed(cfg.training.seed)
        if self.rank0:
            write_versions(rd)
            write_command(rd)
        found = latest_checkpoint(rd) if resume else None
        checkpoint = found[1] if found else None
        resumed_from = None
        if resume:
            resumed_from = found[0] if found else 0
            if checkpoint is None:
                self.emit(
                    Warning_(
                        code="no_checkpoint",
                        message="No complete checkpoint to resume from: training starts again from step 0.",
                        step=0,
                    )
                )
        precision = resolve_precision(cfg.training.precision, device)
        if precision.note:
            self.emit(Warning_(code="precision", message=f"Precision: {precision.note}."))
        tokenizer = load_tokenizer(cfg)

        # -- data
        self.emit(Progress(phase=PREPARE_DATA))
        data = prepare_data(cfg, tokenizer)
        self._data_warnings(data)
        train_ds, eval_ds = data.train, data.eval  # [eval].max_rows is applied by prepare_data
        has_eval = eval_ds is not None and len(eval_ds) > 0

        # -- pre-flight (a long run measures what fits before committing to it)
        # (single-process runs only: ranks of a distributed run would each measure alone)
        if (
            cfg.training.preflight
            and checkpoint is None
            and world_size() == 1
            and is_long_run(cfg, len(train_ds))
        ):
            self.status.message = "pre-flight check"
            _status(rd, self.status, self.rank0)
            run_preflight(cfg, run_dir=rd, prepared=data, tokenizer=tokenizer)
            gc.collect()

        # -- model
        self.emit(Progress(phase=LOAD_MODEL))
        loaded = load_model(
            cfg, tokenizer, device=device, precision=precision, labels=list(data.labels or [])
        )

        # -- trainer
        classification = cfg.model.task == "classification"
        args = build_training_args(
            cfg, output_dir=rd.checkpoints, device=device, precision=precision, has_eval=has_eval
        )
        tokens = TokenCounter()
        self.events = EventCallback(
            rd,
            self.writer,
            self.status,
            RunInfo(
                run_id=rd.run_id,
                model=cfg.model.name_or_path,
                method=cfg.method.name,
                device=device,
                epochs=cfg.training.epochs,
                train_rows=len(train_ds),
                eval_rows=len(eval_ds) if has_eval else 0,
                predicted_peak_bytes=cfg.plan.predicted_peak_bytes,
                predicted_step_seconds=cfg.plan.predicted_step_seconds,
                num_gpus=world_size() if device == "cuda" else 0,
                resumed_from_step=resumed_from,
            ),
            tokens=tokens,
            stop=self.stop,
            overfit_patience=cfg.eval.overfit_patience,
            early_stopping_patience=cfg.eval.early_stopping_patience,
            history=read_log_history(checkpoint) if checkpoint else None,
            world_size=world_size(),
        )
        self.trainer = CountingTrainer(
            model=loaded.model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds if has_eval else None,
            data_collator=build_collator(cfg, tokenizer, device),
            processing_class=tokenizer,
            compute_metrics=make_compute_metrics(len(data.labels)) if classification else None,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics if classification else None,
            callbacks=[self.events, *self.extra],
            token_counter=tokens,
        )
        self.trainer.remove_callback(PrinterCallback)  # the event log replaces printed dicts
        if self.writer is not None:
            self.sampler = SystemSampler(self.writer, interval=5.0, step=lambda: self.step)
            self.sampler.start()

        # -- train
        if cfg.eval.at_start and has_eval and checkpoint is None:
            self.trainer.evaluate()  # the base model's numbers, as the eval event of step 0
        started = time.time()
        self.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        self.train_seconds = time.time() - started

        # -- save
        events = self.events
        if events.failure:
            return self.finish("failed", events.failure, EXIT_FAILED)
        if self.rank0:
            self.emit(Progress(step=self.step, phase=SAVE_OUTPUTS))
            self._save_outputs(cfg, loaded, data, device, precision)
        if self.stop.requested:
            return self.finish(
                "stopped",
                f"Stopped on {self.stop.signal_name} at step {self.step}; resume to continue.",
                EXIT_STOPPED,
            )
        message = (
            "Stopped early: the eval loss stopped improving."
            if events.early_stopped
            else "Training finished."
        )
        return self.finish("finished", message, EXIT_FINISHED)

    # ------------------------------------------------------------------ saving
    def _save_outputs(
        self, cfg: RunConfig, loaded: Any, data: Any, device: str, precision: Any
    ) -> None:
        from affiner.runner.training import CardFacts, write_model_card

        rd = self.rd
        self.trainer.save_model(str(rd.adapter))
        loaded.tokenizer.save_pretrained(str(rd.adapter))
        merged = False
        if cfg.output.merge and cfg.uses_lora:
            merged = self._merge(cfg, loaded, device, precision, list(data.labels or []))
        best = self.events.best.best
        facts = CardFacts(
            state="stopped" if self.stop.requested else "finished",
            steps=self.step,
            train_rows=len(data.train),
            eval_rows=len(data.eval) if data.eval is not None else 0,
            train_tokens=data.report.train_tokens.total,
            trainable_params=loaded.trainable_params,
            total_params=loaded.total_params,
            device=device,
            precision=precision.name,
            train_seconds=self.train_seconds,
            final_eval=self.events.last_eval,
            best_eval_loss=best.eval_loss if best else None,
            best_step=best.step if best else None,
            labels=list(data.labels or []),
            merged=merged,
        )
        write_model_card(rd, cfg, facts)

    def _merge(
        self, cfg: RunConfig, loaded: Any, device: str, precision: Any, labels: list[str]
    ) -> bool:
        """Fold the adapter into the base and save it to ``merged/`` (`merge_adapter`).

        A quantized base cannot hold merged weights, so for QLoRA/8-bit runs the base is
        loaded again unquantized (compute dtype) and the saved adapter applied to it.
        """
        from affiner.runner.training import merge_adapter, save_merged

        model = self.trainer.model
        if loaded.quantized:
            self.trainer.model = None  # free the quantized copy before loading the base again
            model = None
            gc.collect()
        merged = merge_adapter(
            cfg,
            self.rd.adapter,
            loaded.tokenizer,
            device=device,
            precision=precision,
            labels=labels,
            trained=model,
        )
        save_merged(merged, loaded.tokenizer, self.rd.merged)
        return True

    def _data_warnings(self, data: Any) -> None:
        """Dropped rows, leakage and truncation from the data report become warning events."""
        report = data.report
        if report.dropped:
            reasons = ", ".join(f"{n} {kind}" for kind, n in report.drop_reasons.items())
            examples = "; ".join(report.dropped_examples[:3])
            self.emit(
                Warning_(
                    code="dropped_rows",
                    message=f"{report.dropped} invalid rows left out ({reasons}). {examples}",
                    action="fix the data",
                )
            )
        if report.leaked:
            self.emit(
                Warning_(
                    code="leakage",
                    message=f"{report.leaked} eval rows also appear in the training data and were left out of the evaluation.",
                    action="deduplicate the splits",
                )
            )
        stats = report.train_tokens
        if stats.truncated:
            self.emit(
                Warning_(
                    code="truncation",
                    message=f"{stats.truncated} of {stats.count} training examples are longer than max_seq_len {stats.max_seq_len} and were cut (longest {stats.max}).",
                    action="raise [data].max_seq_len",
                )
            )

    # ------------------------------------------------------------------ endings
    def finish(self, state: str, message: str, exit_code: int) -> int:
        best = self.events.best.best if self.events is not None else None
        self.emit(
            RunFinished(
                state=state,
                step=self.step,
                train_seconds=self.train_seconds,
                best_checkpoint=str(self.rd.best) if best else None,
                best_eval_loss=best.eval_loss if best else None,
                output_dir=str(self.rd.adapter) if self.rd.adapter.exists() else None,
                message=message,
            )
        )
        self.status.state, self.status.message, self.status.step = state, message, self.step
        if best is not None:
            self.status.best_eval_loss = best.eval_loss
        _status(self.rd, self.status, self.rank0)
        return exit_code

    def fail(self, message: str, *, code: str, exit_code: int) -> int:
        self.emit(Error(code=code, message=message, step=self.step))
        return self.finish("failed", message, exit_code)

    def cleanup(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        gc.collect()
