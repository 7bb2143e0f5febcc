"""The Trainer's side of the event log: what happens in training becomes events a screen can read.

`EventCallback` turns the Trainer's hooks into `affiner.runner.run.events` events (written by rank 0 only):

* ``run_started`` when training begins (total steps known by then), with ``resumed_from_step``
  when continuing from a checkpoint (see `affiner.runner.run.events.effective_events` for the rule);
* ``train_log`` at each log: loss, learning rate, gradient norm, tokens/s from the tokens
  actually processed (non-padding, counted by `CountingTrainer` without a per-step host sync),
  and an ETA: this session's pace without its evaluations for the steps left, plus the last
  evaluation's length for each evaluation still to come (`evals_left`);
* ``progress`` through phases that log nothing for minutes: evaluations by batch (``base_eval``
  at step 0, ``eval`` after; at most one event per `PROGRESS_SECONDS`) and checkpoint saves;
* ``eval`` once per evaluation (transformers 5 passes eval metrics to both ``on_evaluate`` and
  ``on_log``; only ``on_evaluate`` writes them), perplexity and classification scores included;
* ``checkpoint`` for every Trainer checkpoint (``best=False``) and each time ``checkpoints/best/``
  receives a better model (``best=True``, path of ``best/``);
* ``warning`` for overfitting (action ``stop``) and early stopping; ``error`` for a NaN/inf loss.

It also steers the run: a NaN/inf loss stops training without saving; early stopping on eval loss
stops it; a SIGTERM/SIGINT (`StopRequest`) saves a checkpoint at the next step end and stops.
Detectors are replayed from the checkpoint's log history on resume, so patience counters go on
where they were. ``status.json``'s message follows the phase (training, an evaluation, a save:
the words of `affiner.runner.run.phases`), so ``affiner runs`` says what the run is doing.

`CountingTrainer` checks the free space before each checkpoint (against the previous
checkpoint's size, or the weights it saves plus the optimizer's state) and turns a save that a
full disk cut short into a `affiner.runner.run.diskspace.DiskFullError`, the cut folder removed
so the previous checkpoint stays the one to resume from.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import Trainer, TrainerCallback

from affiner.runner.run import (
    CLASS_METRICS,
    BestKeeper,
    Checkpoint,
    Error,
    EvalResult,
    EventWriter,
    RunDir,
    RunStarted,
    RunStatus,
    TrainLog,
    Warning_,
    checkpoint_folder,
    clean_number,
    write_status,
)
from affiner.runner.run.checkpoints import BestInfo, complete_checkpoints_in, write_settings_record
from affiner.runner.run.diskspace import (
    DiskFullError,
    check_space,
    estimate_checkpoint_bytes,
    expected_checkpoint_bytes,
    free_bytes,
    is_disk_full,
)
from affiner.runner.run.distributed import run_pid
from affiner.runner.run.events import Progress
from affiner.runner.run.phases import BASE_EVAL, EVAL, SAVE, TRAIN, phase_words
from affiner.runner.training.metrics import (
    EarlyStopper,
    OverfitDetector,
    perplexity,
    replay_history,
)

_EVAL_BOOKKEEPING = (
    "eval_loss",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
)

#: Within a phase, at most one ``progress`` event this many seconds apart (its first and last
#: batch are always written): a screen's countdown needs a pace, not every batch of a big eval.
PROGRESS_SECONDS = 2.0


class TokenCounter:
    """Sums real (non-padding) tokens as tensors; `take()` syncs with the device once per log."""

    def __init__(self) -> None:
        self._total: Any = 0

    def add(self, attention_mask: Any) -> None:
        self._total = self._total + attention_mask.detach().sum()

    def add_count(self, tokens: int) -> None:
        """A packed batch's tokens: its length is known on the host, no tensor to sum."""
        self._total = self._total + tokens

    def take(self) -> int:
        total, self._total = self._total, 0
        return int(total.item()) if hasattr(total, "item") else int(total)


class CountingTrainer(Trainer):
    """A Trainer that counts the non-padding tokens each micro-batch feeds the model, and saves
    a checkpoint only where there is room for it (see the module docstring).

    Args:
        token_counter: where the counted tokens go.
        settings_record: written into each checkpoint (`write_settings_record`): the settings
            it was made with, which a resume compares with its own.
    """

    def __init__(
        self,
        *args: Any,
        token_counter: TokenCounter | None = None,
        settings_record: dict[str, Any] | None = None,
        packing: bool = False,
        causal_lm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.token_counter = token_counter or TokenCounter()
        self.settings_record = settings_record
        self.packing = packing
        self.causal_lm = causal_lm
        self._eval_tally: list[Any] | None = None

    def expected_checkpoint_bytes(self) -> int:
        """The next checkpoint's size: the newest complete one's, else an estimate."""
        found = complete_checkpoints_in(self.args.output_dir)
        return expected_checkpoint_bytes(
            found[-1][1] if found else None, estimate=self._estimated_checkpoint_bytes()
        )

    def _estimated_checkpoint_bytes(self) -> int:
        import torch

        model = self.model
        params = list(model.parameters()) if model is not None else []
        trainable = [p for p in params if p.requires_grad]
        # peft saves the adapter alone; full and layer-wise fine-tuning save every weight
        saved = trainable if hasattr(model, "peft_config") else params
        weights = sum(p.numel() * p.element_size() for p in saved)
        state = 0
        optimizer = self.optimizer
        for values in getattr(optimizer, "state", {}).values() if optimizer is not None else []:
            for value in values.values() if isinstance(values, dict) else []:
                if torch.is_tensor(value):
                    state += value.numel() * value.element_size()
        if state == 0:  # before the first step: AdamW's two fp32 moments
            state = 8 * sum(p.numel() for p in trainable)
        return estimate_checkpoint_bytes(weights, state)

    def check_checkpoint_space(self, what: str) -> None:
        """Raise `DiskFullError` when the checkpoints' disk cannot hold the next checkpoint."""
        check_space(self.args.output_dir, self.expected_checkpoint_bytes(), what)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step
        folder = checkpoint_folder(self._get_output_dir(trial=trial), step)
        what = f"the checkpoint of step {step}"
        needed = self.expected_checkpoint_bytes()
        existed = folder.exists()
        if self.args.should_save:
            check_space(folder.parent, needed, what)  # before a byte of it is written
        try:
            super()._save_checkpoint(model, trial)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            free = free_bytes(folder.parent)
            if not existed:  # the cut-short folder would only mislead a resume
                shutil.rmtree(folder, ignore_errors=True)
            raise DiskFullError(folder.parent, needed, free, what) from exc
        if self.settings_record is not None and self.args.should_save and folder.is_dir():
            write_settings_record(folder, self.settings_record)

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Any:
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.token_counter.add(mask)
        elif "position_ids" in inputs:  # a packed batch: every token is real
            self.token_counter.add_count(int(inputs["input_ids"].numel()))
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if self.packing:
            # transformers keeps packed examples apart only without a KV cache (its mask builder
            # reads the restarting position ids only then); training never needs one
            inputs = {**inputs, "use_cache": False}
        positions = inputs.get("logits_to_keep")
        if positions is None or "labels" not in inputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        from affiner.runner.training.batching import kept_logits_loss

        # the head projects only the positions the loss reads (see runner.training.batching)
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        # the Trainer treats the loss as scaled for gradient accumulation exactly when the
        # model would have divided by num_items_in_batch itself (its training_step)
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        loss = kept_logits_loss(
            outputs.logits, labels, positions, num_items_in_batch if scaled else None
        )
        if scaled and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # as the Trainer's own compute_loss does
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> Any:
        """The Trainer's step, plus each batch's summed token loss for a token-weighted mean.

        The Trainer averages batch means weighted by rows, so a causal LM's eval loss would
        depend on how rows were batched (a packed batch counts as one row); summing token
        losses gives every held-out token the same weight whatever the batching.
        """
        loss, logits, labels = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys
        )
        if self._eval_tally is not None and loss is not None and "labels" in inputs:
            import torch

            tokens = inputs["labels"][..., 1:].ne(-100).sum().to(self._eval_tally.device)
            summed = loss.detach().double().to(tokens.device) * tokens
            # a batch with no loss tokens has a NaN mean; it adds nothing to the sums
            self._eval_tally += torch.stack([torch.where(tokens > 0, summed, 0.0), tokens.double()])
        return loss, logits, labels

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's loop; a causal LM's loss is then the mean over held-out tokens (all
        processes' tokens, when there are several)."""
        import torch

        if self.causal_lm:
            self._eval_tally = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        try:
            output = super().evaluation_loop(*args, **kwargs)
            tally = self._eval_tally
        finally:
            self._eval_tally = None
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if tally is not None and f"{prefix}_loss" in output.metrics:
            if self.args.world_size > 1:
                tally = self.accelerator.reduce(tally, reduction="sum")
            summed, tokens = tally.tolist()
            if tokens > 0:
                output.metrics[f"{prefix}_loss"] = summed / tokens
        return output


class StopRequest:
    """Turns SIGTERM (``affiner stop``) and SIGINT (Ctrl-C) into a request for a clean stop.

    The handler only sets a flag; `EventCallback` sees it at the next step end, has the Trainer
    save a checkpoint, and stops. A second SIGINT raises KeyboardInterrupt as usual.
    """

    #: A signal that came before any request was installed (a rank told to stop while it
    #: was still importing): the first `install` takes it over.
    early: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.requested = False
        #: a signal came to this process; in a multi-process run the ranks then agree on
        #: `requested` at a step's end (`affiner.runner.training.ranks.StopAgreement`), so no
        #: rank acts on a signal the others have not seen yet
        self.signalled = False
        #: False once the ranks decide together: a signal sets `signalled` only
        self.alone = True
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @classmethod
    def catch_early(cls) -> None:
        """Hold SIGTERM/SIGINT as a stop request from now on, before a request exists."""

        def note(signum: int, frame: Any) -> None:
            cls.early = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, note)

    def install(self) -> None:
        if StopRequest.early is not None:
            self.signalled, self.signal_name = True, StopRequest.early
            self.requested = self.alone
            StopRequest.early = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signalled = True
        self.signal_name = signal.Signals(signum).name
        if self.alone:
            self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class RunInfo:
    """What ``run_started`` says besides the step count the Trainer works out."""

    run_id: str
    model: str
    method: str
    device: str
    epochs: float
    train_rows: int
    eval_rows: int
    predicted_peak_bytes: int | None = None
    predicted_step_seconds: float | None = None
    num_gpus: int = 1
    resumed_from_step: int | None = None
    packing: bool | None = None
    loss_kernel: str | None = None
    loss_positions: bool | None = None
    world_size: int = 1
    nodes: int = 1
    strategy: str | None = None


class EventCallback(TrainerCallback):
    """Writes the run's events and status, keeps the best model, and stops when it must.

    Args:
        run_dir: the run folder (``checkpoints/best/`` lives there).
        writer: the event writer; None on ranks other than 0.
        status: the run's status, rewritten at every log.
        info: what ``run_started`` reports.
        tokens: the counter `CountingTrainer` fills.
        stop: the signal flag.
        overfit_patience, early_stopping_patience: from ``[eval]``.
        history: the resumed checkpoint's log history, replayed into the detectors.
    """

    def __init__(
        self,
        run_dir: RunDir,
        writer: EventWriter | None,
        status: RunStatus,
        info: RunInfo,
        *,
        tokens: TokenCounter,
        stop: StopRequest,
        overfit_patience: int = 2,
        early_stopping_patience: int = 0,
        history: list[dict[str, Any]] | None = None,
        world_size: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_dir = run_dir
        self.writer = writer
        self.status = status
        self.info = info
        self.tokens = tokens
        self.stop = stop
        self.world_size = world_size
        self.clock = clock
        self.best = BestKeeper(run_dir)
        self.overfit = OverfitDetector(overfit_patience)
        self.stopper = EarlyStopper(early_stopping_patience)
        replay_history(history or [], self.overfit, self.stopper)
        self.failure: str | None = None
        self.early_stopped = False
        self.last_eval: dict[str, float | None] = {}
        self._last_eval_step: int | None = None
        self._pending_best: tuple[int, float] | None = None
        self._session_start = 0.0
        self._session_start_step = 0
        self._step_seconds = 0.0
        self._step_started: float | None = None
        #: this session's evaluation time (not in the pace per step); the last one's length
        self._session_eval_seconds = 0.0
        self._last_eval_seconds: float | None = None
        self._eval_batches = 0
        self._progress_at = 0.0
        #: What the run is doing (a `affiner.runner.run.phases` name): what an out-of-memory
        #: interrupted, and what ``status.json``'s message says.
        self.phase = TRAIN

    # -- helpers -------------------------------------------------------------------------
    def _emit(self, state: Any, event: Any) -> None:
        if self.writer is not None and state.is_world_process_zero:
            self.writer.write(event)

    def _save_status(self, state: Any, *, durable: bool = True) -> None:
        if self.writer is None or not state.is_world_process_zero:
            return
        self.status.step = state.global_step
        self.status.total_steps = state.max_steps
        self.status.epoch = float(state.epoch or 0.0)
        self.status.best_eval_loss = self.best.best_loss
        write_status(self.run_dir.path, self.status, durable=durable)

    def _enter(self, state: Any, phase: str) -> None:
        """Make `phase` the current one; ``status.json``'s message says it from now on."""
        if phase == self.phase:
            return
        self.phase = phase
        self.status.message = phase_words(phase, state.global_step)[0]
        self._save_status(state)

    # -- hooks ---------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        now = self.clock()
        self._session_start = now
        self._session_start_step = state.global_step
        self._session_eval_seconds = 0.0
        self.tokens.take()  # forget anything counted before training (a pre-flight, say)
        info = self.info
        self._emit(
            state,
            RunStarted(
                run_id=info.run_id,
                pid=run_pid(),
                model=info.model,
                method=info.method,
                device=info.device,
                total_steps=state.max_steps,
                epochs=info.epochs,
                train_rows=info.train_rows,
                eval_rows=info.eval_rows,
                resumed_from_step=info.resumed_from_step,
                predicted_peak_bytes=info.predicted_peak_bytes,
                predicted_step_seconds=info.predicted_step_seconds,
                num_gpus=info.num_gpus,
                packing=info.packing,
                loss_kernel=info.loss_kernel,
                loss_positions=info.loss_positions,
                world_size=info.world_size,
                nodes=info.nodes,
                strategy=info.strategy,
            ),
        )
        self.status.state = "running"
        self.status.started = self.status.started or now
        self.phase = TRAIN
        self.status.message = phase_words(TRAIN)[0]
        self._save_status(state)
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._step_started = self.clock()
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._step_started is not None:
            self._step_seconds += self.clock() - self._step_started
            self._step_started = None
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always logged
        if self.stop.requested:
            control.should_log = True
            control.should_save = True
            control.should_training_stop = True
        if not control.should_log and not control.should_evaluate:
            self._saving(state, control)  # else the log or the evaluation, written first, opens it
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        logs = logs or {}
        if any(key.startswith("eval_") for key in logs) or "train_runtime" in logs:
            return control  # evaluations are written by on_evaluate; the summary by the recipe
        if "loss" not in logs:
            return control
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        step = state.global_step
        self.overfit.observe_train(loss)
        now = self.clock()
        tokens = self.tokens.take() * self.world_size
        elapsed, self._step_seconds = self._step_seconds, 0.0  # evaluation and saving left out
        done = step - self._session_start_step
        trained = now - self._session_start - self._session_eval_seconds
        per_step = trained / done if done > 0 else None
        eta = None
        if per_step is not None:
            eta = per_step * (state.max_steps - step)
            if self._last_eval_seconds is not None:
                eta += evals_left(args, state, control) * self._last_eval_seconds
        self._emit(
            state,
            TrainLog(
                step=step,
                epoch=float(state.epoch or 0.0),
                loss=clean_number(loss),
                learning_rate=clean_number(logs.get("learning_rate")),
                grad_norm=clean_number(grad_norm),
                tokens_per_second=tokens / elapsed if elapsed > 0 and tokens else None,
                eta_seconds=eta,
                total_steps=state.max_steps,
            ),
        )
        if not _finite(loss) or (grad_norm is not None and not _finite(grad_norm)):
            self._fail_nan(
                state, control, f"the training loss became {loss} (grad norm {grad_norm})"
            )
        if not control.should_evaluate:
            self._saving(state, control)
        if self.phase != SAVE:
            self.phase, self.status.message = TRAIN, phase_words(TRAIN)[0]
        self._save_status(state, durable=False)  # every log: no wait for the disk
        return control

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """One evaluation batch done: a ``progress`` event, throttled to `PROGRESS_SECONDS`."""
        if self.writer is None or not state.is_world_process_zero:
            return control
        self._eval_batches += 1
        done, total = self._eval_batches, _batches(kwargs.get("eval_dataloader"))
        now = self.clock()
        if done == 1 or (total and done >= total) or now - self._progress_at >= PROGRESS_SECONDS:
            self._progress_at = now
            phase = BASE_EVAL if state.global_step == 0 else EVAL
            self._emit(state, Progress(step=state.global_step, phase=phase, done=done, total=total))
            self._enter(state, phase)
        return control

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        self._eval_batches = 0  # the next evaluation counts its batches from one again
        self.phase, self.status.message = TRAIN, phase_words(TRAIN)[0]
        runtime = clean_number((metrics or {}).get("eval_runtime"))
        if runtime is not None and state.global_step != self._last_eval_step:
            self._last_eval_seconds = runtime
            # (the base model's, at step 0, came before this session's clock started)
            self._session_eval_seconds += runtime if state.global_step > 0 else 0.0
        control = self._evaluated(args, state, control, metrics or {}, kwargs)
        self._saving(state, control)
        return control

    def _evaluated(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any], kwargs: dict[str, Any]
    ) -> Any:
        step = state.global_step
        if step == self._last_eval_step or "eval_loss" not in metrics:
            return control
        self._last_eval_step = step
        loss = metrics["eval_loss"]
        scores = {name: clean_number(metrics.get(f"eval_{name}")) for name in CLASS_METRICS}
        # Perplexity means something for language modelling only, not for a class head's loss.
        ppl = None if "eval_accuracy" in metrics else perplexity(loss)
        self.last_eval = {"loss": clean_number(loss), "perplexity": ppl, **scores}
        extra = {
            key[5:]: float(value)
            for key, value in metrics.items()
            if key.startswith("eval_")
            and key not in _EVAL_BOOKKEEPING
            and key[5:] not in CLASS_METRICS
            and isinstance(value, (int, float))
            and _finite(value)
        }
        self._emit(
            state,
            EvalResult(
                step=step,
                epoch=float(state.epoch or 0.0),
                loss=clean_number(loss),
                perplexity=ppl,
                runtime_seconds=clean_number(metrics.get("eval_runtime")),
                extra=extra,
                **scores,
            ),
        )
        if not _finite(loss):
            self._fail_nan(state, control, f"the evaluation loss became {loss}")
            return control
        if step == 0:
            # The untouched model's baseline ([eval].at_start): recorded, but never the "best"
            # checkpoint nor the reference for overfitting or early stopping.
            self._save_status(state)
            return control
        loss = float(loss)
        self._keep_if_best(state, control, loss, kwargs)
        if self.overfit.observe_eval(loss):
            self._emit(
                state,
                Warning_(
                    code="overfitting",
                    step=step,
                    action="stop",
                    message=(
                        f"Eval loss has risen for {self.overfit.rising} evaluations in a row "
                        f"(now {loss:.4f}) while the training loss kept falling: the model is "
                        "memorising the training set. Stop now and keep checkpoints/best/, or "
                        "use more data, fewer epochs or a lower learning rate."
                    ),
                ),
            )
        if self.stopper.observe(loss):
            self.early_stopped = True
            control.should_training_stop = True
            self._emit(
                state,
                Warning_(
                    code="early_stopping",
                    step=step,
                    message=(
                        f"No better eval loss in {self.stopper.patience} evaluations "
                        f"(best {self.stopper.best:.4f}): stopping early."
                    ),
                ),
            )
        self._save_status(state)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        step = state.global_step
        self.phase, self.status.message = TRAIN, phase_words(TRAIN)[0]
        folder = checkpoint_folder(args.output_dir, step)
        self._emit(state, Checkpoint(step=step, path=str(folder), best=False))
        pending, self._pending_best = self._pending_best, None
        if pending and pending[0] == step and state.is_world_process_zero and folder.is_dir():
            path = self.best.link_checkpoint(folder, step, pending[1])
            self._emit(
                state, Checkpoint(step=step, path=str(path), best=True, eval_loss=pending[1])
            )
        return control

    # -- decisions -----------------------------------------------------------------------
    def _saving(self, state: Any, control: Any) -> None:
        """A checkpoint save comes next: open its phase (its ``checkpoint`` event closes it)."""
        if control.should_save:
            self._emit(state, Progress(step=state.global_step, phase=SAVE))
            self._enter(state, SAVE)

    def _keep_if_best(self, state: Any, control: Any, loss: float, kwargs: dict[str, Any]) -> None:
        if not self.best.improves(loss):
            return
        if self.world_size > 1:
            # several ranks save the best as a checkpoint, together: rank 0 alone holds only
            # its shard of a sharded model, and a save by one rank would stall the others.
            # Every rank keeps the new best (rank 0 alone writes it), so all decide alike next time.
            control.should_save = True
            if not state.is_world_process_zero:
                self.best.best = BestInfo(int(state.global_step), float(loss))
        if control.should_save:  # a checkpoint of this very step follows: link its files
            self._pending_best = (state.global_step, loss)
            return
        if self.writer is None or not state.is_world_process_zero:
            return  # only rank 0 writes files
        path = self.best.save_weights(
            kwargs.get("model"), kwargs.get("processing_class"), state.global_step, loss
        )
        self._emit(
            state, Checkpoint(step=state.global_step, path=str(path), best=True, eval_loss=loss)
        )

    def _fail_nan(self, state: Any, control: Any, what: str) -> None:
        self.failure = (
            f"Training stopped at step {state.global_step}: {what}. Try a lower learning rate "
            "(a half or a tenth), keep max_grad_norm at 1.0, or train in bf16 or fp32 instead "
            "of fp16."
        )
        self._emit(state, Error(code="nan_loss", step=state.global_step, message=self.failure))
        control.should_training_stop = True
        control.should_save = False  # never checkpoint NaN weights
        control.should_evaluate = False


def evals_left(args: Any, state: Any, control: Any) -> int:
    """Evaluations the Trainer will still run after this step's log, as its flow decides them:
    every ``eval_steps`` steps and one at the last step when it is not a multiple, this step's
    own when one follows the log (``should_evaluate``); or one at each epoch's end still to come.
    None at the last step: its closing evaluation shows as a phase with its own countdown."""
    strategy = getattr(args, "eval_strategy", "no")
    strategy = str(getattr(strategy, "value", strategy))
    step, last = int(state.global_step), int(state.max_steps)
    if step >= last:
        return 0
    if strategy == "steps" and int(getattr(state, "eval_steps", 0) or 0) > 0:
        every = int(state.eval_steps)
        later = last // every - step // every + (1 if last % every else 0)
        return later + (1 if control.should_evaluate else 0)
    if strategy == "epoch":  # logs come before the epoch-end evaluation of the same step
        epoch = float(state.epoch or 0.0) - 1e-9
        return sum(1 for end in range(1, math.ceil(state.num_train_epochs) + 1) if end >= epoch)
    return 0


def _batches(dataloader: Any) -> int:
    """The evaluation's number of batches on this rank; 0 when the loader has no length."""
    try:
        return len(dataloader)
    except TypeError:  # None, or a loader over an iterable data set
        return 0


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
