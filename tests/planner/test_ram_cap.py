"""A container's memory cap is the RAM a CPU plan and a run's samples are judged against."""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.planner.hardware import probe, ram
from affiner.planner.hardware.ram import CgroupMemory, cgroup_memory, ram_total_available
from affiner.planner.units import GIB


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_reads_the_processs_own_group_first(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/user.slice/job-7\n")
    _write(tmp_path / "cg" / "memory.max", "max\n")  # the root is not capped
    _write(tmp_path / "cg" / "user.slice" / "job-7" / "memory.max", f"{8 * GIB}\n")
    _write(tmp_path / "cg" / "user.slice" / "job-7" / "memory.current", f"{3 * GIB}\n")
    assert cgroup_memory(tmp_path / "cg", proc) == CgroupMemory(8 * GIB, 3 * GIB)


def test_unlimited_groups_and_missing_files_are_no_cap(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/\n")
    _write(tmp_path / "v2" / "memory.max", "max\n")
    assert cgroup_memory(tmp_path / "v2", proc) is None
    _write(tmp_path / "v1" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory(tmp_path / "v1", proc) is None  # v1's way of writing "unlimited"
    assert cgroup_memory(tmp_path / "nothing-here", tmp_path / "no-proc") is None


def test_cgroup_v1_limit_and_usage(tmp_path: Path) -> None:
    _write(tmp_path / "memory" / "memory.limit_in_bytes", f"{16 * GIB}\n")
    _write(tmp_path / "memory" / "memory.usage_in_bytes", f"{10 * GIB}\n")
    assert cgroup_memory(tmp_path, tmp_path / "no-proc") == CgroupMemory(16 * GIB, 10 * GIB)


def test_the_cap_lowers_total_and_available_but_never_raises_them() -> None:
    host = (128 * GIB, 100 * GIB)
    assert ram_total_available(*host, CgroupMemory(16 * GIB, 10 * GIB)) == (16 * GIB, 6 * GIB)
    # the host has less free than the group would allow: the host's figure stands
    assert ram_total_available(128 * GIB, 2 * GIB, CgroupMemory(16 * GIB, 1 * GIB)) == (
        16 * GIB,
        2 * GIB,
    )
    assert ram_total_available(*host, CgroupMemory(256 * GIB, 0)) == host
    assert ram_total_available(8 * GIB, 4 * GIB, CgroupMemory(4 * GIB, 5 * GIB))[1] == 0


def test_the_probe_reports_the_containers_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ram, "cgroup_memory", lambda: CgroupMemory(2 * GIB, GIB // 2))
    report = probe(nvml=None)
    assert report.ram_total == 2 * GIB
    assert report.ram_available <= 2 * GIB - GIB // 2


def test_a_runs_system_sample_reads_the_same_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The out-of-memory verdict compares a killed worker's RSS with this total."""
    from affiner.runner.training.sampler import take_sample

    monkeypatch.setattr(ram, "cgroup_memory", lambda: CgroupMemory(2 * GIB, GIB // 2))
    sample = take_sample()
    assert sample.ram_total == 2 * GIB and sample.ram_used >= GIB // 2
