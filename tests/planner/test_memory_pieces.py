"""The memory model's pieces against numbers derived by hand from the layouts they model."""

from __future__ import annotations

import pytest

from affiner.planner.hardware.device import DeviceTarget
from affiner.planner.memory.optimizers import optimizer_bytes
from affiner.planner.memory.peak import estimate_memory, lora_shapes
from affiner.planner.memory.weights import int8_bytes, nf4_bytes
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.settings import TrainSettings

LLAMA3_8B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
H100 = DeviceTarget(
    "cuda", "H100", "catalog", 80 * 1024**3, 80 * 1024**3, True, True, (9, 0), 989.0, 989.0, 67.0
)


@pytest.fixture(scope="module")
def llama8b():
    return spec_from_config(LLAMA3_8B, name="llama-3-8b")


def test_llama3_8b_bf16_weights_are_16_06_gb(llama8b) -> None:
    assert llama8b.params_total == 8_030_261_248
    est = estimate_memory(llama8b, TrainSettings(method="full", precision="bf16-pure"), H100)
    assert est.weights == 8_030_261_248 * 2  # 16.06 GB


def test_adamw_keeps_eight_bytes_per_fp32_parameter() -> None:
    assert optimizer_bytes("adamw", [(4096, 4096)], param_bytes=4) == 8 * 4096 * 4096 + 4
    assert optimizer_bytes("sgd", [(10, 10)], param_bytes=4) == 400


def test_8bit_adam_block_constants() -> None:
    n = 4096 * 4096
    assert (
        optimizer_bytes("adamw8bit", [(4096, 4096)], param_bytes=4)
        == 2 * n + 2 * (n // 256) * 4 + 4
    )
    # tensors under 4096 elements keep fp32 states in bitsandbytes
    assert optimizer_bytes("adamw8bit", [(64,)], param_bytes=4) == 64 * 8 + 4


def test_nf4_bytes_with_and_without_double_quant() -> None:
    n = 4096 * 4096
    plain = n // 2 + (n // 64) * 4 + 64
    assert nf4_bytes(4096, 4096, double_quant=False) == plain == 9_437_248
    dq = n // 2 + n // 64 + (n // 64 // 256) * 4 + 1024 + 4 + 64
    assert nf4_bytes(4096, 4096, double_quant=True) == dq == 8_655_940
    assert int8_bytes(4096, 4096) == n + 4096 * 4


def test_nf4_bytes_match_bitsandbytes_storage() -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = torch.randn(256, 512, dtype=torch.bfloat16)
    for dq in (False, True):
        packed, state = functional.quantize_4bit(
            weight, blocksize=64, compress_statistics=dq, quant_type="nf4"
        )
        tensors = [packed, state.absmax, state.code]
        if dq:
            tensors += [state.state2.absmax, state.state2.code, state.offset]
        measured = sum(t.numel() * t.element_size() for t in tensors)
        assert measured == nf4_bytes(512, 256, double_quant=dq)


def test_lora_trainable_params_rank_r_on_q_and_v(llama8b) -> None:
    for r in (8, 16):
        settings = TrainSettings(method="lora", lora_rank=r, lora_targets=("q_proj", "v_proj"))
        shapes = lora_shapes(llama8b, settings)
        assert sum(a * b for a, b in shapes) == 32 * r * ((4096 + 4096) + (4096 + 1024))


def test_qlora_keeps_embeddings_and_head_in_the_compute_dtype(llama8b) -> None:
    # the runner's prepare_quantized_base skips peft's fp32 upcast of the frozen parts (issue 11)
    est = estimate_memory(llama8b, TrainSettings(method="qlora"), H100)
    embed_head = 2 * 128256 * 4096
    assert est.details["weights_unquantized"] >= embed_head * 2
    assert est.details["weights_unquantized"] < embed_head * 2 * 1.01


def test_peak_grows_with_batch_and_sequence(llama8b) -> None:
    base = TrainSettings(method="lora", micro_batch=1, seq_len=512)
    peaks = [
        estimate_memory(llama8b, base.with_(**kw), H100).peak_bytes
        for kw in ({}, {"seq_len": 1024}, {"micro_batch": 2, "seq_len": 1024})
    ]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    ckpt = estimate_memory(llama8b, base.with_(seq_len=2048, gradient_checkpointing=True), H100)
    plain = estimate_memory(llama8b, base.with_(seq_len=2048), H100)
    assert ckpt.activations < plain.activations / 4


def test_sharding_divides_state_per_gpu(llama8b) -> None:
    one = estimate_memory(llama8b, TrainSettings(method="full"), H100)
    fsdp = estimate_memory(llama8b, TrainSettings(method="full", num_gpus=8, sharding="fsdp"), H100)
    assert fsdp.optimizer * 8 == pytest.approx(one.optimizer, rel=1e-6)
    assert fsdp.peak_bytes < one.peak_bytes / 3
