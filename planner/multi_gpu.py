"""The fewest GPUs a method fits on, and how to spread it: `smallest_layout` -> `Layout`.

When a model does not fit one GPU (or only a lower-fidelity method does), the question users
ask is "how many of these would it take?". The answer is searched, not guessed: for 2, 3, ...
devices, each layout is sized by the same memory model as a single-GPU plan, cheapest settings
first (micro-batch 1, checkpointing unless stated off, the variants the request leaves open),
and the first that fits is planned in full (`_candidate`), so its peak, step time and
communication are the plan's own.

Layouts tried for one count, cheapest communication first: ``ddp`` (a replica on each: only
gradients travel), then ``fsdp`` (torch's own full sharding; DeepSpeed's ZeRO needs an extra
install and shards no more). A quantized base stays on ``ddp`` (run.toml refuses to shard it).
Counts: the machine's own GPUs first (2 up to how many it has), then whole nodes of them; for
a GPU the machine does not have, nodes of `GPUS_PER_NODE` (2, 4, 8, then 16, 32, 64 over 2,
4, 8 nodes), up to `MAX_GPUS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from affiner.planner import explain
from affiner.planner.communication import STRATEGY_NAMES
from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import estimate_memory
from affiner.planner.models import ModelSpec
from affiner.planner.plan_request import PlanRequest
from affiner.planner.plan_search import MICRO_BATCHES, _base_settings, _variants
from affiner.planner.units import format_bytes
from affiner.planner.vocabulary import QUANTIZED_METHODS

if TYPE_CHECKING:
    from affiner.planner.plan_candidates import Candidate

#: GPUs in one node of a machine the planner does not see (a rented 8-GPU box).
GPUS_PER_NODE = 8
#: The most GPUs a layout search goes to.
MAX_GPUS = 64


@dataclass
class Layout:
    """A method spread over several GPUs that fits each of them.

    Attributes:
        method: the method planned.
        num_gpus: GPUs over all nodes.
        nodes: machines they are on.
        sharding: ``ddp`` or ``fsdp`` (run.toml's ``[distributed].strategy``).
        candidate: the full plan at this layout (fits).
        machine_gpus: GPUs of this model on this machine (None: the plan is for a GPU it
            does not see).
    """

    method: str
    num_gpus: int
    nodes: int
    sharding: str
    candidate: Candidate
    machine_gpus: int | None = None

    @property
    def peak_bytes(self) -> int:
        """The predicted peak of each GPU."""
        return self.candidate.peak_bytes

    @property
    def on_this_machine(self) -> bool:
        """This machine has enough of these GPUs to run it."""
        return self.machine_gpus is not None and self.num_gpus <= self.machine_gpus

    @property
    def strategy_name(self) -> str:
        return STRATEGY_NAMES[self.sharding]

    def text(self) -> str:
        """``4 of these GPUs with FSDP fit full fine-tuning (31.2 GiB per GPU); this machine
        has 8``."""
        gpus = f"{self.num_gpus} of these GPUs"
        if self.nodes > 1:
            gpus += f" ({self.nodes} nodes of {self.num_gpus // self.nodes})"
        line = (
            f"{gpus} with {self.strategy_name} fit {explain.METHOD_NAMES[self.method]} "
            f"({format_bytes(self.peak_bytes)} per GPU)"
        )
        if self.machine_gpus is not None:
            line += f"; this machine has {self.machine_gpus}"
        return line

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "num_gpus": self.num_gpus,
            "nodes": self.nodes,
            "sharding": self.sharding,
            "peak_bytes": self.peak_bytes,
            "step_seconds": self.candidate.time.step_seconds,
            "machine_gpus": self.machine_gpus,
            "on_this_machine": self.on_this_machine,
            "text": self.text(),
        }


def machine_gpus(device: DeviceTarget) -> int | None:
    """GPUs of `device`'s model on this machine; None for a GPU it does not see."""
    return device.count if device.source == "detected" and not device.is_cpu else None


def counts(device: DeviceTarget) -> list[tuple[int, int]]:
    """(GPUs over all nodes, nodes) to try, fewest first (see the module docstring)."""
    have = machine_gpus(device)
    several = bool(have and have > 1)
    per_node = have if several and have else GPUS_PER_NODE
    out = [(n, 1) for n in range(2, per_node + 1) if several or n in (2, 4, 8)]
    nodes = 2
    while per_node * nodes <= MAX_GPUS:
        out.append((per_node * nodes, nodes))
        nodes *= 2
    return out


def _fits_cheaply(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str, usable: int
) -> bool:
    """Whether `method` fits at the request's layout with its cheapest settings.

    Checkpointing on (unless stated off) and every micro-batch the search tries: the smallest
    is not always the cheapest, since accumulating over several keeps a step's gradients.
    """
    base = _base_settings(spec, device, request, method)
    checkpointing = request.gradient_checkpointing is not False
    target = max(request.target_batch, 1)
    sizes = (
        [request.micro_batch]
        if request.micro_batch
        else [1] + [m for m in sorted(MICRO_BATCHES) if 1 < m <= target // request.num_gpus]
    )
    for variant in _variants(base, request):
        for mb in sizes:
            s = variant.with_(
                micro_batch=mb,
                grad_accum=max(1, -(-target // (mb * variant.num_gpus))),
                gradient_checkpointing=checkpointing,
                padded=mb > 1 and not variant.packing,
            )
            if estimate_memory(spec, s, device).peak_bytes <= usable:
                return True
    return False


def smallest_layout(
    spec: ModelSpec, device: DeviceTarget, request: PlanRequest, method: str, usable: int
) -> Layout | None:
    """The fewest GPUs `method` fits on and the strategy, planned in full; None past `MAX_GPUS`
    or on the CPU (its processes share one memory: more of them never fit more)."""
    if device.is_cpu:
        return None
    from affiner.planner.plan_candidates import _candidate

    strategies = ("ddp",) if method in QUANTIZED_METHODS else ("ddp", "fsdp")
    for n, nodes in counts(device):
        for strategy in strategies:
            spread = replace(request, num_gpus=n, nodes=nodes, sharding=strategy)
            if not _fits_cheaply(spec, device, spread, method, usable):
                continue
            c = _candidate(spec, device, spread, method, usable, alternatives=False)
            if c.fits:
                return Layout(method, n, nodes, strategy, c, machine_gpus(device))
    return None
