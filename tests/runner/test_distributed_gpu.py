"""Several CUDA processes through ``affiner train``: DDP and FSDP2 on two GPUs (skipped with
fewer), each finishing a full fine-tune with every rank, on its own GPU, in tagged ``system``
events (the per-rank peaks are printed for the record), and a stop and resume of the sharded
run. `tests/runner/test_distributed_run.py` is the same path on
the CPU (gloo), in the default suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.runner.run import launch
from affiner.runner.run.checkpoints import latest_checkpoint
from affiner.runner.run.distributed import read_rank_records
from affiner.runner.run.events import read_status
from affiner.runner.run.rundir import RunDir
from affiner.tui.cli.entry import main
from tests.runner.test_launch import started_run_id, wait_final, wait_until
from tests.train_helpers import dict_events, make_run, of_type

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2,
        reason="needs two NVIDIA GPUs (a single-GPU machine runs the CPU test of this path)",
    ),
]


def run_on_gpus(
    tmp_path: Path,
    runs_dir: Path,
    model: Path,
    strategy: str,
    capsys: pytest.CaptureFixture[str],
    steps: int,
) -> RunDir:
    source = make_run(
        tmp_path / strategy,
        model,
        method="full",
        training={
            "device": "cuda",
            "precision": "bf16",
            "max_steps": steps,
            "micro_batch": 4,
            "learning_rate": 1e-4,
        },
        checkpoint={"every_steps": 10},
        distributed={"processes": 2, "strategy": strategy},
    )
    assert main(["train", str(source.config), "--no-preflight"]) == 0
    return RunDir(runs_dir.resolve() / started_run_id(capsys.readouterr().out))


def rank_peaks(rd: RunDir) -> dict[int, int]:
    peaks: dict[int, int] = {}
    for event in of_type(dict_events(rd), "system"):
        if event["rank"] is not None and event["torch_peak"]:
            peaks[event["rank"]] = max(peaks.get(event["rank"], 0), event["torch_peak"])
    return peaks


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_finish_with_every_rank_s_memory(
    tiny_llama: Path,
    runs_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    strategy: str,
) -> None:
    rd = run_on_gpus(tmp_path, runs_dir, tiny_llama, strategy, capsys, 30)
    assert wait_final(rd, timeout=300) == "finished", rd.log.read_text()[-4000:]
    started = of_type(dict_events(rd), "run_started")[-1]
    assert (started["world_size"], started["strategy"], started["device"]) == (2, strategy, "cuda")
    peaks = rank_peaks(rd)
    assert set(peaks) == {0, 1}, peaks
    gpus = {
        (e["rank"], g["index"])
        for e in of_type(dict_events(rd), "system")
        if e["rank"] is not None
        for g in e["gpus"]
    }
    assert len({index for _, index in gpus}) >= 2, gpus  # each rank on its own GPU
    print(f"{strategy}: per-rank peaks {peaks}")


def test_fsdp_stops_and_resumes_its_sharded_state(
    tiny_llama: Path, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = run_on_gpus(tmp_path, runs_dir, tiny_llama, "fsdp", capsys, 4000)
    wait_until(lambda: latest_checkpoint(rd) is not None, 300, "the first checkpoint", rd)
    assert launch.stop_run(rd.run_id).state == "stopped", rd.log.read_text()[-4000:]
    step = read_status(rd.path).step
    assert {r.exit_code for r in read_rank_records(rd)} == {3}
    assert main(["train", "--resume", rd.run_id]) == 0
    wait_until(
        lambda: (latest_checkpoint(rd) or (0,))[0] > step, 300, "a checkpoint after the resume", rd
    )
    assert launch.stop_run(rd.run_id).state == "stopped"
    resumed = of_type(dict_events(rd), "run_started")[-1]
    assert resumed["resumed_from_step"] == step
