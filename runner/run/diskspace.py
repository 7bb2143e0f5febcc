"""Disk space for a run: check it before writing, and say "no space left" when a write fails.

A full disk does not announce itself. ``torch.save`` reports it as ``RuntimeError: [enforce
fail at inline_container.cc:672] . unexpected pos 43200 vs 43092``, safetensors as a
``SafetensorError`` with ``StorageFull`` in it, plain Python as ``OSError: [Errno 28]``. So a run
checks the free space before it writes a checkpoint (`check_space`, against
`expected_checkpoint_bytes`: the previous checkpoint's size on disk once there is one, else
an estimate from the parameters that are saved and the optimizer state), and every failure that
is a full disk in disguise (`is_disk_full`) becomes one `DiskFullError` that names the mount,
what was needed and what is free.

`check_space_for_run` is the same check for a run folder that does not exist yet: the launcher
calls it before it creates one, from ``run.toml`` and the model's ``config.json`` alone (the
planner's parameter counts; no torch, no weights).

This module imports neither torch nor the planner at module level, so the launcher, the CLI and
the TUI may use it freely.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from affiner.planner.errors import AffinerError
from affiner.planner.units import MIB, format_bytes

if TYPE_CHECKING:
    from affiner.runner.config import RunConfig

#: Besides the weights and the optimizer state a checkpoint holds the tokenizer, the scheduler,
#: the RNG states and the Trainer's state: a few MiB for a large tokenizer, counted generously.
CHECKPOINT_EXTRA_BYTES = 32 * MIB
#: A checkpoint is never exactly the size of the last one (the log history grows, a best/
#: copy may be needed); the previous size is scaled by this before it is compared.
SIZE_MARGIN = 1.1
#: Fragments of the messages a full disk hides behind (lower case): torch's zip writer, the
#: C library's strerror, safetensors' Rust error kind, and a quota.
DISK_FULL_TEXTS = (
    "unexpected pos",
    "file write failed",
    "no space left on device",
    "storagefull",
    "disk quota exceeded",
)
#: errno values that mean "the file system has no room for this write".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(AffinerError):
    """There is not enough free space for what the run is about to write.

    Its message is the one a user sees: ``no space left on /data (needed ~1.20 GiB, free 300
    MiB)``, with what to do as the hint.

    Attributes:
        mount: the mount point of the file system that is full.
        needed: bytes the write was expected to need (None when not known).
        free: bytes free on that file system when it was checked (None when not readable).
    """

    def __init__(
        self, path: str | os.PathLike[str], needed: int | None, free: int | None, what: str = ""
    ) -> None:
        self.mount = mount_point(path)
        self.needed, self.free = needed, free
        figures = ", ".join(
            part
            for part in (
                f"needed ~{format_bytes(needed)}" if needed is not None else "",
                f"free {format_bytes(free)}" if free is not None else "",
            )
            if part
        )
        message = f"no space left on {self.mount}" + (f" ({figures})" if figures else "")
        if what:
            message += f" for {what}"
        super().__init__(
            message,
            hint=(
                f"free space on {self.mount} (old runs' checkpoints/ folders, caches), or "
                "lower [checkpoint].keep_last; the previous checkpoint is kept, so "
                "`affiner train --resume ID` continues from it once there is room"
            ),
        )


@dataclass(frozen=True)
class SpaceCheck:
    """One comparison of needed against free bytes on the file system holding `path`."""

    path: Path
    needed: int
    free: int | None

    @property
    def enough(self) -> bool:
        """Unknown free space counts as enough: a check that cannot read must not block a run."""
        return self.free is None or self.free >= self.needed


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point of the file system that holds `path` (or would, for a path not made yet)."""
    current = _existing(Path(path))
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged process may still write where `path` lives; None when unreadable."""
    try:
        return int(shutil.disk_usage(_existing(Path(path))).free)
    except OSError:
        return None


def folder_bytes(folder: str | os.PathLike[str]) -> int:
    """What the files under `folder` take (their sizes; 0 for a folder that is gone)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def check_space(path: str | os.PathLike[str], needed: int, what: str = "") -> SpaceCheck:
    """Raise `DiskFullError` when the file system holding `path` has less than `needed` free.

    Args:
        path: where the write goes (a file or folder; it need not exist yet).
        needed: bytes the write is expected to take.
        what: what is being written, for the message (``the checkpoint of step 40``).
    """
    check = SpaceCheck(Path(path), int(needed), free_bytes(path))
    if not check.enough:
        raise DiskFullError(path, check.needed, check.free, what)
    return check


def expected_checkpoint_bytes(
    previous: str | os.PathLike[str] | None, *, estimate: int | None = None
) -> int:
    """Bytes the next checkpoint will take: the previous one's size, else `estimate`.

    A checkpoint already on disk is the best predictor (same model, same optimizer state); the
    estimate (`estimate_checkpoint_bytes`) serves the first save.
    """
    if previous is not None:
        size = folder_bytes(previous)
        if size > 0:
            return int(size * SIZE_MARGIN)
    return int(estimate or CHECKPOINT_EXTRA_BYTES)


def estimate_checkpoint_bytes(saved_param_bytes: int, optimizer_state_bytes: int) -> int:
    """A Trainer checkpoint: the weights it saves, the optimizer's state and the small files.

    Args:
        saved_param_bytes: bytes of the weights written (a LoRA adapter, or the whole model for
            full and layer-wise fine-tuning, which save every weight).
        optimizer_state_bytes: bytes of the optimizer's state (AdamW: two fp32 moments per
            trainable parameter).
    """
    return int(saved_param_bytes + optimizer_state_bytes + CHECKPOINT_EXTRA_BYTES)


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or an exception it wraps) is a write that failed for lack of space."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return True
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        text = str(current).lower()
        if any(fragment in text for fragment in DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def expected_run_bytes(cfg: RunConfig) -> int | None:
    """What a new run writes before it can save its result: one checkpoint and the weights.

    From ``run.toml`` and the model's ``config.json`` (the planner's exact parameter counts);
    None when the model's shape cannot be read (the launcher's own validation says why).
    """
    from affiner.planner.memory.optimizers import optimizer_bytes
    from affiner.planner.memory.peak import trainable_shapes
    from affiner.planner.models import resolve_model
    from affiner.planner.settings import ALL_LINEAR, TrainSettings

    try:
        spec = resolve_model(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        targets = cfg.method.target_modules
        settings = TrainSettings(
            method=cfg.method.name,
            optimizer=cfg.training.optimizer,
            lora_rank=cfg.method.lora_rank,
            lora_alpha=cfg.method.lora_alpha,
            lora_dropout=cfg.method.lora_dropout,
            lora_targets=ALL_LINEAR if isinstance(targets, str) else tuple(targets),
            trainable_layers=cfg.method.trainable_layers,
        )
        shapes = trainable_shapes(spec, settings)
    except (AffinerError, OSError, ValueError, TypeError, KeyError):
        return None
    trainable = sum(_numel(shape) for shape in shapes)
    param_bytes = 2 if cfg.training.precision == "bf16-pure" else 4
    saved = trainable * 4 if settings.uses_lora else spec.params_total * param_bytes
    optimizer = optimizer_bytes(cfg.training.optimizer, shapes, param_bytes=4)
    checkpoint = estimate_checkpoint_bytes(saved, optimizer)
    merged = spec.params_total * 2 if cfg.output.merge and settings.uses_lora else 0
    return checkpoint + saved + merged


def check_space_for_run(cfg: RunConfig, root: str | os.PathLike[str]) -> SpaceCheck | None:
    """Refuse to create a run folder under `root` on a disk too full for its first checkpoint.

    Returns the check (None when the model's size is unknown, so nothing could be compared).

    Raises:
        DiskFullError: less is free than one checkpoint plus the saved weights need.
    """
    needed = expected_run_bytes(cfg)
    if needed is None:
        return None
    return check_space(root, needed, "a new run (its first checkpoint and its weights)")


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (what a not-yet-made folder will live on)."""
    current = path.expanduser().absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
