"""The pre-flight check: real figures beside the plan's, the back-off when memory runs out, and
the worker's ``--preflight-only`` entry."""

from __future__ import annotations

from pathlib import Path

import pytest

import affiner.runner.training.preflight as preflight
from affiner.planner.errors import AffinerError
from affiner.runner.config.io import load_config
from affiner.runner.run.events import Preflight
from affiner.runner.worker import main as worker_main
from tests.train_helpers import events_of, make_run, of_type

pytestmark = pytest.mark.slow

PLAN = {"predicted_peak_bytes": 900_000_000, "predicted_step_seconds": 0.25, "device": "cpu"}


def test_preflight_measures_and_writes_back(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(tmp_path, tiny_llama, method="lora", plan=PLAN)
    cfg = load_config(rd.config)

    event = preflight.run_preflight(cfg, run_dir=rd)

    assert event.device == "cpu" and not event.adjusted
    assert event.measured_peak_bytes > 50_000_000  # a Python process with torch loaded
    assert 0 < event.measured_step_seconds < 30
    assert event.predicted_peak_bytes == PLAN["predicted_peak_bytes"]
    assert event.predicted_step_seconds == PLAN["predicted_step_seconds"]
    from affiner.runner.data.prepare import prepare_data
    from affiner.runner.training.modeling import load_tokenizer

    data = prepare_data(cfg, load_tokenizer(cfg))
    assert event.seq_len == max(len(ids) for ids in data.train["input_ids"])  # the longest rows
    assert event.save_ok and event.eval_peak_bytes
    written = of_type(events_of(rd), "preflight")
    assert len(written) == 1 and written[0]["measured_peak_bytes"] == event.measured_peak_bytes
    saved = load_config(rd.config)
    assert saved.plan.measured_peak_bytes == event.measured_peak_bytes
    assert saved.plan.measured_step_seconds == pytest.approx(event.measured_step_seconds, abs=1e-4)
    assert saved.plan.predicted_peak_bytes == PLAN["predicted_peak_bytes"]
    assert "data/train.jsonl" in rd.config.read_text()  # paths kept as written


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rd = make_run(tmp_path, tiny_llama, method="lora", training={"micro_batch": 8, "grad_accum": 1})
    cfg = load_config(rd.config)
    real_measure = preflight._measure
    tried: list[tuple[int, int]] = []

    def measure_that_fits_at_two(cfg, data, tokenizer, device, precision, micro, accum, steps):
        tried.append((micro, accum))
        if micro > 2:
            raise preflight._OutOfMemory("training" if micro == 8 else "evaluation")
        return real_measure(cfg, data, tokenizer, device, precision, micro, accum, steps)

    monkeypatch.setattr(preflight, "_measure", measure_that_fits_at_two)
    event = preflight.run_preflight(cfg, run_dir=rd)

    assert tried == [(8, 1), (4, 2), (2, 4)]
    assert event.adjusted and (event.micro_batch, event.grad_accum) == (2, 4)
    assert any("evaluation" in note for note in event.notes)
    warnings = of_type(events_of(rd), "warning")
    assert warnings and warnings[-1]["code"] == "preflight_adjusted"
    saved = load_config(rd.config)
    assert (saved.training.micro_batch, saved.training.grad_accum) == (2, 4)


def test_nothing_fits_is_a_user_error(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rd = make_run(tmp_path, tiny_llama, method="lora", training={"micro_batch": 2})

    def never_fits(*args, **kwargs):
        raise preflight._OutOfMemory("training")

    monkeypatch.setattr(preflight, "_measure", never_fits)
    with pytest.raises(AffinerError, match="micro_batch 1"):
        preflight.run_preflight(load_config(rd.config), run_dir=rd)


def test_long_runs_get_a_preflight(tiny_llama: Path, tmp_path: Path) -> None:
    cfg = load_config(make_run(tmp_path, tiny_llama).config)
    cfg.training.max_steps = 100
    assert not preflight.is_long_run(cfg, 1000)
    cfg.plan.predicted_step_seconds = 10.0  # 100 steps x 10 s is over ten minutes
    assert preflight.is_long_run(cfg, 1000)
    cfg.training.max_steps, cfg.plan.predicted_step_seconds = -1, None
    cfg.training.epochs, cfg.training.micro_batch, cfg.training.grad_accum = 2, 4, 2
    assert preflight.planned_steps(cfg, 1000) == 250 and preflight.is_long_run(cfg, 1000)


def test_worker_preflight_only(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = make_run(tmp_path, tiny_llama, method="full")
    assert worker_main([str(rd.path), "--preflight-only"]) == 0
    assert "pre-flight on cpu" in capsys.readouterr().out
    assert isinstance(of_type(events_of(rd), "preflight")[0]["measured_step_seconds"], float)
    assert worker_main([str(tmp_path / "nowhere")]) == 2
    assert Preflight.type == "preflight"


def test_a_long_run_starts_with_a_preflight(tiny_llama: Path, tmp_path: Path) -> None:
    from affiner.runner.train import EXIT_FINISHED, run_training

    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        training={"max_steps": 4, "preflight": True},
        eval={"every_steps": 4},
        plan={"predicted_step_seconds": 600.0},  # 4 steps x 10 minutes: long
    )
    assert run_training(rd.path) == EXIT_FINISHED
    kinds = [e["type"] for e in events_of(rd) if e["type"] != "system"]
    assert kinds.index("preflight") < kinds.index("run_started")
    assert load_config(rd.config).plan.measured_step_seconds is not None


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif("_no_cuda()", reason="needs an NVIDIA GPU with a driver")
def test_qlora_on_the_gpu_with_a_measured_peak(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    from affiner.runner.train import EXIT_FINISHED, run_training

    rd = make_run(
        tmp_path,
        tiny_llama,
        method="qlora",
        training={"device": "cuda", "precision": "auto", "max_steps": 6, "preflight": True},
        eval={"every_steps": 3},
        plan={"predicted_step_seconds": 600.0},
    )
    assert run_training(rd.path) == EXIT_FINISHED
    events = events_of(rd)
    measured = of_type(events, "preflight")[0]
    assert measured["device"] == torch.cuda.get_device_name(0)
    assert measured["measured_peak_bytes"] > 0
    assert of_type(events, "run_started")[0]["device"] == "cuda"
    assert events[-1]["state"] == "finished"
