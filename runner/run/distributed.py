"""A multi-process run as files and commands, without torch: what the launcher needs.

A run whose ``[distributed]`` asks for more than one process is still one detached worker
(`affiner.runner.worker`): it *supervises* (`affiner.runner.run.supervise`). It writes the run's
``accelerate.yaml`` (the launch topology and the strategy, in accelerate's own words, so the
same layout can be launched by hand), then starts ``accelerate launch`` on it, which starts one
rank process per GPU through torchrun. Every rank is ``python -m affiner.runner.worker RUN
--rank``: it writes a record of itself into ``ranks/`` when it starts and again when it ends,
and ranks other than 0 write their output to ``ranks/rank-N.log`` (rank 0 keeps ``train.log``).
Those records are how the supervisor forwards a stop to every rank and says which rank died.

The strategy itself is applied by the Trainer (`affiner.runner.training.setup`): FSDP2 through
``fsdp_config``, ZeRO through a DeepSpeed config file (``deepspeed.json`` in the run folder),
DDP by default. The accelerate file says the same, so a reader sees one layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from affiner.runner.config import RunConfig
from affiner.runner.run.rundir import RunDir

#: The run folder's accelerate config (written by the supervisor before it launches).
ACCELERATE_FILE = "accelerate.yaml"
#: The DeepSpeed config a ZeRO run trains with (the Trainer reads it; accelerate names it).
DEEPSPEED_FILE = "deepspeed.json"
#: Each rank's record (``rank-N.json``) and, for ranks other than 0, its output (``rank-N.log``).
RANKS_DIR = "ranks"
#: The supervisor's pid, for the ranks: rank 0 writes it into ``status.json`` as the run's
#: process (the one `affiner stop` signals), never its own.
SUPERVISOR_PID_ENV = "AFFINER_SUPERVISOR_PID"
#: What a rank's command line carries besides the worker module and the run folder.
RANK_FLAG = "--rank"

_DISTRIBUTED_TYPE = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}


def run_pid() -> int:
    """The run's process as `affiner stop` knows it: a rank's supervisor, else this process."""
    return int(os.environ.get(SUPERVISOR_PID_ENV, "0") or 0) or os.getpid()


def ranks_dir(rd: RunDir) -> Path:
    return rd.path / RANKS_DIR


def rank_log(rd: RunDir, rank: int) -> Path:
    """Where a rank's output goes: ``train.log`` for rank 0, ``ranks/rank-N.log`` for the others."""
    return rd.log if rank == 0 else ranks_dir(rd) / f"rank-{rank}.log"


def deepspeed_config(stage: int) -> dict[str, Any]:
    """ZeRO stage 2 or 3 for the Trainer; "auto" values are filled in from its own arguments
    (batch, accumulation, clipping, precision), so run.toml stays the one place they are set."""
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        # the saved adapter or model is whole (one file a plain from_pretrained loads)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def fsdp_config() -> dict[str, Any]:
    """torch's FSDP2 over every process, wrapped block by block (the model's own
    ``_no_split_modules`` name the blocks), weights resharded after each block's forward, and
    checkpoints gathered whole so ``adapter/`` and ``merged/`` load anywhere."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",
    }


def accelerate_config(cfg: RunConfig, rd: RunDir, *, port: int, node_rank: int) -> dict[str, Any]:
    """The run's layout in accelerate's config words (what ``accelerate launch`` reads).

    ``num_processes`` is accelerate's total over every machine. ``use_cpu`` stays false even
    for a CPU run: accelerate's CPU path would start one process (or need MPI); the ranks go
    to the CPU by the Trainer's ``use_cpu`` and talk over gloo.
    """
    d = cfg.distributed
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": _DISTRIBUTED_TYPE[d.strategy],
        "num_machines": d.nodes,
        "num_processes": d.world_size,
        "machine_rank": node_rank,
        "main_process_ip": d.main_address,
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "mixed_precision": "no",  # the Trainer's bf16/fp16 from [training].precision decide
        "use_cpu": False,
        "downcast_bf16": "no",
    }
    if d.strategy == "fsdp":
        out["fsdp_config"] = {f"fsdp_{key}": value for key, value in fsdp_config().items()}
    elif d.strategy in ("zero2", "zero3"):
        out["deepspeed_config"] = {
            "deepspeed_config_file": str(rd.path / DEEPSPEED_FILE),
            "deepspeed_multinode_launcher": "standard",  # torchrun on each node, as for the others
            "zero3_init_flag": d.strategy == "zero3",
        }
    return out


def dump_yaml(data: dict[str, Any], indent: int = 0) -> str:
    """YAML for a flat mapping of scalars with nested mappings (all accelerate's file needs)."""
    lines = []
    for key, value in data.items():
        pad = " " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(dump_yaml(value, indent + 2).rstrip("\n"))
        else:
            lines.append(f"{pad}{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_launch_files(cfg: RunConfig, rd: RunDir, *, port: int, node_rank: int) -> Path:
    """Write ``accelerate.yaml`` (and ``deepspeed.json`` for ZeRO); returns the accelerate file."""
    ranks_dir(rd).mkdir(exist_ok=True)
    if cfg.distributed.strategy in ("zero2", "zero3"):
        stage = 3 if cfg.distributed.strategy == "zero3" else 2
        _write_atomic(
            rd.path / DEEPSPEED_FILE, json.dumps(deepspeed_config(stage), indent=2) + "\n"
        )
    header = (
        "# accelerate's config for this run (written by affiner from run.toml's [distributed]);\n"
        "# `accelerate launch --config_file` on it starts the same layout by hand.\n"
    )
    target = rd.path / ACCELERATE_FILE
    _write_atomic(
        target, header + dump_yaml(accelerate_config(cfg, rd, port=port, node_rank=node_rank))
    )
    return target


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def launch_argv(
    rd: RunDir,
    *,
    node_rank: int,
    port: int,
    resume: bool,
    python: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """``python -m accelerate.commands.launch --config_file RUN/accelerate.yaml ... -m
    affiner.runner.worker RUN --rank [--resume]``: this interpreter's accelerate, so the ranks
    run the same environment as the worker."""
    from affiner.runner.run.process import WORKER_MODULE

    return [
        python or sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(rd.path / ACCELERATE_FILE),
        "--machine_rank",
        str(node_rank),
        "--main_process_port",
        str(port),
        "--monitor_interval",
        "1",
        "-m",
        WORKER_MODULE,
        str(rd.path),
        RANK_FLAG,
        *(["--resume"] if resume else []),
        *(extra or []),
    ]


def node_commands(cfg: RunConfig, rd: RunDir, config_path: Path | None = None) -> list[str]:
    """The command each node runs, node 0 first: on one node, just ``affiner train``.

    Every node names the same run.toml (a shared folder, or the same path copied there) and
    its own place with ``--node-rank``; the other nodes' run folders are named after the main
    one (``ID-node1``), so a shared runs folder never holds two writers of one run.
    """
    toml = shlex.quote(str(config_path or rd.config))
    commands = [f"affiner train {toml}"]
    for node in range(1, cfg.distributed.nodes):
        commands.append(
            f"affiner train {toml} --node-rank {node} --run-id {shlex.quote(rd.run_id)}-node{node}"
        )
    return commands


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the rendezvous of a one-node run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- rank records


@dataclass
class RankRecord:
    """What one rank says of itself in ``ranks/rank-N.json``: written as it starts, and again
    with `exit_code` and `reason` as it ends (a rank killed by a signal never writes the end).

    Attributes:
        rank: over all nodes; local_rank: on its node; node: the node's rank.
        pid, host: the process.
        started, ended: Unix times.
        exit_code: the worker's exit code (`affiner.runner.train`'s), None while it runs or when
            it was killed.
        reason: one line on how it ended (an exception's first line for a crash).
        step: the last optimizer step it saw.
    """

    rank: int
    local_rank: int = 0
    node: int = 0
    pid: int = 0
    host: str = ""
    started: float = 0.0
    ended: float | None = None
    exit_code: int | None = None
    reason: str = ""
    step: int = 0


def this_rank() -> RankRecord:
    """The record of this process, from torchrun's environment."""
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    node = int(os.environ.get("GROUP_RANK", str(rank // max(per_node, 1))) or 0)
    return RankRecord(
        rank=rank,
        local_rank=local,
        node=node,
        pid=os.getpid(),
        host=socket.gethostname(),
        started=time.time(),
    )


def write_rank_record(rd: RunDir, record: RankRecord) -> None:
    folder = ranks_dir(rd)
    folder.mkdir(exist_ok=True)
    _write_atomic(folder / f"rank-{record.rank}.json", json.dumps(asdict(record)) + "\n")


def read_rank_records(rd: RunDir) -> list[RankRecord]:
    """Every rank record in the run folder, by rank; unreadable ones are left out."""
    names = {f.name for f in fields(RankRecord)}
    out = []
    for path in sorted(ranks_dir(rd).glob("rank-*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            out.append(RankRecord(**{k: v for k, v in data.items() if k in names}))
    return sorted(out, key=lambda r: r.rank)


def clear_rank_records(rd: RunDir) -> None:
    """Forget the last attempt's records before a launch (their pids mean nothing now)."""
    for path in ranks_dir(rd).glob("rank-*.json"):
        path.unlink(missing_ok=True)


def log_tail(path: Path, lines: int = 8, width: int = 300) -> list[str]:
    """The last `lines` non-empty lines of a log, each cut to `width` (empty if unreadable)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # a progress bar redraws itself with carriage returns: its last drawing is the line
    kept = [line.split("\r")[-1].rstrip()[:width] for line in text.split("\n")]
    return [line for line in kept if line.strip()][-lines:]


_SIGNAL_LINE = re.compile(r"Signal (\d+) \((SIG[A-Z0-9]+)\) received by PID (\d+)")


def signal_from_launcher(log_text: str, pid: int) -> str | None:
    """The signal torchrun's agent reported for `pid` in train.log ("SIGKILL"), if it did."""
    for _number, name, found in _SIGNAL_LINE.findall(log_text):
        if int(found) == pid:
            return name
    return None
