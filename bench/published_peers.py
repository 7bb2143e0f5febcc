"""The peers `bench/memory_published.py` compares the planner with: fitcheck-llm and
canifinetune, each asked the same published points offline, from a Hugging Face cache folder
built from the points' configs.

It exists because memory_published.py grew past the house's 500 lines; that bench imports
these names (and re-exports them, so ``bench.memory_published.ask_fitcheck`` still works).
Run the bench as ``PYTHONPATH=. python bench/memory_published.py``: this module is imported as
``bench.published_peers``, like the other benches' siblings.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

# peers' GPU names for the sources' cards
FITCHECK_GPU = {
    "A10G": "a10",
    "V100 16GB": "v100-16",
    "RTX 4090": "4090",
    "A100 80GB": "a100-80",
    "L40S": "l40s",
}
FITCHECK_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def build_hf_cache(configs: dict, root: Path) -> None:
    """The Hugging Face cache layout both peers read offline: refs/main and one snapshot."""
    for model_id, config in configs.items():
        repo = root / "hub" / ("models--" + model_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("published")
        snap = repo / "snapshots" / "published"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text(json.dumps(config))


def _run_json(cmd: list[str], hf_home: Path) -> tuple[dict | None, str]:
    env = os.environ | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    out = proc.stdout
    start = out.find("{")
    if start < 0:
        return None, (proc.stderr or out).strip()[-200:]
    try:
        return json.loads(out[start:]), ""
    except json.JSONDecodeError as exc:
        return None, str(exc)


def ask_fitcheck(point: dict, venv: Path, hf_home: Path) -> dict:
    if point["gpus"] > 1:
        return {"failed": ["single GPU only"]}
    note = None
    gpu = FITCHECK_GPU.get(point["gpu"])
    if gpu is None:
        return {"failed": [f"no fitcheck name for {point['gpu']}"]}
    cmd = [str(venv / "bin" / "fitcheck"), point["model"], "--json", "--gpu", gpu]
    cmd += ["--seq-len", str(point["seq_len"]), "--batch-size", str(point["micro_batch"])]
    cmd += ["--optimizer", point["optimizer"]]
    pure = point["precision"] == "bf16-pure"
    cmd += ["--precision", "bf16" if pure else point["precision"]]
    if pure:
        cmd += ["--optimizer-dtype", "bf16"]
    if point["gradient_checkpointing"]:
        cmd.append("--grad-checkpoint")
    if point["method"] == "full":
        cmd.append("--no-lora")
    else:
        targets = [t for t in point["lora_targets"] if t != "lm_head"]
        if not set(targets) <= FITCHECK_MODULES:
            if len(targets) < 4:  # an attention subset under a fused name: no faithful preset
                return {"failed": [f"fitcheck names no module {targets}"]}
            targets = ["full"]  # every linear layer, under the model's own names
            note = "preset full for the model's own module names"
        cmd += ["--lora-r", str(point["lora_rank"]), "--lora-targets", ",".join(targets)]
    if point["quantization"] == "nf4":
        cmd += ["--quant", "nf4"]
        if point.get("double_quant"):
            cmd.append("--double-quant")
    out, why = _run_json(cmd, hf_home)
    if out is None:
        return {"failed": [why]}
    return {
        "bytes": round(out["memory_mib"]["total"] * 2**20),
        "fits": bool(out["verdict"]["fits"]),
        "notes": [note] if note else [],
    }


def ask_canifinetune(point: dict, venv: Path, hf_home: Path, vram_gib: float) -> dict:
    if point["gpus"] > 1:
        return {"failed": ["single GPU only"]}
    cmd = [str(venv / "bin" / "canifinetune"), "estimate", "--model", point["model"], "--json"]
    cmd += ["--offline", "--gpu-vram-gb", f"{vram_gib:.3f}", "--method", point["method"]]
    cmd += ["--seq-len", str(point["seq_len"]), "--micro-batch-size", str(point["micro_batch"])]
    cmd += ["--optimizer", point["optimizer"]]
    cmd += ["--base-dtype", "fp32" if point["precision"] == "fp32" else "bf16"]
    cmd.append(
        "--gradient-checkpointing"
        if point["gradient_checkpointing"]
        else "--no-gradient-checkpointing"
    )
    if point["method"] != "full":
        attn_only = all(
            t in ("q_proj", "k_proj", "v_proj", "o_proj", "query_key_value")
            for t in point["lora_targets"]
        )
        cmd += ["--lora-rank", str(point["lora_rank"])]
        cmd += ["--target-scope", "attention" if attn_only else "all_linear"]
    if point["quantization"] == "nf4":
        cmd += ["--quantization", "nf4_double_quant" if point.get("double_quant") else "nf4"]
    else:
        cmd += ["--quantization", "none"]
    out, why = _run_json(cmd, hf_home)
    if out is None:
        return {"failed": [why]}
    mem = out.get("memory") or {}
    if "total_estimated_gb" not in mem:
        return {"failed": [str(out)[:200]]}
    gib = mem["total_estimated_gb"] - mem.get("safety_margin_gb", 0.0)
    return {"bytes": round(gib * 2**30), "fits": out.get("feasible") != "no"}
