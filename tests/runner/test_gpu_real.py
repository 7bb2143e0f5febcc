"""What only a real NVIDIA GPU can confirm about the CUDA paths (skipped without one).

`tests/test_gpu_paths_cpu.py` checks the same decisions against fakes; these run them on the
device: NVML and torch name the same GPU, the CUDA context figure is plausible, 4-bit and
8-bit LoRA load and train a step on the GPU, the CPU repack guard does nothing there, and an
out-of-memory error is recognised and its memory given back. About a minute on an H100.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a driver"),
]


def test_nvml_and_torch_name_the_same_gpu() -> None:
    pynvml = pytest.importorskip("pynvml")
    from affiner.runner.training.sampler import nvml_handle_for_torch_device

    index = torch.cuda.current_device()
    torch.zeros(1, device="cuda")
    pynvml.nvmlInit()
    try:
        handle = nvml_handle_for_torch_device(pynvml, index)
        assert handle is not None, str(torch.cuda.get_device_properties(index).uuid)
        assert str(torch.cuda.get_device_properties(index).uuid) in pynvml.nvmlDeviceGetUUID(handle)
    finally:
        pynvml.nvmlShutdown()


def test_the_cuda_context_is_measured() -> None:
    import affiner.runner.training.preflight as preflight

    torch.ones(1024, 1024, device="cuda").matmul(torch.ones(1024, 1024, device="cuda"))
    context, note = preflight.cuda_context_bytes()
    if context is None:
        pytest.skip(f"NVML cannot attribute memory to this process here: {note}")
    assert 50 * 2**20 < context < 4 * 2**30, (context, note)


def test_auto_precision_matches_the_cards_bf16_units() -> None:
    from affiner.runner.training.modeling import resolve_precision

    native = torch.cuda.get_device_capability() >= (8, 0)
    assert resolve_precision("auto", "cuda").name == ("bf16" if native else "fp16")


def test_an_out_of_memory_error_is_recognised_and_its_memory_returned() -> None:
    import affiner.runner.training.preflight as preflight
    from affiner.runner.training.oom import is_oom

    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    free, total = torch.cuda.mem_get_info()
    keep = torch.empty(free // 2, dtype=torch.uint8, device="cuda")
    with pytest.raises(Exception) as info:
        torch.empty(total, dtype=torch.uint8, device="cuda")
    assert is_oom(info.value)
    del keep, info
    preflight._free_memory()
    assert torch.cuda.memory_reserved() <= before + 2 * 2**20


@pytest.mark.parametrize("method", ["qlora", "lora8"])
def test_quantized_lora_loads_and_trains_on_the_gpu(
    tiny_llama: Path, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    import bitsandbytes as bnb

    from affiner.runner.config.schema import RunConfig
    from affiner.runner.training.kbit import (
        INT8_LOGGER,
        count_repacked,
        disable_cpu_inference_repack,
    )
    from affiner.runner.training.modeling import load_model, load_tokenizer, resolve_precision

    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_llama)
    cfg.method.name = method
    cfg.training.gradient_checkpointing = True
    precision = resolve_precision("auto", "cuda")
    tokenizer = load_tokenizer(cfg)
    loaded = load_model(cfg, tokenizer, device="cuda", precision=precision)
    model = loaded.model
    kind = bnb.nn.Linear4bit if method == "qlora" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, kind) for m in model.modules())
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    if method == "qlora":
        assert disable_cpu_inference_repack(model) > 0 and count_repacked(model) == 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    ids = torch.randint(10, 200, (2, 32), device="cuda")
    model.train()
    with caplog.at_level(logging.WARNING, logger=INT8_LOGGER):
        for _ in range(2):
            with torch.autocast("cuda", dtype=precision.compute_dtype):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
    assert torch.isfinite(loss)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    casts = [r for r in caplog.records if "will be cast" in r.getMessage()]
    assert len(casts) <= 1


def test_the_sampler_reports_the_training_gpu() -> None:
    from affiner.runner.training.sampler import SystemSampler, _Nvml, take_sample

    torch.zeros(1, device="cuda")
    sampler = SystemSampler(writer=SimpleNamespace(write=lambda e: None), interval=60)  # type: ignore[arg-type]
    nvml = _Nvml()
    try:
        sample = take_sample(nvml, 0, sampler.device)
    finally:
        nvml.close()
    assert sample.torch_reserved and sample.torch_reserved > 0
    assert sample.gpus and all(g.memory_total for g in sample.gpus)


def test_the_peak_bench_meets_the_planners_bar_on_a_real_shape() -> None:
    """One cell of `bench/memory_peak.py --device cuda`: Qwen2-0.5B's shape, LoRA, 512 tokens.

    Both comparisons: the allocated peak (the memory model) and reserved + context (what
    nvidia-smi shows, where the planner's context and allocator-slack figures come in).
    """
    from affiner.planner.hardware.device import resolve_target
    from affiner.planner.hardware.probe import probe
    from bench import memory_peak
    from bench.peak_models import SHAPE_CONFIGS
    from bench.step_recipe import Cell

    cell = Cell("qwen2-0.5b", "lora", seq=512, batch=1, checkpointing=False)
    target = resolve_target(probe(), measure=False)
    rows = memory_peak.run_matrix([cell], SHAPE_CONFIGS, target, memory_peak.meter_for("cuda"))
    row = rows[0]
    assert "failed" not in row and "skipped" not in row, row
    assert memory_peak.within_bar(row["error"]), row
    assert row.get("context"), row.get("note")
    assert memory_peak.within_bar(row["peak_error"]), row
