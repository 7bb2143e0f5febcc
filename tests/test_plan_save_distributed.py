"""``affiner plan --gpus N [--nodes M] --sharding S --save``: the layout becomes run.toml's
``[distributed]``, read back by `load_config` as planned; a run.toml's own ``[distributed]`` is
planned as it is; every layout mistake names its flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plan_helpers import fake_cpu_rates, plan_json, small_llama_folder


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small Llama-shaped config.json folder (no weights) and its data, in the cwd."""
    return small_llama_folder(tmp_path, monkeypatch)


@pytest.fixture
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """run.toml's check counts this machine's GPUs through NVML: say it has eight."""
    import affiner.runner.config.checks as checks

    monkeypatch.setattr(checks, "visible_gpu_count", lambda: 8)


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu_rates(monkeypatch)


def test_save_writes_the_gpu_layout_as_distributed(folder: Path, eight_gpus: None, capsys) -> None:
    from affiner.runner.config import load_config

    out = folder / "fsdp.toml"
    data = plan_json(capsys, "--model", "model", "--gpu", "H100", "--gpus", "4", "--sharding",
                 "fsdp", "--method", "full", "--data", "train.jsonl", "--save", str(out))  # fmt: skip
    (cand,) = data["candidates"]
    assert (cand["num_gpus"], cand["sharding"]) == (4, "fsdp")
    cfg = load_config(out)
    d = cfg.distributed
    assert (d.processes, d.nodes, d.strategy, d.world_size) == (4, 1, "fsdp", 4)
    assert cfg.training.device == "cuda"
    assert cfg.plan.predicted_peak_bytes == cand["peak_bytes"]  # per GPU
    # the saved file planned again is the same layout, stated by the file
    again = plan_json(capsys, str(out), "--gpu", "H100")
    assert (again["candidates"][0]["num_gpus"], again["candidates"][0]["sharding"]) == (4, "fsdp")


def test_several_nodes_write_processes_per_node_and_the_rendezvous(
    folder: Path, eight_gpus: None, capsys
) -> None:
    from affiner.runner.config import load_config

    out = folder / "nodes.toml"
    plan_json(capsys, "--model", "model", "--gpu", "H100", "--gpus", "16", "--nodes", "2",
          "--sharding", "ddp", "--main-address", "10.0.0.1", "--data", "train.jsonl",
          "--save", str(out))  # fmt: skip
    d = load_config(out).distributed
    assert (d.processes, d.nodes, d.strategy) == (8, 2, "ddp")
    assert (d.main_address, d.main_port) == ("10.0.0.1", 29500)


def test_one_gpu_writes_no_layout(folder: Path, capsys) -> None:
    from affiner.runner.config import load_config

    out = folder / "one.toml"
    plan_json(
        capsys, "--model", "model", "--vram", "24", "--data", "train.jsonl", "--save", str(out)
    )
    assert load_config(out).distributed.world_size == 1
    assert "[distributed]" not in out.read_text() or "processes = 1" in out.read_text()


CPU_RUN = """\
[model]
name_or_path = "model"

[method]
name = "lora"
lora_rank = 8

[data]
train = "train.jsonl"
max_seq_len = 64

[training]
device = "cpu"
micro_batch = 2
grad_accum = 2
epochs = 1

[distributed]
processes = 2
"""


def test_a_run_tomls_distributed_is_planned_as_it_is_and_kept(
    folder: Path, fake_cpu: None, capsys
) -> None:
    from affiner.runner.config import load_config

    run = folder / "run.toml"
    run.write_text(CPU_RUN)
    one = plan_json(capsys, str(run), "--gpus", "1")
    data = plan_json(capsys, str(run), "--save", str(folder / "out.toml"))
    (cand,) = data["candidates"]
    assert (cand["num_gpus"], cand["sharding"]) == (2, "ddp")
    # two processes share the RAM: each is planned against half of it (RAM available moves)
    assert data["usable_bytes"] == pytest.approx(one["usable_bytes"] / 2, rel=0.05)
    assert any("2 processes share this machine's RAM" in n for n in data["notes"])
    # the effective batch counts both processes: 2 x 2 x 2 rows a step
    assert cand["micro_batch"] * cand["grad_accum"] * 2 == 8
    saved = load_config(folder / "out.toml")
    assert (saved.distributed.processes, saved.distributed.strategy) == (2, "ddp")
    assert saved.training.device == "cpu"


@pytest.mark.parametrize(
    ("flags", "where", "words"),
    [
        (["--gpus", "0"], "--gpus", "at least 1"),
        (["--gpus", "4", "--nodes", "0"], "--nodes", "at least 1"),
        (["--gpus", "6", "--nodes", "4"], "--gpus", "spread evenly"),
        (["--gpus", "2", "--nodes", "4"], "--nodes", "more machines"),
        (["--gpus", "16", "--nodes", "2", "--save", "x.toml"], "--main-address", "address"),
        (["--sharding", "fsdp"], "--sharding", "add --gpus N"),
    ],
)
def test_layout_mistakes_name_their_flag(
    folder: Path, capsys, flags: list[str], where: str, words: str
) -> None:
    from affiner.tui.cli.entry import main

    args = ["plan", "--model", "model", "--gpu", "H100", "--data", "train.jsonl", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{where}:") or f"{where}:" in err, err
    assert words in err and "Traceback" not in err
    assert not Path("x.toml").exists()


def test_the_table_says_the_layout_and_that_peaks_are_per_gpu(folder: Path, capsys) -> None:
    from affiner.tui.cli.entry import main

    args = ["plan", "--model", "model", "--gpu", "H100", "--gpus", "4", "--sharding", "zero3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Layout: 4 GPUs with ZeRO-3; every peak below is per GPU" in out
    assert "ZeRO-3 over 4 GPUs:" in out and "NVLink 4" in out
