"""A full disk at a checkpoint, for real where this machine lets a test mount a small tmpfs.

One tiny run goes through what a user meets: the disk fills while it trains (a file written by
a callback takes all but 128 KiB), the checkpoint of step 6 fails half-written, the run fails
with "no space left on <mount>", the checkpoint of step 3 intact and the cut folder gone; a
resume on the still-full disk is refused before training, plainly; once the file is deleted
the resume finishes, and the steps it trained again give the very losses the first attempt
logged. Without the right to mount (no root), the same run meets the same faults injected at
the boundary: torch's own "unexpected pos" error from ``torch.save`` and a ``disk_usage`` that
reports almost nothing free.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from affiner.runner.run import diskspace
from affiner.runner.run.diskspace import (
    DiskFullError,
    check_space,
    expected_checkpoint_bytes,
    is_disk_full,
    mount_point,
)
from affiner.runner.run.events import effective_events, read_events, read_status
from affiner.runner.train import EXIT_FAILED, EXIT_FINISHED, run_training
from affiner.runner.training import CountingTrainer
from tests.train_helpers import events_of, make_run, of_type

pytestmark = pytest.mark.slow

#: torch.save's words for a write that ran out of room (seen on a full tmpfs).
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 43200 vs 43092"
#: Room left on the filled disk: the adapter of the next checkpoint fits, its optimizer state not.
LEFT_FREE = 128 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """A 64 MiB tmpfs mounted for the test (True), or a plain folder when mounting is refused."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        command = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)]
        mounted = subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    try:
        yield folder, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=10)


class _FillDisk(TrainerCallback):
    """At step `at_step`, write a file that leaves `LEFT_FREE` bytes on the disk of `folder`."""

    def __init__(self, folder: Path, at_step: int) -> None:
        self.filler = folder / "filler.bin"
        self.at_step = at_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != self.at_step:
            return
        size = shutil.disk_usage(self.filler.parent).free - LEFT_FREE
        with open(self.filler, "wb") as out:
            chunk = b"\0" * (1 << 20)
            while size > 0:
                size -= out.write(chunk[: min(len(chunk), size)])


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _losses(events: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: round(e["loss"], 6) for e in of_type(events, "train_log")}


def test_a_full_disk_fails_the_checkpoint_plainly_and_resume_after_freeing_is_exact(
    tiny_llama: Path,
    small_disk: tuple[Path, bool],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk, mounted = small_disk
    rd = make_run(
        disk,
        tiny_llama,
        method="lora",
        training={"max_steps": 8, "logging_steps": 1},
        eval={"every_steps": 50},
        checkpoint={"every_steps": 3, "keep_last": 2},
    )
    fill = _FillDisk(disk, at_step=4)
    with monkeypatch.context() as patch:
        # The check before each checkpoint would refuse the save at step 6; it is turned off
        # here so that the write itself meets the full disk, as it would on a disk filled by
        # someone else between the check and the write.
        patch.setattr(CountingTrainer, "expected_checkpoint_bytes", lambda self: 1)
        if not mounted:
            _inject_torch_disk_full(patch, at="checkpoint-6")
        assert run_training(rd.path, callbacks=[fill] if mounted else []) == EXIT_FAILED

    status = read_status(rd.path)
    assert status is not None and status.state == "failed"
    where = mount_point(rd.checkpoints)
    assert status.message.startswith(f"no space left on {where} (")
    assert "the checkpoint of step 3 is kept" in status.message
    assert f"affiner train --resume {rd.run_id}" in status.message
    errors = of_type(events_of(rd), "error")
    assert [e["code"] for e in errors] == ["disk_full"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "inline_container.cc" in err  # torch's words, kept in the log beside the plain ones
    assert not (rd.checkpoints / "checkpoint-6").exists()  # the cut-short save is gone
    kept = rd.checkpoints / "checkpoint-3"
    assert (kept / "trainer_state.json").exists() and (kept / "optimizer.pt").exists()
    kept_digest = _digest(kept)
    first = _losses(events_of(rd))
    assert max(first) == 6

    # A resume on the disk that is still full: refused before a step is trained.
    usage = type(shutil.disk_usage(disk))
    with monkeypatch.context() as patch:
        if not mounted:
            patch.setattr(diskspace.shutil, "disk_usage", lambda path: usage(1, 1, LEFT_FREE))
        assert run_training(rd.path, resume=True) == EXIT_FAILED
    status = read_status(rd.path)
    assert status.state == "failed" and status.message.startswith("no space left on")
    assert status.step == 3  # what the run holds: the checkpoint it would resume from
    assert "needed ~" in status.message and "free " in status.message
    assert max(_losses(events_of(rd))) == 6  # nothing trained
    assert _digest(kept) == kept_digest

    # Space freed: the resume finishes, and steps 4-6 come out as the first attempt had them.
    (disk / "filler.bin").unlink(missing_ok=True)
    assert run_training(rd.path, resume=True) == EXIT_FINISHED
    events = effective_events(read_events(rd.path))
    logs = [e for e in events if e.type == "train_log"]
    assert [e.step for e in logs] == list(range(1, 9))
    resumed = {e.step: round(e.loss, 6) for e in logs if e.step > 3}
    assert {s: resumed[s] for s in range(4, 7)} == {s: first[s] for s in range(4, 7)}
    assert read_status(rd.path).state == "finished"


def _inject_torch_disk_full(patch: pytest.MonkeyPatch, *, at: str) -> None:
    """torch.save into a folder named `at` writes a few bytes, then fails as on a full disk."""
    import torch

    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        if at in str(f):
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 64)
            raise RuntimeError(TORCH_DISK_FULL)
        return real_save(obj, f, *args, **kwargs)

    patch.setattr(torch, "save", save)


def test_the_ways_a_full_disk_is_reported_are_all_recognised() -> None:
    assert is_disk_full(RuntimeError(TORCH_DISK_FULL))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = Exception(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )
    assert is_disk_full(wrapped)
    assert not is_disk_full(RuntimeError("CUDA out of memory"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_the_check_names_the_mount_what_is_needed_and_what_is_free(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_space(tmp_path / "not-yet" / "made", 1)  # a folder to be made is judged by its parent
    with pytest.raises(DiskFullError) as caught:
        check_space(tmp_path, free * 4, "the checkpoint of step 40")
    error = caught.value
    assert error.mount == mount_point(tmp_path) and os.path.ismount(error.mount)
    assert str(error).startswith(f"no space left on {error.mount} (needed ~")
    assert "GiB" in error.message or "TiB" in error.message
    assert "for the checkpoint of step 40" in error.message and "--resume" in (error.hint or "")
    # the next checkpoint is judged by the previous one once there is one, with a margin
    previous = tmp_path / "checkpoint-5"
    previous.mkdir()
    (previous / "optimizer.pt").write_bytes(b"\0" * 10_000)
    assert 10_000 < expected_checkpoint_bytes(previous, estimate=1) <= 11_000
    assert expected_checkpoint_bytes(None, estimate=123) == 123


def test_a_preflight_on_a_full_temporary_disk_says_so(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from affiner.runner.config import load_config
    from affiner.runner.run.preflight import run_preflight_process

    cfg = load_config(make_run(tmp_path, tiny_llama).config)

    def full(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(DiskFullError) as caught:
        run_preflight_process(cfg)
    assert str(caught.value).startswith("no space left on ")
    assert "for the pre-flight's temporary folder" in caught.value.message


def test_a_new_run_folder_is_refused_on_a_disk_too_full_for_its_first_checkpoint(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affiner.runner.config import load_config
    from affiner.runner.run.diskspace import check_space_for_run, expected_run_bytes

    cfg = load_config(make_run(tmp_path, tiny_llama).config)
    needed = expected_run_bytes(cfg)
    assert needed is not None and needed > diskspace.CHECKPOINT_EXTRA_BYTES
    assert check_space_for_run(cfg, tmp_path / "runs").enough
    usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda path: usage(1, 1, 4096))
    with pytest.raises(DiskFullError) as caught:
        check_space_for_run(cfg, tmp_path / "runs")
    assert "free 4.00 KiB" in caught.value.message and "for a new run" in caught.value.message
    # `affiner train` refuses it the same way before it makes anything
    from affiner.tui.cli import main

    runs = tmp_path / "cli-runs"
    monkeypatch.setenv("AFFINER_RUNS", str(runs))
    assert main(["train", str(make_run(tmp_path / "again", tiny_llama).config)]) != 0
    assert not runs.exists() or not any(runs.iterdir())
    cfg.model.name_or_path = str(tmp_path / "no-such-model")
    assert check_space_for_run(cfg, tmp_path / "runs") is None  # validation says why, not this
