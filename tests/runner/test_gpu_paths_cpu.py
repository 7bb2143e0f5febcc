"""The CUDA-only code paths, checked on the CPU with fakes at the torch and pynvml boundary.

Each fake answers the way the real library does on a GPU machine (torch's
``is_bf16_supported(including_emulation=...)``, its NVML-based ``device_count``, pynvml's
handles by UUID and process records with ``pid``/``usedGpuMemory``), so these tests show what
would go wrong on first contact with a driver; `tests/test_gpu_real.py` confirms on a GPU.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import types
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import affiner.runner.training.preflight as preflight
from affiner.planner.errors import AffinerError
from affiner.runner.config.schema import RunConfig
from affiner.runner.training import kbit, modeling
from affiner.runner.training import sampler as system_sampler
from affiner.runner.training.oom import is_oom

GIB = 1024**3


# ---------------------------------------------------------------- precision and device


def test_auto_precision_is_fp16_on_a_gpu_that_only_emulates_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A T4 or V100: torch creates bf16 tensors there (emulation), but has no bf16 units.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert modeling.resolve_precision("auto", "cuda").name == "fp16"
    asked = modeling.resolve_precision("bf16", "cuda")
    assert asked.name == "fp16" and asked.fp16 and "no bf16" in asked.note
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert modeling.resolve_precision("auto", "cuda").name == "bf16"  # an A100 or H100


class _FakeCudaCount:
    """torch.cuda.device_count as torch computes it before CUDA starts: NVML's count, narrowed
    by CUDA_VISIBLE_DEVICES at the time of the call."""

    def __init__(self, physical: int) -> None:
        self.physical = physical

    def __call__(self) -> int:
        import os

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return self.physical if visible is None else len([v for v in visible.split(",") if v])


def _fake_four_gpus(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", _FakeCudaCount(4))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return monkeypatch


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return _fake_four_gpus(monkeypatch)


def test_a_single_process_run_keeps_to_one_of_several_gpus(four_gpus: pytest.MonkeyPatch) -> None:
    import os

    # Without this the Trainer sees n_gpu=4: DataParallel, and a batch four times the plan's.
    with pytest.warns(RuntimeWarning, match="4 GPUs are visible"):
        assert modeling.resolve_device("auto") == "cuda"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert torch.cuda.device_count() == 1


def test_pinning_keeps_the_users_first_choice_and_leaves_launchers_alone(
    four_gpus: pytest.MonkeyPatch,
) -> None:
    import os

    four_gpus.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert modeling.pin_one_gpu() is not None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    four_gpus.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    four_gpus.setenv("WORLD_SIZE", "2")  # torchrun: each rank picks its GPU by LOCAL_RANK
    assert modeling.pin_one_gpu() is None and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    four_gpus.delenv("WORLD_SIZE")
    four_gpus.setattr(torch.cuda, "device_count", _FakeCudaCount(1))
    four_gpus.delenv("CUDA_VISIBLE_DEVICES")
    assert modeling.pin_one_gpu() is None and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_pinning_says_so_when_cuda_already_started(four_gpus: pytest.MonkeyPatch) -> None:
    import os

    four_gpus.setattr(torch.cuda, "device_count", lambda: 4)  # cached once CUDA is up
    four_gpus.setattr(torch.cuda, "is_initialized", lambda: True)
    note = modeling.pin_one_gpu()
    assert note and "DataParallel" in note and "CUDA_VISIBLE_DEVICES=0" in note
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # too late to narrow: nothing pretends to
    assert modeling.resolve_device("cpu") == "cpu"  # the CPU never touches the variable


def test_a_worker_pins_its_gpu_before_anything_starts_cuda(
    monkeypatch: pytest.MonkeyPatch, tiny_llama: Path, tmp_path: Path
) -> None:
    """Recording the versions asks torch for each GPU's name, which starts CUDA: pinning has to
    come first, and what it did reaches the event log (not only train.log)."""
    import os

    import peft  # noqa: F401 - imported before torch pretends to have GPUs: bitsandbytes
    import transformers  # picks its backend at import and must find the real CPU one

    import affiner.runner.training
    from affiner.runner.train import EXIT_USER_ERROR, run_training
    from tests.train_helpers import events_of, make_run

    transformers.Trainer, transformers.PrinterCallback  # noqa: B018 - resolve the lazy imports
    _fake_four_gpus(monkeypatch)
    seen: list[str | None] = []

    def versions_start_cuda(rd: Any) -> None:
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        raise AffinerError("stop here: the order is what this test is about")

    monkeypatch.setattr(affiner.runner.training, "write_versions", versions_start_cuda)
    rd = make_run(tmp_path, tiny_llama, training={"device": "auto"})
    assert run_training(rd.path) == EXIT_USER_ERROR
    assert seen == ["0"]
    warnings = [e for e in events_of(rd) if e["type"] == "warning" and e.get("code") == "gpu"]
    assert warnings and "4 GPUs are visible" in warnings[0]["message"]


# ---------------------------------------------------------------- model loading


def _tiny_classifier(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_lora_in_fp16_trains_the_classification_head_in_fp32(tmp_path: Path) -> None:
    # fp16 only happens on a GPU; the dtype decisions are the same on the CPU.
    cfg = RunConfig()
    cfg.model.name_or_path = str(_tiny_classifier(tmp_path / "m"))
    cfg.model.task = "classification"
    cfg.method.name = "lora"
    fp16 = modeling.Precision("fp16", False, True, torch.float16)
    loaded = modeling.load_model(
        cfg, SimpleNamespace(pad_token_id=0), device="cpu", precision=fp16, labels=["a", "b"]
    )
    trainable = {n: p.dtype for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)  # the head's modules_to_save copy
    # An fp16 trainable parameter makes the fp16 grad scaler raise
    # "Attempting to unscale FP16 gradients." at the first optimizer step.
    assert set(trainable.values()) == {torch.float32}, trainable
    frozen = {p.dtype for p in loaded.model.parameters() if not p.requires_grad}
    assert frozen == {torch.float16}  # the base stays in the compute dtype


def test_flash_attention_without_the_package_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("flash_attn", "kernels") else real(name, *a),
    )
    with pytest.raises(AffinerError, match="flash_attn package") as info:
        modeling.check_attention("flash_attention_2", "cuda")
    assert info.value.where == "[model].attn_implementation"
    with pytest.raises(AffinerError, match="needs an NVIDIA GPU"):
        modeling.check_attention("flash_attention_2", "cpu")
    modeling.check_attention("sdpa", "cuda")  # nothing to check


def test_an_attention_refusal_names_the_attention_key() -> None:
    cfg = RunConfig()
    cfg.model.attn_implementation = "sdpa"
    refused = ValueError(
        "OldModel does not support an attention implementation through "
        "torch.nn.functional.scaled_dot_product_attention yet. ... "
        '`attn_implementation="eager"` meanwhile.'
    )
    error = modeling._attention_error(cfg, refused)
    assert error is not None and error.where == "[model].attn_implementation"
    assert modeling._attention_error(cfg, OSError("no file named config.json")) is None


def test_the_int8_cast_warning_is_logged_once() -> None:
    # bitsandbytes logs it from every 8-bit matmul on CUDA whose input is not fp16.
    logger = logging.getLogger(kbit.INT8_LOGGER)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        kbit.quiet_int8_cast_warning()
        kbit.quiet_int8_cast_warning()  # idempotent
        for _ in range(5):
            logger.warning("MatMul8bitLt: inputs will be cast from %s to float16", torch.bfloat16)
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
        logger.filters.clear()
    assert [r.getMessage() for r in records] == [
        "MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16",
        "something else",
    ]


# ---------------------------------------------------------------- pre-flight


def test_out_of_memory_texts_are_recognised_also_when_wrapped() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_oom(RuntimeError("CUDA error: out of memory\nCUDA kernel errors ..."))
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling"))
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("Error in the checkpointed block") from inner
    except RuntimeError as wrapped:
        assert is_oom(wrapped)
    assert not is_oom(RuntimeError("CUDA error: device-side assert triggered"))


def test_a_run_that_runs_out_of_memory_gets_the_memory_advice_however_it_is_raised() -> None:
    from affiner.runner.train import _describe_crash

    code, message = _describe_crash(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED"), 7)
    assert code == "oom" and "step 7" in message and "micro_batch" in message
    assert _describe_crash(ValueError("shapes do not match"), 7)[0] == "crash"


class _Model:
    """Stands in for a model on the GPU: it refers to itself, as accelerate's patched
    ``forward`` (a method bound to the model, stored on the model) makes real ones do, so only
    the cycle collector frees it."""

    def __init__(self) -> None:
        self.forward = self.__init__


def test_a_failed_attempts_model_is_freed_before_the_next_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = RunConfig()
    cfg.training.device, cfg.training.micro_batch = "cpu", 4
    alive: list[weakref.ref[Any]] = []
    seen_alive: list[bool] = []

    def deep_in_training(model: _Model) -> None:
        raise preflight._OutOfMemory("training")  # this frame holds the model

    def measure(cfg, data, tokenizer, device, precision, micro, accum, steps):
        seen_alive.append(any(ref() is not None for ref in alive))
        if micro == 4:
            model = _Model()
            alive.append(weakref.ref(model))
            deep_in_training(model)
        raise preflight._OutOfMemory("evaluation")

    monkeypatch.setattr(preflight, "_measure", measure)
    data = SimpleNamespace(train=[], eval=None, labels=[])
    gc.disable()  # only the collections affiner asks for
    try:
        with pytest.raises(AffinerError, match="micro_batch 1"):
            preflight.run_preflight(cfg, prepared=data, tokenizer=SimpleNamespace())
    finally:
        gc.enable()
    assert seen_alive == [False, False, False]


# ---------------------------------------------------------------- NVML through pynvml


class _NVMLError(Exception):
    pass


def _fake_pynvml(uuids: list[str], processes: dict[str, list[Any]]) -> types.ModuleType:
    """pynvml's calls that `cuda_context_bytes` makes, over GPUs named by UUID."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = _NVMLError

    def by_uuid(uuid: str | bytes) -> str:
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        if text not in uuids:
            raise _NVMLError("Not Found")
        return text

    nv.nvmlInit = lambda: None
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetHandleByUUID = by_uuid
    nv.nvmlDeviceGetHandleByIndex = lambda i: uuids[i]
    nv.nvmlDeviceGetComputeRunningProcesses = lambda handle: processes.get(handle, [])
    return nv


def _proc(pid: int, used: int | None) -> Any:
    # nvmlStructToFriendlyObject of c_nvmlProcessInfo_v3_t; usedGpuMemory None when NVML
    # reports NVML_VALUE_NOT_AVAILABLE (MIG without privileges, Windows WDDM).
    return SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF)


@pytest.fixture
def torch_on_second_gpu(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """torch's cuda:0 is NVML's GPU 1 (CUDA_VISIBLE_DEVICES=1); 1 GiB reserved by torch."""
    props = SimpleNamespace(uuid="bbbbbbbb-0000-0000-0000-000000000001", name="H100")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: props)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 1 * GIB)
    return monkeypatch


GPU0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU1 = "GPU-bbbbbbbb-0000-0000-0000-000000000001"


def test_the_cuda_context_is_read_on_torchs_gpu_not_nvml_index_0(
    torch_on_second_gpu: pytest.MonkeyPatch,
) -> None:
    import os

    me = os.getpid()
    nv = _fake_pynvml([GPU0, GPU1], {GPU0: [_proc(99, 20 * GIB)], GPU1: [_proc(me, GIB + 500)]})
    torch_on_second_gpu.setitem(sys.modules, "pynvml", nv)
    assert preflight.cuda_context_bytes() == (500, "")


def test_in_a_container_the_only_process_on_the_gpu_is_this_one(
    torch_on_second_gpu: pytest.MonkeyPatch,
) -> None:
    host_pid = 4_000_000  # NVML reports the host's PID, never os.getpid() inside a container
    nv = _fake_pynvml([GPU0, GPU1], {GPU1: [_proc(host_pid, 2 * GIB)]})
    torch_on_second_gpu.setitem(sys.modules, "pynvml", nv)
    context, note = preflight.cuda_context_bytes()
    assert context == GIB and "host PIDs" in note

    nv = _fake_pynvml([GPU0, GPU1], {GPU1: [_proc(host_pid, None)]})  # MIG, no privilege
    torch_on_second_gpu.setitem(sys.modules, "pynvml", nv)
    context, note = preflight.cuda_context_bytes()
    assert context is None and "not in the peak" in note


def test_a_mig_slice_is_found_by_its_mig_uuid(torch_on_second_gpu: pytest.MonkeyPatch) -> None:
    mig = "MIG-bbbbbbbb-0000-0000-0000-000000000001"
    nv = _fake_pynvml([GPU0, mig], {})
    assert system_sampler.nvml_handle_for_torch_device(nv, 0) == mig
    assert system_sampler.nvml_handle_for_torch_device(_fake_pynvml([GPU0], {}), 0) is None


# ---------------------------------------------------------------- the sampler thread


def test_the_sampler_reads_torchs_figures_for_the_training_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[Any] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    local = threading.local()
    local.device = 1  # the training thread called torch.cuda.set_device(1)
    # CUDA's current device is per thread; a new thread starts on device 0.
    monkeypatch.setattr(torch.cuda, "current_device", lambda: getattr(local, "device", 0))
    for name in ("memory_allocated", "memory_reserved", "max_memory_reserved"):
        monkeypatch.setattr(
            torch.cuda, name, lambda device=None, _n=name: asked.append((_n, device)) or 7
        )
    sampler = system_sampler.SystemSampler(writer=None, interval=60)  # type: ignore[arg-type]
    assert sampler.device == 1
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(system_sampler.take_sample(None, 3, sampler.device))
    )
    worker.start()
    worker.join()
    assert {device for _, device in asked} == {1}
    assert result[0].torch_allocated == 7 and result[0].step == 3
