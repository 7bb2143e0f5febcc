"""``affiner plan``: the JSON schema scripts rely on, the table, and no torch on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def affiner(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", COLUMNS="100")
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "affiner", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_json_schema_keys_and_types() -> None:
    out = affiner("plan", "--model", "7B", "--gpu", "4090", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"model", "gpu", "candidates", "recommended"} <= set(data)
    types = {
        "method": str,
        "quantization": str,
        "precision": str,
        "optimizer": str,
        "gradient_checkpointing": bool,
        "micro_batch": int,
        "grad_accum": int,
        "seq_len": int,
        "trainable_params": int,
        "peak_bytes": int,
        "breakdown": dict,
        "fits": bool,
        "step_seconds": float,
        "reasons": list,
    }
    for cand in data["candidates"]:
        for key, kind in types.items():
            assert isinstance(cand[key], kind), (key, cand[key])
        assert cand["method"] in ("full", "freeze", "lora", "qlora", "lora8")
        assert cand["quantization"] in ("none", "nf4", "fp4", "int8")
        assert set(cand["breakdown"]) == {
            "weights",
            "gradients",
            "optimizer",
            "activations",
            "logits",
            "overhead",
        }
        assert all(isinstance(v, int) for v in cand["breakdown"].values())
        assert cand["lora_rank"] is None or isinstance(cand["lora_rank"], int)
    assert isinstance(data["recommended"], int)
    assert data["candidates"][data["recommended"]]["fits"]


def test_table_max_seq_len_and_errors_without_torch() -> None:
    code = (
        "import sys; from affiner.tui.cli.entry import main; rc = main(sys.argv[1:]);"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
    )
    table = affiner("plan", "--model", "7B", "--vram", "24", "--method", "qlora", code=code)
    assert table.returncode == 0, table.stderr
    assert "Recommended" in table.stdout and "qlora" in table.stdout
    assert table.stdout.strip().endswith("NO-TORCH")
    longest = affiner(
        "plan", "--model", "8B", "--gpu", "A100 80GB", "--method", "lora", "--max-seq-len", "--json"
    )
    assert longest.returncode == 0, longest.stderr
    answer = json.loads(longest.stdout)
    assert answer["max_seq_len"] > answer["max_seq_len_without_checkpointing"] > 2048
    assert answer["gradient_checkpointing"] is True and answer["method"] == "lora"
    words = affiner(
        "plan", "--model", "8B", "--gpu", "A100 80GB", "--method", "lora", "--max-seq-len"
    )
    assert f"{answer['max_seq_len']} tokens" in words.stdout
    assert f"without it, {answer['max_seq_len_without_checkpointing']} tokens" in words.stdout
    bad = affiner("plan", "--model", "7B", "--gpu", "NoSuchCard 9000")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_remeasure_cpu_on_a_gpu_plan_keeps_stdout_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process, with the timing faked: the CPU figure is refreshed, the GPU plan unchanged."""
    import affiner.planner.hardware.cpu_throughput as ct
    import affiner.planner.hardware.process_baseline as pb
    from affiner.tui.cli.entry import main

    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(ct, "machine_load", lambda: (0.0, 4))
    monkeypatch.setattr(ct, "_time_rates", lambda cpu, size, s: (0.125, None, "fake"))
    # the process-baseline child answers at once (the real child: test_process_baseline)
    monkeypatch.setattr(
        pb, "run_child", lambda timeout=0: {"rss": 400 << 20, "peak_rss": 500 << 20}
    )
    assert main(["plan", "--model", "7B", "--gpu", "4090", "--json", "--remeasure-cpu"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["gpu"]
    assert "nothing cached → 0.125 TFLOP/s fp32" in out.err
    assert "CPU process baseline re-measured: nothing cached → 500 MiB" in out.err


def test_the_longest_sequence_stops_at_the_models_window() -> None:
    from affiner.planner.hardware.device import target_from_catalog
    from affiner.planner.models.sizes import spec_from_size
    from affiner.planner.sequence_fit import longest_sequence
    from affiner.planner.settings import TrainSettings
    from affiner.tui.cli.plan import longest_sequence_text

    spec = spec_from_size("8B")
    small_window = replace(spec, max_position_embeddings=4096)
    h100 = target_from_catalog("H100")
    found = longest_sequence(small_window, h100, TrainSettings(method="lora"))
    assert found.longest == 4096 and found.capped
    assert "context window" in longest_sequence_text(found, h100.name)
    roomy = longest_sequence(spec, h100, TrainSettings(method="lora"))
    assert roomy.longest > 4096 and not roomy.capped
