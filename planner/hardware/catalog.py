"""The GPUs people fine-tune on, with the figures the planner needs.

`--gpu 4090` plans for a card you do not have (yet), and a detected GPU gets its throughput
from here because NVML reports memory but not TFLOP/s.

The figures:
- memory: what NVML reports on the card (``nvidia-smi``'s MiB total), which is a little
  below the marketing figure and is what a run can at most see.
- TFLOP/s: *dense* peaks from NVIDIA's data sheets and architecture whitepapers (the
  sheets' headline figures include 2:4 sparsity; those are halved here). bf16/fp16 are
  tensor-core figures with FP32 accumulate, the mode mixed-precision training uses; on
  GeForce cards that mode runs at half the FP16-accumulate rate the box advertises.
  fp32 is the non-tensor (CUDA core) rate. None means the dtype has no fast path.
- bandwidth: GB/s (10^9 bytes) of device memory.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.units import MIB


@dataclass(frozen=True)
class GpuModel:
    """One GPU model.

    Attributes:
        name: short display name (``RTX 4090``, ``H100 80GB SXM``).
        aliases: other spellings `lookup` accepts (compared after `normalize`).
        memory: bytes NVML reports as total on this card.
        compute_capability: CUDA (major, minor).
        bf16, fp16: the dtype is usable for mixed-precision training.
        tflops_bf16, tflops_fp16, tflops_fp32: dense peak TFLOP/s (see the module docstring).
        bandwidth_gbs: memory bandwidth, GB/s.
        detect: lower-case tokens that must all appear in an NVML name for `match_detected`.
        note: where a figure comes from when it is not an NVIDIA data sheet.
    """

    name: str
    aliases: tuple[str, ...]
    memory: int
    compute_capability: tuple[int, int]
    bf16: bool
    fp16: bool
    tflops_bf16: float | None
    tflops_fp16: float | None
    tflops_fp32: float
    bandwidth_gbs: float
    detect: tuple[str, ...]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _gpu(
    name: str,
    aliases: tuple[str, ...],
    mib: int,
    cc: tuple[int, int],
    bf16: float | None,
    fp16: float | None,
    fp32: float,
    bandwidth: float,
    detect: tuple[str, ...],
    note: str = "",
) -> GpuModel:
    return GpuModel(
        name=name,
        aliases=aliases,
        memory=mib * MIB,
        compute_capability=cc,
        bf16=bf16 is not None,
        fp16=fp16 is not None,
        tflops_bf16=bf16,
        tflops_fp16=fp16,
        tflops_fp32=fp32,
        bandwidth_gbs=bandwidth,
        detect=detect,
        note=note,
    )


_GEFORCE = "GeForce: tensor figures with FP32 accumulate (half the advertised FP16-accumulate rate)"

#: Every GPU `lookup` knows, oldest architecture first.
CATALOG: tuple[GpuModel, ...] = (
    _gpu("P100 16GB", ("p100",), 16280, (6, 0), None, 18.7, 9.3, 732, ("p100",),
         "no tensor cores: fp16 is the CUDA-core half-precision rate (PCIe card)"),
    _gpu("V100 16GB", ("v100 16", "v100-16"), 16160, (7, 0), None, 125.0, 15.7, 900, ("v100", "16gb"),
         "SXM2 figures; the PCIe card is about 10% slower"),
    _gpu("V100 32GB", ("v100 32", "v100-32"), 32510, (7, 0), None, 125.0, 15.7, 900, ("v100", "32gb"),
         "SXM2 figures; the PCIe card is about 10% slower"),
    _gpu("T4", ("tesla t4", "t4 16gb"), 15360, (7, 5), None, 65.0, 8.1, 320, ("t4",)),
    _gpu("RTX 3060 12GB", ("3060", "rtx 3060", "3060 12gb"), 12288, (8, 6), 25.6, 25.6, 12.7, 360,
         ("3060",), _GEFORCE),
    _gpu("RTX 3080 10GB", ("3080", "rtx 3080"), 10240, (8, 6), 59.5, 59.5, 29.8, 760, ("3080",),
         _GEFORCE),
    _gpu("RTX 3090", ("3090", "rtx 3090", "3090 24gb"), 24576, (8, 6), 71.0, 71.0, 35.6, 936,
         ("3090",), _GEFORCE),
    _gpu("A10", ("a10 24gb",), 23028, (8, 6), 125.0, 125.0, 31.2, 600, ("a10",)),
    _gpu("A10G", ("a10g 24gb", "aws a10g", "g5"), 23028, (8, 6), 70.0, 70.0, 35.0, 600, ("a10g",),
         "AWS-only variant without an NVIDIA data sheet: commonly published AWS figures"),
    _gpu("RTX A6000", ("a6000", "rtx a6000", "a6000 48gb"), 49140, (8, 6), 154.8, 154.8, 38.7, 768,
         ("a6000",)),
    _gpu("A40", ("a40 48gb",), 46068, (8, 6), 149.7, 149.7, 37.4, 696, ("a40",)),
    _gpu("A100 40GB", ("a100 40", "a100-40", "a100 40gb", "a100 sxm 40gb", "a100 pcie 40gb"),
         40960, (8, 0), 312.0, 312.0, 19.5, 1555, ("a100", "40gb")),
    _gpu("A100 80GB", ("a100 80", "a100-80", "a100 80gb", "a100 sxm 80gb"), 81920, (8, 0),
         312.0, 312.0, 19.5, 2039, ("a100", "80gb"), "SXM4 figures"),
    _gpu("A100 80GB PCIe", ("a100 pcie", "a100 80gb pcie", "a100-80-pcie"), 81920, (8, 0),
         312.0, 312.0, 19.5, 1935, ("a100", "80gb", "pcie")),
    _gpu("RTX 4060 Ti 16GB", ("4060 ti", "4060ti", "rtx 4060 ti", "4060 ti 16gb"), 16380, (8, 9),
         44.1, 44.1, 22.1, 288, ("4060", "ti"), _GEFORCE),
    _gpu("RTX 4080", ("4080", "rtx 4080", "4080 16gb"), 16376, (8, 9), 97.5, 97.5, 48.7, 717,
         ("4080",), _GEFORCE),
    _gpu("RTX 4090", ("4090", "rtx 4090", "4090 24gb"), 24564, (8, 9), 165.2, 165.2, 82.6, 1008,
         ("4090",), _GEFORCE),
    _gpu("L4", ("l4 24gb", "nvidia l4"), 23034, (8, 9), 121.0, 121.0, 30.3, 300, ("l4",)),
    _gpu("L40", ("l40 48gb",), 46068, (8, 9), 181.0, 181.0, 90.5, 864, ("l40",)),
    _gpu("L40S", ("l40s 48gb", "l40-s"), 46068, (8, 9), 362.0, 362.0, 91.6, 864, ("l40s",)),
    _gpu("H100 80GB SXM", ("h100", "h100 sxm", "h100 80gb", "h100 sxm5", "h100 80gb hbm3"), 81559,
         (9, 0), 989.4, 989.4, 67.0, 3350, ("h100",)),
    _gpu("H100 80GB PCIe", ("h100 pcie", "h100-pcie", "h100 80gb pcie"), 81559, (9, 0),
         756.5, 756.5, 51.2, 2000, ("h100", "pcie")),
    _gpu("H100 NVL 94GB", ("h100 nvl", "h100-nvl"), 95830, (9, 0), 835.5, 835.5, 60.0, 3900,
         ("h100", "nvl")),
    _gpu("H200", ("h200 141gb", "h200 sxm", "h200 nvl"), 143771, (9, 0), 989.4, 989.4, 67.0, 4800,
         ("h200",)),
    _gpu("B200", ("b200 180gb", "hgx b200"), 183359, (10, 0), 2250.0, 2250.0, 75.0, 7700,
         ("b200",), "HGX B200 figures per GPU"),
    _gpu("RTX 5090", ("5090", "rtx 5090", "5090 32gb"), 32607, (12, 0), 209.5, 209.5, 104.8, 1792,
         ("5090",), _GEFORCE),
)  # fmt: skip

#: Names that are more than one card: `lookup` asks which one rather than guessing.
AMBIGUOUS: dict[str, tuple[str, ...]] = {
    "a100": ("A100 40GB", "A100 80GB"),
    "v100": ("V100 16GB", "V100 32GB"),
}

_NOISE = ("nvidia", "geforce", "tesla", "quadro", "rtx")


def normalize(text: str) -> str:
    """Compare names the way people type them: ``RTX 4090``, ``rtx4090`` and ``4090`` agree."""
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    for word in _NOISE:
        key = key.replace(word, "")
    return re.sub(r"(\d)gb", r"\1", key)


def _index() -> dict[str, GpuModel]:
    index: dict[str, GpuModel] = {}
    for model in CATALOG:
        for spelling in (model.name, *model.aliases):
            index.setdefault(normalize(spelling), model)
    return index


_INDEX = _index()


def lookup(name: str) -> GpuModel:
    """The catalog GPU a person means by `name`; forgiving about case, spaces and brand words.

    Raises:
        AffinerError: the name is unknown (close matches listed) or means more than one card.
    """
    key = normalize(name)
    if key in _INDEX:
        return _INDEX[key]
    if key in AMBIGUOUS:
        options = AMBIGUOUS[key]
        raise AffinerError(
            f"'{name}' is more than one GPU: {', '.join(options)}",
            hint="say which, e.g. --gpu "
            + " or --gpu ".join(o.lower().replace(" ", "-") for o in options),
        )
    detected = match_detected(name)
    if detected is not None:
        return detected
    close = difflib.get_close_matches(key, list(_INDEX), n=4, cutoff=0.6)
    names = list(dict.fromkeys(_INDEX[k].name for k in close))
    if not names and key:
        names = [m.name for m in CATALOG if key in normalize(m.name)][:4]
    message = f"unknown GPU '{name}'"
    if names:
        message += f"; did you mean {', '.join(names)}?"
    raise AffinerError(
        message,
        hint="`affiner hw --catalog` lists the GPUs affiner knows; for any other card "
        "plan by memory with --vram GiB",
    )


def _tokens(text: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", text.lower())) - {""}


def match_detected(nvml_name: str, memory_total: int | None = None) -> GpuModel | None:
    """The catalog entry for a name NVML reports (``NVIDIA H100 80GB HBM3``), or None.

    An entry matches when all its `detect` tokens are in the name; the most specific match
    wins (``H100 PCIe`` over ``H100``). When the name leaves the memory size open (``NVIDIA
    A100``), `memory_total` from NVML picks the closest size.
    """
    tokens = _tokens(nvml_name)
    found = [m for m in CATALOG if set(m.detect) <= tokens]
    if not found:
        if memory_total is None:
            return None
        family = [m for m in CATALOG if m.detect[0] in tokens]
        near = [m for m in family if abs(m.memory - memory_total) <= 0.15 * m.memory]
        return min(near, key=lambda m: abs(m.memory - memory_total)) if near else None
    best = max(len(m.detect) for m in found)
    found = [m for m in found if len(m.detect) == best]
    if memory_total is not None:
        found.sort(key=lambda m: abs(m.memory - memory_total))
    return found[0]
