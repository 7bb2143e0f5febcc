"""Fake plans, devices, hardware and model specs for the assistant's tests (no planner needed).

The fakes have exactly the attributes the assistant reads from `affiner.planner.recommend`'s
`PlanReport`/`Candidate`, so a test states the numbers and checks the words.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from affiner.planner.hardware.device import DeviceTarget
from affiner.planner.hardware.report import CpuInfo, GpuInfo, HardwareReport
from affiner.planner.models.spec import LinearTarget, ModelSpec

GIB = 2**30  # binary GiB, the unit affiner writes memory in (`affiner.planner.units`)


@dataclass
class FakeCandidate:
    method: str
    peak_bytes: int
    fits: bool
    step_seconds: float | None
    reasons: list[str] = field(default_factory=list)
    breakdown: dict[str, int] = field(default_factory=dict)
    micro_batch: int = 4
    seq_len: int = 512
    lora_rank: int | None = 16
    precision: str = "bf16"


@dataclass
class FakeReport:
    candidates: list[FakeCandidate]
    recommended: int | None


def gpu_device(name: str = "NVIDIA GeForce RTX 4090", gib: float = 24.0) -> DeviceTarget:
    return DeviceTarget(
        kind="cuda",
        name=name,
        source="detected",
        memory_total=int(gib * GIB),
        memory_free=int(gib * GIB),
        bf16=True,
        fp16=True,
        compute_capability=(8, 9),
        index=0,
    )


def fake_plan(
    rank: int = 16, seq_len: int = 512, batch: int = 4, capacity_gib: float = 24.0
) -> FakeReport:
    """Full does not fit (61 GiB), LoRA is recommended, QLoRA fits; memory grows with settings."""
    grow = (rank / 16 - 1) * 0.5 * GIB + (seq_len / 512 - 1) * 2 * GIB + (batch / 4 - 1) * 1.5 * GIB
    cap = capacity_gib * GIB
    candidates = [
        FakeCandidate(
            "full",
            int(61 * GIB + grow),
            61 * GIB + grow <= cap,
            2.1,
            ["weights, gradients and AdamW states of all 7.2 B parameters"],
        ),
        FakeCandidate(
            "lora",
            int(16.5 * GIB + grow),
            16.5 * GIB + grow <= cap,
            0.9,
            ["bf16 weights plus a small adapter: the fastest plan that fits"],
        ),
        FakeCandidate(
            "qlora",
            int(6.2 * GIB + grow),
            6.2 * GIB + grow <= cap,
            1.4,
            ["4-bit base: least memory, about 1.5× slower than LoRA"],
        ),
    ]
    fitting = [i for i, c in enumerate(candidates) if c.fits and c.method != "full"]
    return FakeReport(candidates, fitting[0] if fitting else None)


def fake_planner(spec: Any, device: DeviceTarget, request: Any) -> FakeReport:
    """A stand-in for `affiner.planner.recommend.plan` that reads the request's settings."""
    return fake_plan(
        getattr(request, "lora_rank", 16),
        getattr(request, "seq_len", 512),
        getattr(request, "target_batch", 16) // 4,
        device.memory_free / GIB,
    )


def hardware(gpus: bool = True) -> HardwareReport:
    gpu = GpuInfo(
        index=0,
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-0",
        memory_total=24 * GIB,
        memory_used=0,
        memory_free=24 * GIB,
        compute_capability=(8, 9),
        bf16=True,
    )
    return HardwareReport(
        gpus=(gpu,) if gpus else (),
        gpu_reason=None if gpus else "NVML Shared Library Not Found",
        driver_version="550.54",
        cuda_driver_version="12.4",
        cpu=CpuInfo(model="Test CPU", physical_cores=8, logical_cores=16, bf16=True),
        ram_total=64 * GIB,
        ram_available=48 * GIB,
        disk_path="/runs",
        disk_free=500 * GIB,
        disk_total=1000 * GIB,
    )


def model_spec(name: str = "llama-7b", path: str | None = None, max_pos: int = 4096) -> ModelSpec:
    return ModelSpec(
        name=name,
        model_type="llama",
        architecture="LlamaForCausalLM",
        source="config",
        hidden_size=4096,
        num_layers=32,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=11008,
        vocab_size=32000,
        max_position_embeddings=max_pos,
        tied_embeddings=False,
        mlp_kind="gated",
        hidden_act="silu",
        norm_kind="rmsnorm",
        params_total=6_738_415_616,
        modules={"attention": 1, "mlp": 1},
        lora_targets=(LinearTarget("q_proj", 4096, 4096, 32),),
        path=path,
    )


def with_capacity(device: DeviceTarget, gib: float) -> DeviceTarget:
    return replace(device, memory_total=int(gib * GIB), memory_free=int(gib * GIB))


def make_adapter(base: Any, folder: Any) -> Any:
    """Save a LoRA adapter with non-zero weights for the tiny model at `base` into `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(folder)
    return folder


class FakeChat:
    """A `ChatSession` stand-in that streams fixed words (for snapshots: same text every run)."""

    task = "causal_lm"
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    adapter = "adapter/"

    def load(self) -> FakeChat:
        return self

    def stream(self, messages, use_adapter=True, max_new_tokens=256, temperature=0.7):
        words = (
            "The sea is calm tonight, and the lighthouse keeper counts the waves."
            if use_adapter
            else "the the sea sea a a mat"
        )
        for word in words.split(" "):
            yield word + " "
