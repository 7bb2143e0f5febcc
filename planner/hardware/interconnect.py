"""How fast the GPUs of one machine, and the machines of a cluster, talk to each other.

The communication part of a multi-GPU time estimate (`affiner.planner.communication`) needs
one figure per link: the bytes a second one GPU can send to its neighbour in a ring. The
figures are per direction (half the bidirectional totals data sheets headline):

- NVLink, SXM parts, from NVIDIA's data sheets: V100 SXM2 NVLink 2, 300 GB/s total (150 per
  direction); A100 SXM4 NVLink 3, 600 GB/s (300); H100/H200 SXM5 NVLink 4, 900 GB/s (450);
  B200 NVLink 5, 1.8 TB/s (900). The H100 NVL's bridge joins pairs at 600 GB/s (300).
- PCIe, the PCIe cards and every GeForce card (no NVLink, and GeForce has no peer-to-peer:
  traffic goes through the host), from the PCI-SIG figures for x16: Gen3 about 16 GB/s per
  direction, Gen4 32, Gen5 64.
- A GPU the catalog does not know is assumed to be on PCIe Gen4.

Between nodes there is no figure to read: the plan states its assumption in words,
`INTER_NODE` (InfiniBand NDR, 400 Gb/s per node), and that ethernet is several times slower.
On the CPU the processes talk through gloo over loopback TCP, `CPU_LOOPBACK`.

NCCL's rings reach only part of a link's rate (its own ``nccl-tests`` report bus bandwidths
around 70-80% of NVLink's and PCIe's nominal figures): `LINK_EFFICIENCY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from affiner.planner.hardware.device import DeviceTarget


@dataclass(frozen=True)
class Link:
    """One kind of link and its rate.

    Attributes:
        name: in words (``NVLink 4``, ``PCIe Gen4 x16``, ``InfiniBand 400 Gb/s``).
        gbs: GB/s (10^9 bytes) one GPU sends in one direction, nominal.
        assumed: the figure is an assumption, not the card's own (said in the plan).
    """

    name: str
    gbs: float
    assumed: bool = False


NVLINK2 = Link("NVLink 2", 150.0)
NVLINK3 = Link("NVLink 3", 300.0)
NVLINK4 = Link("NVLink 4", 450.0)
NVLINK5 = Link("NVLink 5", 900.0)
NVLINK_BRIDGE = Link("NVLink bridge (pairs)", 300.0)
PCIE3 = Link("PCIe Gen3 x16", 16.0)
PCIE4 = Link("PCIe Gen4 x16", 32.0)
PCIE5 = Link("PCIe Gen5 x16", 64.0)
#: A GPU the catalog does not know (a bare --vram figure, an unknown card).
UNKNOWN_GPU = Link("PCIe Gen4 x16 (assumed)", 32.0, assumed=True)
#: Between nodes: InfiniBand NDR, one 400 Gb/s port per node (50 GB/s per direction).
INTER_NODE = Link("InfiniBand 400 Gb/s per node (assumed; ethernet is several times slower)",
                  50.0, assumed=True)  # fmt: skip
#: gloo between CPU processes of one machine over loopback TCP (a few GB/s on a server CPU).
CPU_LOOPBACK = Link("gloo over loopback TCP (about 2 GB/s assumed)", 2.0, assumed=True)
#: The share of a link's nominal rate NCCL's ring collectives reach (see the module docstring).
LINK_EFFICIENCY = 0.75

#: The link of each catalog GPU (`affiner.planner.hardware.catalog.CATALOG` names).
BY_GPU: dict[str, Link] = {
    "P100 16GB": PCIE3,
    "V100 16GB": NVLINK2,
    "V100 32GB": NVLINK2,
    "T4": PCIE3,
    "RTX 3060 12GB": PCIE4,
    "RTX 3080 10GB": PCIE4,
    "RTX 3090": PCIE4,
    "A10": PCIE4,
    "A10G": PCIE4,
    "RTX A6000": PCIE4,
    "A40": PCIE4,
    "A100 40GB": NVLINK3,
    "A100 80GB": NVLINK3,
    "A100 80GB PCIe": PCIE4,
    "RTX 4060 Ti 16GB": PCIE4,
    "RTX 4080": PCIE4,
    "RTX 4090": PCIE4,
    "L4": PCIE4,
    "L40": PCIE4,
    "L40S": PCIE4,
    "H100 80GB SXM": NVLINK4,
    "H100 80GB PCIe": PCIE5,
    "H100 NVL 94GB": NVLINK_BRIDGE,
    "H200": NVLINK4,
    "B200": NVLINK5,
    "RTX 5090": PCIE5,
}


def gpu_link(device: DeviceTarget) -> Link:
    """The link between the GPUs of one machine of `device`'s kind (the CPU's loopback)."""
    if device.is_cpu:
        return CPU_LOOPBACK
    from affiner.planner.errors import AffinerError
    from affiner.planner.hardware.catalog import lookup, match_detected

    model = None
    if device.source == "detected":
        model = match_detected(device.name, device.memory_total)
    elif device.source == "catalog":
        try:
            model = lookup(device.name.split(" (")[0])  # "A100 80GB (40 GiB)": --gpu with --vram
        except AffinerError:
            model = None
    return BY_GPU.get(model.name, UNKNOWN_GPU) if model is not None else UNKNOWN_GPU


def ring_link(device: DeviceTarget, nodes: int) -> Link:
    """The slowest link a ring over the run's devices crosses: within a node its GPUs' link;
    over several nodes the slower of that and `INTER_NODE` (every node's port carries the
    ring's traffic once)."""
    inside = gpu_link(device)
    if nodes <= 1 or device.is_cpu:
        return inside
    return INTER_NODE if INTER_NODE.gbs < inside.gbs else inside
