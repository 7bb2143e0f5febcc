"""Checkpoint bookkeeping: the checkpoint to resume from, and the best model kept aside.

The Trainer writes ``checkpoints/checkpoint-<step>/`` every ``[checkpoint].every_steps`` and
keeps the last ``keep_last`` of them; one counts as complete once its ``trainer_state.json``
exists (the Trainer writes it last). `checkpoints` and `latest_checkpoint` are the one way
anything finds them: resuming, ``affiner runs``, the playground. Besides those, ``checkpoints/best/`` always holds the
weights (adapter or full model, plus tokenizer) with the lowest evaluation loss so far, and
``best/affiner_best.json`` says at which step and loss. It is not named ``checkpoint-*``, so
the Trainer's rotation never deletes it, and a user who stops a run early keeps the best.

When an improving evaluation falls on a step that is about to be checkpointed anyway, the
checkpoint's model files are hard-linked into ``best/`` (no second copy on disk); otherwise the
weights are written there directly with ``save_pretrained``.

Each checkpoint also records the settings that shape memory and time at which it was made
(``affiner_settings.json``, `SETTINGS_RECORD`): a resume whose ``run.toml`` asks for others runs
the pre-flight again. A save cut short (a full disk, an out-of-memory) leaves a folder without
``trainer_state.json``; `remove_partial_checkpoints` deletes such folders before the run fails
or carries on, so only complete checkpoints are ever on disk for long.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affiner.runner.run.rundir import RunDir

BEST_INFO = "affiner_best.json"
TRAINER_STATE = "trainer_state.json"
#: The settings a checkpoint was made with (`write_settings_record`).
SETTINGS_RECORD = "affiner_settings.json"
#: Files of a Trainer checkpoint that only resuming needs; everything else is the model.
_RESUME_ONLY = (
    "optimizer.pt",
    "optimizer.bin",  # FSDP's optimizer state (and its sharded weights below): resume only
    "pytorch_model_fsdp.bin",
    "scheduler.pt",
    "scaler.pt",
    "training_args.bin",
    TRAINER_STATE,
    SETTINGS_RECORD,
)
#: What the Trainer names a checkpoint folder (transformers' ``PREFIX_CHECKPOINT_DIR``).
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_folder(checkpoints_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the Trainer writes the checkpoint of `step`: ``<checkpoints_dir>/checkpoint-<step>``."""
    return Path(checkpoints_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(folder: str | os.PathLike[str]) -> int | None:
    """The step a ``checkpoint-<step>`` folder holds, or None for any other name (``best``)."""
    match = _CHECKPOINT_RE.match(Path(folder).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: RunDir | str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The run's Trainer checkpoints as ``(step, folder)``, oldest first.

    Only folders with a ``trainer_state.json`` count: the Trainer writes it last, so a folder
    without one is a save that was cut short. ``best/`` is not one of them (see `BestKeeper`).
    """
    return complete_checkpoints_in(_as_rundir(run_dir).checkpoints)


def complete_checkpoints_in(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The complete ``checkpoint-<step>`` folders directly in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        step = checkpoint_step(child)
        if step is not None and child.is_dir() and (child / TRAINER_STATE).exists():
            found.append((step, child))
    return sorted(found)


def latest_checkpoint(run_dir: RunDir | str | os.PathLike[str]) -> tuple[int, Path] | None:
    """The newest complete checkpoint as ``(step, folder)``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def saved_weights(run_dir: RunDir | str | os.PathLike[str]) -> list[Path]:
    """The folders that may hold a run's weights, the preferred first (they may not exist).

    ``adapter/`` (what the finished run saved), then ``checkpoints/best/`` (installed whole by
    `BestKeeper`, so never half written), then the complete checkpoints, newest first.
    """
    rd = _as_rundir(run_dir)
    return [rd.adapter, rd.best, *(folder for _, folder in reversed(list_checkpoints(rd)))]


def _as_rundir(run_dir: RunDir | str | os.PathLike[str]) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))


def remove_partial_checkpoints(checkpoints_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the checkpoint folders a cut-short save left (no ``trainer_state.json``).

    Also the best model's staging folder (``best.tmp``), which only a failed install leaves.
    The complete checkpoints and ``best/`` are never touched. Returns what was removed.
    """
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    removed = []
    for child in folder.iterdir():
        partial = checkpoint_step(child) is not None and not (child / TRAINER_STATE).exists()
        if child.is_dir() and (partial or child.name == "best.tmp"):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def write_settings_record(checkpoint: Path, settings: dict[str, Any]) -> None:
    """Record in `checkpoint` the settings it was made with (see the module docstring)."""
    tmp = checkpoint / (SETTINGS_RECORD + ".tmp")
    tmp.write_text(json.dumps(settings, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, checkpoint / SETTINGS_RECORD)


def read_settings_record(checkpoint: Path) -> dict[str, Any] | None:
    """The settings `checkpoint` was made with; None when it has no readable record."""
    try:
        data = json.loads((checkpoint / SETTINGS_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_log_history(checkpoint: Path) -> list[dict[str, Any]]:
    """The Trainer's log history saved in a checkpoint (train losses and evaluations)."""
    try:
        data = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = data.get("log_history") if isinstance(data, dict) else None
    return [entry for entry in history or [] if isinstance(entry, dict)]


@dataclass
class BestInfo:
    """What ``best/affiner_best.json`` records."""

    step: int
    eval_loss: float


class BestKeeper:
    """Keeps ``checkpoints/best/`` equal to the weights with the lowest evaluation loss.

    On resume it starts from the best already on disk, so a resumed run never replaces a
    better model with a worse one.
    """

    def __init__(self, run_dir: RunDir) -> None:
        self.folder = run_dir.best
        self.best: BestInfo | None = self._read()
        self.pending_step: int | None = None

    def _read(self) -> BestInfo | None:
        try:
            data = json.loads((self.folder / BEST_INFO).read_text(encoding="utf-8"))
            return BestInfo(int(data["step"]), float(data["eval_loss"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def best_loss(self) -> float | None:
        return self.best.eval_loss if self.best else None

    def improves(self, eval_loss: float) -> bool:
        return self.best is None or eval_loss < self.best.eval_loss

    def save_weights(self, model: Any, tokenizer: Any, step: int, eval_loss: float) -> Path:
        """Write the model's weights (an adapter for peft models) and tokenizer as the new best."""
        tmp = self._fresh_tmp()
        try:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # (a full disk): the old best stays
            raise
        return self._install(tmp, step, eval_loss)

    def link_checkpoint(self, checkpoint: Path, step: int, eval_loss: float) -> Path:
        """Make the model files of a just-written checkpoint the new best, by hard links."""
        tmp = self._fresh_tmp()
        try:
            for source in checkpoint.iterdir():
                if (
                    source.is_file()
                    and source.name not in _RESUME_ONLY
                    and "rng_state" not in source.name
                ):
                    _link_or_copy(source, tmp / source.name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._install(tmp, step, eval_loss)

    def _fresh_tmp(self) -> Path:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def _install(self, tmp: Path, step: int, eval_loss: float) -> Path:
        """Swap the new folder in: a crash leaves either the old best or the new one complete."""
        (tmp / BEST_INFO).write_text(
            json.dumps({"step": step, "eval_loss": eval_loss}) + "\n", encoding="utf-8"
        )
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            os.replace(self.folder, old)
        os.replace(tmp, self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self.best = BestInfo(step, eval_loss)
        return self.folder


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
