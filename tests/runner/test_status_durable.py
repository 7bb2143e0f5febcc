"""status.json after every training log skips the fsync; the states a run ends in keep it.

An fsync per log cost 0.7 ms on an idle disk and 8 ms on a busy one (bench/monitor_overhead.py):
several percent of a fast GPU step at logging_steps = 1, for a file rewritten seconds later.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from affiner.runner.run.events import RunStatus, read_status, write_status


def test_only_a_durable_write_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    write_status(tmp_path, RunStatus(run_id="r", state="running", step=3), durable=False)
    assert synced == [] and read_status(tmp_path).step == 3
    write_status(tmp_path, RunStatus(run_id="r", state="finished", step=9))
    assert len(synced) == 1 and read_status(tmp_path).state == "finished"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".status.")]


def test_a_run_syncs_status_at_its_phases_not_at_every_log(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affiner.runner.train import run_training
    from affiner.runner.training import callbacks
    from tests.train_helpers import make_run

    writes: list[tuple[int, bool]] = []
    real = callbacks.write_status

    def recording(run_dir: object, status: RunStatus, *, durable: bool = True) -> None:
        writes.append((status.step, durable))
        real(run_dir, status, durable=durable)

    monkeypatch.setattr(callbacks, "write_status", recording)
    rd = make_run(
        tmp_path, tiny_llama, training={"max_steps": 6, "logging_steps": 1},
        eval={"every_steps": 0}, checkpoint={"every_steps": 0},
    )  # fmt: skip
    assert run_training(rd.path) == 0
    quick = [step for step, durable in writes if not durable]
    assert len(quick) >= 5, writes  # a log a step, none of them waiting for the disk
    assert any(durable for _, durable in writes), "the start and the end are synced"
    assert read_status(rd.path).state == "finished"
