"""The RAM this process may use: the machine's, or less when a container's cgroup caps it.

psutil reports the host's memory, but in a container with a memory limit the kernel kills a
process at the limit, not at the host's total: a CPU plan judged against 128 GiB on a 16 GiB
container fits on paper and is killed in the run, and a worker killed at the limit would not
read as near "the machine's memory". Both the hardware probe and the run's system samples read
memory through `ram_total_available`, so the plan, the monitor and the out-of-memory verdict
all use the same ceiling.

cgroup v2 keeps the limit in ``memory.max`` (``max`` when unlimited) of the process's own group
(named in ``/proc/self/cgroup``), v1 in ``memory/memory.limit_in_bytes`` (a huge number when
unlimited); their usage is ``memory.current`` / ``memory.usage_in_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CgroupMemory:
    """A container's memory cap and what its processes use now, in bytes."""

    limit: int
    used: int


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _own_group(proc_cgroup: Path) -> str:
    """The process's cgroup v2 path (``0::/some/group``), or "" for the root."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith("0::"):
            return line[3:].strip().lstrip("/")
    return ""


def cgroup_memory(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CgroupMemory | None:
    """The cgroup's memory cap and usage, or None when there is no cap (or nothing to read)."""
    group = _own_group(proc_cgroup)
    for folder in dict.fromkeys((root / group, root)):  # v2: the own group first, then the root
        limit = _read_int(folder / "memory.max")
        if limit is not None:
            return CgroupMemory(limit, _read_int(folder / "memory.current") or 0)
    v1 = root / "memory"
    limit = _read_int(v1 / "memory.limit_in_bytes")
    # v1 writes "unlimited" as a page-rounded 2**63 - 1; anything near it is no cap
    if limit is not None and limit < 1 << 60:
        return CgroupMemory(limit, _read_int(v1 / "memory.usage_in_bytes") or 0)
    return None


def ram_total_available(
    host_total: int, host_available: int, cap: CgroupMemory | None = None
) -> tuple[int, int]:
    """(total, available) RAM for this process: the host's figures under the cgroup's cap.

    `cap` defaults to `cgroup_memory()`; a cap above the host's RAM changes nothing.
    """
    cap = cgroup_memory() if cap is None else cap
    if cap is None or cap.limit >= host_total:
        return host_total, host_available
    return cap.limit, max(0, min(host_available, cap.limit - cap.used))
