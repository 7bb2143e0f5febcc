"""Packing and the fused loss on a real NVIDIA GPU (skipped without one; run by bench/gpu_check.sh).

`tests/runner/test_packing.py` proves packing exact on the CPU; here the same probe must hold
for CUDA's sdpa kernels in bf16, and liger-kernel's fused linear cross-entropy (when its wheel
is installed) must give the loss torch gives, for less peak memory than the full logits take.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a driver"),
]


def _llama(vocab: int = 32000, hidden: int = 256) -> object:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()


def test_packing_is_exact_on_cuda_sdpa_in_bf16() -> None:
    from affiner.runner.config.schema import RunConfig
    from affiner.runner.training.batching import decide_batching, packing_is_exact

    model = _llama()
    assert packing_is_exact(model) == (True, "")
    cfg = RunConfig()
    cfg.training.loss_kernel = "torch"
    assert decide_batching(cfg, model, "cuda").packing


def test_liger_fused_loss_matches_torch_for_less_memory() -> None:
    pytest.importorskip("liger_kernel")
    from transformers.integrations.liger import apply_liger_kernel

    from affiner.runner.config.schema import RunConfig
    from affiner.runner.training.batching import LIGER_CONFIG, decide_batching

    tokens = torch.randint(3, 32000, (4, 512), device="cuda")

    def peak_and_loss(model: object) -> tuple[int, float]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
        loss.backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(), float(loss)

    plain_peak, plain_loss = peak_and_loss(_llama())
    fused = _llama()
    cfg = RunConfig()
    assert decide_batching(cfg, fused, "cuda").loss_kernel == "liger"  # auto picks it on CUDA
    apply_liger_kernel(fused, dict(LIGER_CONFIG))
    fused_peak, fused_loss = peak_and_loss(fused)
    assert fused_loss == pytest.approx(plain_loss, rel=2e-2)
    # the full logits alone: 4 x 512 tokens x 32000 x (bf16 + fp32 upcast) ≈ 390 MiB
    assert fused_peak < plain_peak - 200 * 2**20
