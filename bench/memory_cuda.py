"""The GPU half of `bench/memory_accuracy.py`: measured peak VRAM of real-size models vs the plan.

Each cell runs in its own Python process (a clean CUDA context, and an out-of-memory error
ends only that cell): build the model from its config with random weights, apply the method
as `runner.modeling` does (fp32 master weights + bf16 autocast for full/freeze; a bf16 base
with fp32 LoRA adapters; a 4-bit base through ``BitsAndBytesConfig`` and
``prepare_model_for_kbit_training`` for QLoRA), then three optimizer steps of torch AdamW
(foreach, the Trainer's ``adamw_torch``) with gradient clipping at 1.0. Measured:
``torch.cuda.max_memory_reserved()`` plus the CUDA context, read from NVML as this process's
used memory minus what PyTorch had reserved right after initialising CUDA.

    PYTHONPATH=. python bench/memory_accuracy.py --cuda --json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "qwen2-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "qwen2-1.5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
    },
}
METHODS = ("full", "lora", "qlora", "freeze")
SEQS = (512, 2048)
BATCHES = (1, 4)


def cell_settings(method: str, seq: int, batch: int, checkpointing: bool):
    from planner.settings import TrainSettings

    return TrainSettings(
        method=method,
        precision="bf16",
        micro_batch=batch,
        seq_len=seq,
        gradient_checkpointing=checkpointing,
        padded=batch > 1,
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.05,
        trainable_layers=2,
    )


def run_cuda() -> list[dict]:
    """Every cell of the matrix: estimate, then measure in a subprocess unless it cannot fit."""
    from planner.device import resolve_target
    from planner.hardware import probe
    from planner.memory import estimate_memory
    from planner.model_shapes import spec_from_config

    device = resolve_target(probe(), measure=False)
    if device.kind != "cuda":
        raise SystemExit("--cuda needs an NVIDIA GPU with a driver; none was found")
    rows = []
    for name, config in MODELS.items():
        spec = spec_from_config(config, name=name)
        for method in METHODS:
            for seq in SEQS:
                for batch in BATCHES:
                    for ckpt in (False, True):
                        settings = cell_settings(method, seq, batch, ckpt)
                        est = estimate_memory(spec, settings, device)
                        row = {
                            "model": name,
                            "method": method,
                            "seq": seq,
                            "batch": batch,
                            "checkpointing": ckpt,
                            "predicted": est.peak_bytes,
                            "predicted_breakdown": est.breakdown,
                        }
                        if est.peak_bytes > device.memory_total * 1.05:
                            row["skipped"] = (
                                f"predicted {est.peak_bytes / 1e9:.1f} GB > {device.memory_total / 1e9:.1f} GB on this GPU"
                            )
                            rows.append(row)
                            continue
                        row.update(_run_cell(name, method, seq, batch, ckpt))
                        if "measured" in row:
                            row["error"] = (row["predicted"] - row["measured"]) / row["measured"]
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _run_cell(name: str, method: str, seq: int, batch: int, ckpt: bool) -> dict:
    spec = json.dumps(
        {"model": name, "method": method, "seq": seq, "batch": batch, "checkpointing": ckpt}
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory_cuda", spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"failed": tail[0][:300]}
    return json.loads(lines[-1])


def _nvml_used_by_me() -> int | None:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(
        int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
    )
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == os.getpid():
            return int(proc.usedGpuMemory) if proc.usedGpuMemory is not None else None
    return None


def _measure(cell: dict) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from bench.memory_probe import decoder_layers

    torch.cuda.init()
    torch.zeros(1, device="cuda")
    context = (_nvml_used_by_me() or 0) - torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    config = dict(MODELS[cell["model"]])
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    method, ckpt = cell["method"], cell["checkpointing"]
    torch.manual_seed(0)
    if method == "qlora":
        with tempfile.TemporaryDirectory() as folder:
            AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).save_pretrained(
                folder
            )
            quant = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                quantization_config=quant,
                device_map="cuda",
                dtype=torch.bfloat16,
                attn_implementation="sdpa",
            )
        torch.cuda.reset_peak_memory_stats()
    else:
        dtype = torch.float32 if method in ("full", "freeze") else torch.bfloat16
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(
                hf_config, dtype=dtype, attn_implementation="sdpa"
            )
    model.config.use_cache = False
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if method == "qlora":
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    elif method == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in decoder_layers(model)[-2:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in model.get_output_embeddings().parameters():
            p.requires_grad_(True)
        for p in model.model.norm.parameters():
            p.requires_grad_(True)
    if ckpt:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if method != "full":
            base.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    batch, seq = cell["batch"], cell["seq"]
    ids = torch.randint(3, hf_config.vocab_size, (batch, seq), device="cuda")
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[0, seq // 2 :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    reserved = torch.cuda.max_memory_reserved()
    return {
        "measured": reserved + max(context, 0),
        "max_reserved": reserved,
        "max_allocated": torch.cuda.max_memory_allocated(),
        "context": context,
    }


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
