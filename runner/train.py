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

Out of memory in training, evaluation or saving is not the end: the recipe halves the
micro-batch and doubles gradient accumulation (`affiner.runner.training.OomBackoff`), writes
the new batch into ``run.toml``, frees the model and builds the Trainer again, and goes on from
the last checkpoint with the Trainer's own resume, in this process, with a warning event
(``oom_backoff``); after two back-offs it fails with what to change. A full disk
(`affiner.runner.run.diskspace.DiskFullError`, checked before each checkpoint) fails the run
with "no space left on <mount> (needed ~X, free Y)", the previous checkpoint intact.

``status.json``'s message follows the phase (`affiner.runner.run.phases`); warnings a resumed
attempt would repeat word for word (the data's, the precision's) are written once.

Return values (the worker's exit codes): 0 finished (early stopping included), 1 failed
(NaN/inf loss, out of memory after the back-offs, a full disk, a crash), 2 the configuration
or data cannot be used (nothing trained), 3 stopped on request (SIGTERM/SIGINT) with a
checkpoint saved, resumable.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import traceback
from collections.abc import Callable
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
from affiner.runner.run.diskspace import DiskFullError, free_bytes, is_disk_full
from affiner.runner.run.phases import PREFLIGHT, TRAIN, phase_words

EXIT_FINISHED, EXIT_FAILED, EXIT_USER_ERROR, EXIT_STOPPED = 0, 1, 2, 3


def run_training(
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    callbacks: list[Any] | None = None,
    on_end: Callable[[Any], None] | None = None,
) -> int:
    """Train the run in `run_dir` (its ``run.toml``) in this process; returns an exit code.

    Args:
        run_dir: the run folder.
        resume: continue from the newest complete checkpoint in ``checkpoints/``.
        callbacks: extra TrainerCallbacks (tests use them to inject faults).
        on_end: called with the attempt as it ends (a rank records its step and reason).
    """
    from affiner.runner.run.distributed import run_pid

    rd = RunDir(Path(run_dir).resolve())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        writer = EventWriter(rd.path) if rank0 else None
        status = read_status(rd.path) or RunStatus(run_id=rd.run_id)
        # the run's process is the one `affiner stop` signals: a multi-process run's supervisor
        status.state, status.pid, status.message = "starting", run_pid(), ""
        status.started = status.started or time.time()
        _status(rd, status, rank0)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        # Not even status.json fits: say so where the launcher looks (train.log) and leave.
        _say(f"error: {DiskFullError(rd.path, None, free_bytes(rd.path), 'the run status')}")
        return EXIT_FAILED

    from affiner.runner.training import StopRequest

    stop = StopRequest()
    stop.install()
    run = _Run(rd, writer, status, rank0, stop, list(callbacks or []))
    try:
        return run.execute(resume)
    except DiskFullError as exc:
        return run.disk_full(exc)
    except AffinerError as exc:
        return run.fail(str(exc), code="config", exit_code=EXIT_USER_ERROR)
    except Exception as exc:
        if is_disk_full(exc):  # a write outside a checkpoint: the event log, status.json, best/
            print(f"{type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
            return run.disk_full(DiskFullError(rd.path, None, free_bytes(rd.path)))
        traceback.print_exc()  # the worker's stdout/stderr is train.log
        code, message = _describe_crash(exc, run.step)
        return run.fail(message, code=code, exit_code=EXIT_FAILED)
    finally:
        if on_end is not None:
            on_end(run)
        run.cleanup()
        stop.restore()
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
        _flush_log()


def _say(line: str) -> None:
    """One line on stderr (train.log for the worker), flushed now."""
    print(line, file=sys.stderr)
    _flush_log()


def _flush_log() -> None:
    """Flush train.log whole: stdout is block-buffered into it, and what stays in the buffer
    when the process ends on a full disk is lost (a log cut at 4096 bytes)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # still no room, or a closed stream
            stream.flush()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _status(rd: RunDir, status: RunStatus, rank0: bool) -> None:
    if rank0:
        write_status(rd.path, status)


def _log_name() -> str:
    """Where this process's traceback goes: train.log, or a rank's own log (ranks 1 and up)."""
    rank = int(os.environ.get("RANK", "0") or 0)
    return "train.log" if rank == 0 else f"ranks/rank-{rank}.log"


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
    if _is_collective_timeout(text):
        return "collective_timeout", (
            f"At step {step} this rank waited longer than [distributed].timeout_minutes for the "
            "others in a collective: another rank stopped answering (its log says why), or a "
            f"step or save takes longer than the timeout ({_first_line(exc)[:160]}; traceback in "
            f"{_log_name()}). Raise timeout_minutes if a checkpoint of this size is slow."
        )
    return (
        "crash",
        f"Training crashed at step {step}: {type(exc).__name__}: {text} (traceback in {_log_name()})",
    )


def _is_collective_timeout(text: str) -> bool:
    """NCCL's watchdog or gloo gave up waiting for the other ranks (``ddp_timeout``)."""
    low = text.lower()
    waited = "timed out" in low or "timeout" in low
    return (
        int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
        and waited
        and any(
            word in low for word in ("watchdog", "collective", "gloo", "nccl", "recv", "allreduce")
        )
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
        self.loaded: Any = None
        self.sampler: Any = None
        self.events: Any = None
        self.train_seconds: float | None = None
        #: the model is being loaded (an out-of-memory then is not one a smaller batch fixes)
        self.loading = False
        self.base_evaluated = False
        #: the run's configuration and prepared data, once read (the model card needs them)
        self.cfg: RunConfig | None = None
        self.data: Any = None
        #: whether the tokenizer has a chat template (the card's snippet asks as training did)
        self.chat_template = False
        self._last_step = 0
        #: why the attempt failed, in the words of its error event ("" until it fails)
        self.end_reason = ""
        #: the memory readings every rank sends rank 0 (a multi-process run only)
        self.rank_memory: Any = None
        #: (code, message) of the warnings already in the log: a resume does not repeat them
        self._logged_warnings: set[tuple[str, str]] | None = None

    @property
    def step(self) -> int:
        """The optimizer steps done: the Trainer's once it has trained (before that, and once it
        has been let go, the step resumed from or the last one it reached)."""
        if self.trainer is not None and self.trainer.state.global_step:
            self._last_step = int(self.trainer.state.global_step)
        return self._last_step

    def emit(self, event: Any) -> None:
        if self.writer is not None:
            self.writer.write(event)

    def _batching_notes(self, batching: Any) -> None:
        """Each place the run could not pack or fuse as its defaults say, as one warning."""
        for note in batching.notes:
            self.emit_once(Warning_(code="batching", message=note[:1].upper() + note[1:] + "."))

    def emit_once(self, warning: Warning_) -> None:
        """Write `warning` unless the log already holds the same one (an earlier attempt's)."""
        if self._logged_warnings is None:
            from affiner.runner.run.events import iter_event_dicts

            self._logged_warnings = {
                (str(e.get("code")), str(e.get("message")))
                for e in iter_event_dicts(self.rd.path)
                if e.get("type") == Warning_.type
            }
        key = (warning.code, warning.message)
        if key not in self._logged_warnings:
            self._logged_warnings.add(key)
            self.emit(warning)

    def enter(self, phase: str, *, step: int = 0, event: bool = True) -> None:
        """A phase begins: its ``progress`` event, and ``status.json``'s message in its words."""
        if event:
            self.emit(Progress(step=step, phase=phase))
        self.status.message = phase_words(phase, step)[0]
        _status(self.rd, self.status, self.rank0)

    # ------------------------------------------------------------------ the recipe
    def execute(self, resume: bool) -> int:
        from transformers import set_seed

        from affiner.runner.config import load_config
        from affiner.runner.data import prepare_data
        from affiner.runner.run.checkpoints import (
            latest_checkpoint,
            read_settings_record,
            remove_partial_checkpoints,
        )
        from affiner.runner.training import (
            OomAt,
            OomBackoff,
            changed_settings,
            free_accelerator_memory,
            is_oom,
            load_tokenizer,
            memory_settings,
            resolve_device,
            resolve_precision,
            run_preflight,
            should_preflight,
            world_size,
            write_batch,
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
            on_note=lambda note: self.emit_once(Warning_(code="gpu", message=note, step=0)),
        )
        set_seed(cfg.training.seed)
        if self.rank0:
            write_versions(rd)
            write_command(rd)
            remove_partial_checkpoints(rd.checkpoints)  # a save a kill or full disk cut short
        found = latest_checkpoint(rd) if resume else None
        checkpoint = found[1] if found else None
        resumed_from = None
        if resume:
            resumed_from = found[0] if found else 0
            self._last_step = resumed_from  # what the run holds until a Trainer says more
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
            self.emit_once(Warning_(code="precision", message=f"Precision: {precision.note}."))
        tokenizer = load_tokenizer(cfg)

        # -- data
        self.enter(PREPARE_DATA)
        data = prepare_data(cfg, tokenizer)
        self._data_warnings(data)
        self.cfg, self.data = cfg, data
        self.chat_template = bool(getattr(tokenizer, "chat_template", None))
        if self.rank0:
            self._record_labels(cfg, data)

        # -- pre-flight (a long run measures what fits before committing to it; a resume
        # does again when its settings differ from those its checkpoint was made with)
        # (single-process runs only: ranks of a distributed run would each measure alone)
        changed = changed_settings(
            read_settings_record(checkpoint) if checkpoint else None, memory_settings(cfg)
        )
        if should_preflight(
            cfg,
            len(data.train),
            resuming=checkpoint is not None,
            changed=changed,
            world_size=world_size(),
        ):
            if changed:
                self.emit(
                    Warning_(
                        code="settings_changed",
                        message=(
                            f"Settings changed since the checkpoint of step {resumed_from} "
                            f"({'; '.join(changed)}): the pre-flight measures them first."
                        ),
                        action="none",
                    )
                )
            self.enter(PREFLIGHT, event=False)
            run_preflight(cfg, run_dir=rd, prepared=data, tokenizer=tokenizer)
            gc.collect()

        # -- model, trainer, train: again from the last checkpoint after an out-of-memory,
        # with half the micro-batch and twice the accumulation
        backoff = OomBackoff.starting_at(cfg.training.micro_batch, cfg.training.grad_accum)
        while True:
            oom: OomAt | None = None
            try:
                self._train(cfg, data, tokenizer, device, precision, checkpoint, resumed_from)
            except Exception as exc:
                if not is_oom(exc) or self.loading or world_size() != 1:
                    raise  # a smaller batch does not help loading; ranks cannot back off alone
                # The traceback's frames hold the model, its gradients and the optimizer.
                traceback.clear_frames(exc.__traceback__)
                phase = self.events.phase if self.events is not None else TRAIN
                oom = OomAt(phase, self.step, _first_line(exc))
            if oom is None:
                break
            # Out of the except block: its traceback would keep the failed attempt alive.
            self._release()
            free_accelerator_memory()
            old = backoff.current
            if backoff.next() is None:
                return self.fail(backoff.give_up(oom), code="oom", exit_code=EXIT_FAILED)
            cfg.training.micro_batch = backoff.current.micro_batch
            cfg.training.grad_accum = backoff.current.grad_accum
            if self.rank0:
                remove_partial_checkpoints(rd.checkpoints)
                write_batch(rd.path, backoff.current)
            found = latest_checkpoint(rd)
            checkpoint = found[1] if found else None
            resumed_from = found[0] if found else 0
            said = f"affiner: {backoff.message(oom, old, resumed_from)} ({oom.detail[:200]})"
            print(said, file=sys.stderr, flush=True)
            self.emit(
                Warning_(
                    code="oom_backoff",
                    step=resumed_from,  # kept by the resume rule: the attempt after it goes on
                    message=backoff.message(oom, old, resumed_from),
                    action="none",
                )
            )

        # -- save
        events = self.events
        if events.failure:
            return self.finish("failed", events.failure, EXIT_FAILED)
        stopped = self.stop.requested
        stop_message = (
            f"Stopped on {self.stop.signal_name} at step {self.step}; resume to continue."
        )
        if world_size() > 1:
            # every rank takes part: a sharded model is gathered whole by all of them
            self.trainer.save_model(str(rd.adapter))
        if self.rank0:
            self.enter(SAVE_OUTPUTS, step=self.step)
            self._save_outputs(
                cfg,
                self.loaded,
                data,
                device,
                precision,
                state="stopped" if stopped else "finished",
                message=stop_message if stopped else "",
            )
        if stopped:
            return self.finish("stopped", stop_message, EXIT_STOPPED)
        message = (
            "Stopped early: the eval loss stopped improving."
            if events.early_stopped
            else "Training finished."
        )
        return self.finish("finished", message, EXIT_FINISHED)

    def _train(
        self,
        cfg: RunConfig,
        data: Any,
        tokenizer: Any,
        device: str,
        precision: Any,
        checkpoint: Path | None,
        resumed_from: int | None,
    ) -> None:
        """One attempt: load the model, build the Trainer, train from `checkpoint` (or step 0)."""
        from transformers import PrinterCallback

        from affiner.runner.run import read_log_history
        from affiner.runner.training import (
            CountingTrainer,
            EventCallback,
            RunInfo,
            SystemSampler,
            TokenCounter,
            build_collator,
            build_training_args,
            decide_batching,
            load_model,
            make_compute_metrics,
            memory_settings,
            preprocess_logits_for_metrics,
            trainer_arguments,
            world_size,
        )

        rd = self.rd
        train_ds, eval_ds = data.train, data.eval  # [eval].max_rows is applied by prepare_data
        has_eval = eval_ds is not None and len(eval_ds) > 0
        self._last_step = resumed_from or 0
        self.enter(LOAD_MODEL)
        self.loading = True
        self.loaded = load_model(
            cfg, tokenizer, device=device, precision=precision, labels=list(data.labels or [])
        )
        self.loading = False
        classification = cfg.model.task == "classification"
        batching = decide_batching(cfg, self.loaded.model, device)
        self._batching_notes(batching)
        args = build_training_args(
            cfg,
            output_dir=rd.checkpoints,
            device=device,
            precision=precision,
            has_eval=has_eval,
            **trainer_arguments(batching),
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
                packing=batching.packing,
                loss_kernel=batching.loss_kernel,
                loss_positions=batching.loss_positions,
                world_size=world_size(),
                nodes=cfg.distributed.nodes if world_size() > 1 else 1,
                strategy=cfg.distributed.strategy if world_size() > 1 else None,
            ),
            tokens=tokens,
            stop=self.stop,
            overfit_patience=cfg.eval.overfit_patience,
            early_stopping_patience=cfg.eval.early_stopping_patience,
            history=read_log_history(checkpoint) if checkpoint else None,
            world_size=world_size(),
        )
        self.trainer = CountingTrainer(
            model=self.loaded.model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds if has_eval else None,
            data_collator=build_collator(
                cfg,
                tokenizer,
                device,
                packing=batching.packing,
                loss_positions=batching.loss_positions,
            ),
            processing_class=tokenizer,
            compute_metrics=make_compute_metrics(len(data.labels)) if classification else None,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics if classification else None,
            callbacks=[*self._rank_callbacks(cfg), self.events, *self.extra],
            token_counter=tokens,
            settings_record=memory_settings(cfg),
            packing=batching.packing,
            causal_lm=not classification,
        )
        self.trainer.remove_callback(PrinterCallback)  # the event log replaces printed dicts
        if self.writer is not None and self.sampler is None:
            tag = (0, 0) if world_size() > 1 else None  # rank 0's own readings, tagged as such
            self.sampler = SystemSampler(
                self.writer, interval=5.0, step=lambda: self.step, rank_node=tag
            )
            self.sampler.start()
        if self.rank0:  # hours of training that end at the first save on a full disk: say so now
            self.trainer.check_checkpoint_space("the run's checkpoints")

        # -- train
        if cfg.eval.at_start and has_eval and checkpoint is None and not self.base_evaluated:
            self.trainer.evaluate()  # the base model's numbers, as the eval event of step 0
            self.base_evaluated = True
        self.enter(TRAIN, step=resumed_from or 0, event=False)
        started = time.time()
        try:
            self.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            self.train_seconds = (self.train_seconds or 0.0) + time.time() - started

    def _rank_callbacks(self, cfg: RunConfig) -> list[Any]:
        """A multi-process run's collectives at each step's end (`affiner.runner.training.ranks`):
        the agreed stop first (before `EventCallback` acts on it), then each rank's memory."""
        from affiner.runner.run.distributed import this_rank
        from affiner.runner.training import world_size
        from affiner.runner.training.ranks import RankMemory, StopAgreement

        if world_size() <= 1:
            return []
        if self.rank_memory is None:
            self.rank_memory = RankMemory(self.writer, node=this_rank().node)
        return [StopAgreement(self.stop), self.rank_memory]

    def _release(self) -> None:
        """Let go of the failed attempt's Trainer and model (the optimizer state goes with it)."""
        if self.trainer is not None:
            self._last_step = int(self.trainer.state.global_step)
            self.trainer.model = self.trainer.model_wrapped = None
            self.trainer.optimizer = self.trainer.lr_scheduler = None
        self.trainer = self.loaded = None
        gc.collect()

    # ------------------------------------------------------------------ saving
    def _save_outputs(
        self,
        cfg: RunConfig,
        loaded: Any,
        data: Any,
        device: str,
        precision: Any,
        *,
        state: str,
        message: str,
    ) -> None:
        from affiner.runner.training import world_size

        rd = self.rd
        if world_size() == 1:
            self.trainer.save_model(str(rd.adapter))
        loaded.tokenizer.save_pretrained(str(rd.adapter))
        merged = False
        if cfg.output.merge and cfg.uses_lora:
            merged = self._merge(cfg, loaded, device, precision, list(data.labels or []))
        self._write_card(state, message, adapter_step=self.step, merged=merged)

    def _write_card(
        self, state: str, message: str, *, adapter_step: int | None, merged: bool = False
    ) -> None:
        """The model card, from what this run found: its data report, the evaluations its event
        log keeps (the resume rule applied) and the checkpoints it kept."""
        from affiner.runner.run import read_events
        from affiner.runner.run.events import EvalResult, effective_events
        from affiner.runner.training import CardFacts, write_model_card
        from affiner.runner.training.base_model import has_trained_head

        cfg, data, loaded = self.cfg, self.data, self.loaded
        report = data.report
        best = self.events.best.best if self.events is not None else None
        trainer_state = self.trainer.state if self.trainer is not None else None
        facts = CardFacts(
            state=state,
            steps=self.step,
            train_rows=len(data.train),
            eval_rows=len(data.eval) if data.eval is not None else 0,
            total_steps=int(trainer_state.max_steps) if trainer_state else None,
            message=message,
            adapter_step=adapter_step,
            data_format=data.format,
            rows_read=dict(report.rows_read),
            duplicates_removed=dict(report.duplicates_removed),
            dropped=report.dropped,
            leaked=report.leaked,
            eval_source=report.eval_source,
            train_tokens=report.train_tokens.total,
            trainable_params=loaded.trainable_params if loaded else 0,
            total_params=loaded.total_params if loaded else 0,
            device=loaded.device if loaded else "",
            precision=loaded.precision.name if loaded else "",
            train_seconds=self.train_seconds,
            evals=[
                e for e in effective_events(read_events(self.rd.path)) if isinstance(e, EvalResult)
            ],
            best_eval_loss=best.eval_loss if best else None,
            best_step=best.step if best else None,
            labels=list(data.labels or []),
            chat_template=self.chat_template,
            merged=merged,
            base_head_trained=(
                has_trained_head(cfg.model.name_or_path)
                if cfg.model.task == "classification"
                else None
            ),
        )
        write_model_card(self.rd, cfg, facts)

    def _record_labels(self, cfg: RunConfig, data: Any) -> None:
        """Write the class names training found in the data into the run's ``run.toml``.

        Without them there, only this process knows which class id is which: the playground,
        `ChatSession`, a resumed attempt and a reader of the run folder would see ``LABEL_0``.
        The run's own copy of ``run.toml`` is written (never the user's file it came from).
        """
        from affiner.runner.config.io import set_config_values

        if cfg.model.task != "classification" or not data.labels or cfg.data.labels:
            return
        if self.rd.config.exists():
            set_config_values(self.rd.config, "data", {"labels": list(data.labels)})
        cfg.data.labels = list(data.labels)

    def _merge(
        self, cfg: RunConfig, loaded: Any, device: str, precision: Any, labels: list[str]
    ) -> bool:
        """Fold the adapter into the base and save it to ``merged/`` (`merge_adapter`).

        A quantized base cannot hold merged weights, so for QLoRA/8-bit runs the base is
        loaded again unquantized (compute dtype) and the saved adapter applied to it; so is a
        sharded run's (FSDP, ZeRO-3), whose rank 0 holds only its shard of the weights.
        """
        from affiner.runner.training import merge_adapter, save_merged, world_size

        model = self.trainer.model
        sharded = world_size() > 1 and cfg.distributed.strategy in ("fsdp", "zero3")
        if loaded.quantized or sharded:
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
        """The data report's warnings become warning events, in the words the pre-launch check
        printed (`affiner.runner.data.notices`), plus the tokenizer's truncation count; once: a
        resume reads the same data and would say the same again."""
        for warning in data.report.warnings:
            self.emit_once(
                Warning_(code=warning.code, message=warning.message, action=warning.action)
            )

    # ------------------------------------------------------------------ endings
    def finish(self, state: str, message: str, exit_code: int) -> int:
        if self.sampler is not None:
            self.sampler.stop()  # its last sample (the run's whole peak) lands before the end
        if state == "failed":
            self._failed_card(message)
        best = self.events.best.best if self.events is not None else None
        self._last_words(
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
        try:
            _status(self.rd, self.status, self.rank0)
        except OSError as exc:  # the disk is still full: train.log is the last place left
            _say(f"affiner: could not write status.json ({exc}); the run {state}: {message}")
        return exit_code

    def _failed_card(self, message: str) -> None:
        """A run that failed once training began says so in its card (a card an earlier,
        stopped attempt wrote would otherwise still describe its weights as the result)."""
        if not self.rank0 or self.cfg is None or self.data is None or self.events is None:
            return  # nothing trained: the run's error is all there is to say
        try:
            self._write_card("failed", message, adapter_step=None)
        except Exception as exc:  # the card must never hide the failure it reports
            _say(f"affiner: could not write the model card ({type(exc).__name__}: {exc})")

    def fail(self, message: str, *, code: str, exit_code: int) -> int:
        self.end_reason = f"{code}: {message}"[:400]
        self._last_words(Error(code=code, message=message, step=self.step))
        return self.finish("failed", message, exit_code)

    def _last_words(self, event: Any) -> None:
        """Write an ending's event; on a disk that is still full, train.log has to do."""
        try:
            self.emit(event)
        except OSError as exc:
            _say(f"affiner: could not write the {event.type} event ({exc})")

    def disk_full(self, exc: DiskFullError) -> int:
        """End on a full disk: the cut-short save removed (the previous checkpoint stays the
        one to resume from), the reason on stderr, status failed, train.log flushed whole."""
        from affiner.runner.run.checkpoints import latest_checkpoint, remove_partial_checkpoints

        if self.rank0:
            remove_partial_checkpoints(self.rd.checkpoints)  # first: it gives the log room
        cause = exc.__cause__
        if cause is not None:  # the library's own words, for whoever reads train.log
            _say(f"affiner: the write failed with {type(cause).__name__}: {_first_line(cause)}")
        kept = latest_checkpoint(self.rd)
        then = (
            f"the checkpoint of step {kept[0]} is kept: free space, then "
            f"`affiner train --resume {self.rd.run_id}`"
            if kept
            else "no checkpoint was saved yet: free space, then start the run again"
        )
        where = exc.message
        if "step" not in where and self.step:
            where += f" at step {self.step}"
        message = f"{where}; {then}."
        _say(f"error: {message}")
        return self.fail(message, code="disk_full", exit_code=EXIT_FAILED)

    def cleanup(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.rank_memory is not None:
            self.rank_memory.close()
        gc.collect()
