"""The child that measures what a CPU training process holds before its model exists.

``python -m affiner.runner.baseline`` imports what the training process imports, does what it
does before the model is loaded (accelerate's state from `TrainingArguments`, a `datasets`
round trip, a first LoRA/AdamW step on a toy model: torch's thread pool and kernels), and
prints one JSON object with its resident and peak resident memory.
`affiner.planner.hardware.process_baseline` starts it and caches the answer; it lives here
because it measures the runner's imports, and the planner never imports the runner.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _status_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, bytes (Linux); psutil's peak elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields_ = dict(line.split(":", 1) for line in status if ":" in line)
        return (
            int(fields_["VmRSS"].split()[0]) * 1024,
            int(fields_["VmHWM"].split()[0]) * 1024,
        )
    except (OSError, KeyError, ValueError):
        import resource

        import psutil

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024
        return psutil.Process().memory_info().rss, peak


def _child() -> dict[str, Any]:
    """What the training process does before its model exists, then its resident memory."""
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (  # the classes the runner imports inside its functions
        AutoModelForCausalLM,  # noqa: F401
        AutoModelForSequenceClassification,  # noqa: F401
        AutoTokenizer,  # noqa: F401
        DataCollatorForSeq2Seq,  # noqa: F401
        DataCollatorWithPadding,  # noqa: F401
        Trainer,  # noqa: F401
        TrainingArguments,
        set_seed,
    )

    import affiner.runner.data
    import affiner.runner.train
    import affiner.runner.training  # noqa: F401  (modeling, callbacks, bitsandbytes)

    set_seed(0)
    with tempfile.TemporaryDirectory() as out:
        TrainingArguments(output_dir=out, use_cpu=True, report_to=[])  # accelerate's state
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 64, "labels": [[1, 2, 3]] * 64})
    rows = rows.map(lambda row: {"length": len(row["input_ids"])})
    # a first training step on a toy model: the thread pool, oneDNN's kernels, autograd, AdamW
    toy = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    toy = get_peft_model(toy, LoraConfig(r=4, target_modules=["0", "2"]))
    opt = torch.optim.AdamW([p for p in toy.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        loss = toy(torch.randn(32, 64)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    del toy, opt, rows
    rss, peak = _status_bytes()
    method = (
        f"child process: torch {torch.__version__} with the runner's imports, "
        f"{torch.get_num_threads()} threads, a toy LoRA step"
    )
    return {"rss": rss, "peak_rss": peak, "method": method}


if __name__ == "__main__":
    print(json.dumps(_child()), flush=True)
