"""``[distributed]`` without launching anything: every validation error at its line, the
launch files (accelerate.yaml, deepspeed.json), the Trainer's strategy arguments, each node's
command, and how the supervisor names the rank that ended a run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from affiner.runner.config import checks
from affiner.runner.config.io import ConfigError, loads_config
from affiner.runner.config.schema import RunConfig
from affiner.runner.run import distributed as dist_files
from affiner.runner.run.distributed import RankRecord
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.supervise import Supervisor

BASE = (
    '[model]\nname_or_path = "m"\n\n[data]\ntrain = "t.jsonl"\n\n[training]\ndevice = "{device}"\n'
)


def load(section: str, device: str = "cpu") -> RunConfig:
    text = BASE.format(device=device) + "\n[distributed]\n" + section
    return loads_config(text, source="run.toml")


def error_of(section: str, device: str = "cpu") -> str:
    with pytest.raises(ConfigError) as error:
        load(section, device)
    return str(error.value)


@pytest.mark.parametrize(
    ("section", "line", "key", "words"),
    [
        ("processes = 0\n", 11, "processes", "at least 1"),
        ("nodes = 0\n", 11, "nodes", "at least 1"),
        ('strategy = "megatron"\n', 11, "strategy", "allowed: ddp, fsdp, zero2, zero3"),
        ("nodes = 2\nnode_rank = 2\n", 12, "node_rank", "[0, 1]"),
        ("main_port = 70000\n", 11, "main_port", "[0, 65535]"),
        ("timeout_minutes = 0\n", 11, "timeout_minutes", "greater than 0"),
        ("nodes = 2\nmain_port = 29500\n", 10, "main_address", "main node's address"),
        ('nodes = 2\nmain_address = "10.0.0.1"\n', 10, "main_port", "agree on one port"),
        ('processes = 2\nstrategy = "fsdp"\n', 12, "strategy", "FSDP to GPU processes only"),
    ],
)
def test_each_mistake_is_refused_at_its_line(section: str, line: int, key: str, words: str) -> None:
    message = error_of(section)
    assert f"run.toml:{line} [distributed].{key}" in message, message
    assert words in message, message


def machine_error_of(section: str, device: str) -> str:
    """The refusal a launch on this machine gives (reading the file accepts it)."""
    from affiner.runner.config.io import check_for_this_machine, key_lines

    text = BASE.format(device=device) + "\n[distributed]\n" + section
    cfg = loads_config(text, source="run.toml")
    with pytest.raises(ConfigError) as error:
        check_for_this_machine(cfg, where="run.toml", lines=key_lines(text))
    return str(error.value)


def test_zero_without_deepspeed_is_refused_where_it_would_launch() -> None:
    message = machine_error_of('processes = 2\nstrategy = "zero3"\n', "cuda")
    assert "run.toml:12 [distributed].strategy" in message
    assert "DeepSpeed is not installed" in message and "affiner[deepspeed]" in message


def test_a_plan_for_gpus_this_machine_lacks_is_a_valid_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "visible_gpu_count", lambda: 0)
    cfg = load('processes = 8\nstrategy = "fsdp"\n', device="cuda")  # saved for a server
    assert cfg.distributed.world_size == 8
    message = machine_error_of('processes = 8\nstrategy = "fsdp"\n', "cuda")
    assert "8 processes on each node need 8 GPUs, and this machine has no NVIDIA GPU" in message
    assert "run it on the machine it was planned for" in message
    auto = machine_error_of('processes = 2\nstrategy = "fsdp"\n', "auto")
    assert "FSDP to GPU processes only" in auto and 'device = "auto" is the CPU' in auto


def test_zero_on_the_cpu_is_refused_even_with_deepspeed_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = checks.find_spec
    monkeypatch.setattr(
        checks, "find_spec", lambda name: object() if name == "deepspeed" else real(name)
    )
    message = error_of('processes = 2\nstrategy = "zero2"\n')
    assert "[distributed].strategy" in message and "not on the CPU" in message


def test_a_quantized_base_is_sharded_only_by_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "visible_gpu_count", lambda: 2)
    monkeypatch.setattr(checks, "bitsandbytes_problem", lambda device: None)
    text = (
        BASE.format(device="cuda").replace("[data]", '[method]\nname = "qlora"\n\n[data]')
        + '\n[distributed]\nprocesses = 2\nstrategy = "fsdp"\n'
    )
    with pytest.raises(ConfigError, match=r"nf4-quantized base cannot be sharded"):
        loads_config(text, source="run.toml")
    loads_config(text.replace('"fsdp"', '"ddp"'), source="run.toml")  # ddp is fine


def test_more_processes_than_gpus_is_refused_unless_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "visible_gpu_count", lambda: 2)
    message = machine_error_of("processes = 4\n", device="cuda")
    assert "run.toml:11 [distributed].processes" in message
    assert "4 processes on each node need 4 GPUs, and this machine has 2 GPUs" in message
    assert 'device = \\"cpu\\"' in message or 'device = "cpu"' in message
    assert load("processes = 2\n", device="cuda").distributed.world_size == 2
    assert load("processes = 4\n", device="cpu").distributed.world_size == 4


def test_visible_gpu_count_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert checks.visible_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert checks.visible_gpu_count() == 0


def test_a_section_left_out_is_one_process() -> None:
    cfg = loads_config(BASE.format(device="cpu"), source="run.toml")
    assert cfg.distributed.world_size == 1 and not cfg.distributed.enabled


# ----------------------------------------------------------------------------- launch files


def rundir(tmp_path: Path) -> RunDir:
    rd = RunDir(tmp_path / "20261202-000000-lora-m-abcd")
    rd.path.mkdir()
    return rd


@pytest.mark.parametrize(
    ("strategy", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero3", "DEEPSPEED")]
)
def test_the_accelerate_file_says_the_layout(tmp_path: Path, strategy: str, kind: str) -> None:
    cfg = RunConfig()
    cfg.distributed.processes, cfg.distributed.nodes, cfg.distributed.strategy = 4, 2, strategy
    cfg.distributed.main_address = "10.0.0.1"
    rd = rundir(tmp_path)
    path = dist_files.write_launch_files(cfg, rd, port=29500, node_rank=1)
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] == kind
    assert (data["num_processes"], data["num_machines"], data["machine_rank"]) == (8, 2, 1)
    assert (data["main_process_ip"], data["main_process_port"]) == ("10.0.0.1", 29500)
    assert data["use_cpu"] is False and data["mixed_precision"] == "no"
    if strategy == "fsdp":
        assert data["fsdp_config"]["fsdp_version"] == 2
        assert data["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if strategy == "zero3":
        ds = json.loads((rd.path / "deepspeed.json").read_text())
        assert data["deepspeed_config"]["deepspeed_config_file"] == str(rd.path / "deepspeed.json")
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["train_micro_batch_size_per_gpu"] == "auto"
    else:
        assert not (rd.path / "deepspeed.json").exists()


def test_the_trainer_gets_the_strategy_the_backend_and_the_timeout() -> None:
    from affiner.runner.training.setup import strategy_kwargs

    cfg = RunConfig()
    cfg.distributed.processes, cfg.distributed.timeout_minutes = 2, 5
    assert strategy_kwargs(cfg, "cpu") == {
        "ddp_timeout": 300,
        "ddp_backend": "gloo",
        "ddp_find_unused_parameters": False,
    }
    cfg.distributed.strategy = "fsdp"
    fsdp = strategy_kwargs(cfg, "cuda")
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    assert "ddp_backend" not in fsdp  # NCCL, the Trainer's default on CUDA
    cfg.distributed.strategy = "zero2"
    assert strategy_kwargs(cfg, "cuda")["deepspeed"]["zero_optimization"]["stage"] == 2


def test_launch_command_runs_this_python_s_accelerate_on_the_run(tmp_path: Path) -> None:
    rd = rundir(tmp_path)
    argv = dist_files.launch_argv(rd, node_rank=0, port=29511, resume=True, python="py")
    assert argv[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--config_file") + 1] == str(rd.path / "accelerate.yaml")
    assert argv[argv.index("--main_process_port") + 1] == "29511"
    assert argv[-5:] == ["-m", "affiner.runner.worker", str(rd.path), "--rank", "--resume"]


def test_each_node_gets_its_exact_command(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.distributed.nodes = 3
    rd = rundir(tmp_path)
    commands = dist_files.node_commands(cfg, rd, Path("/shared/run.toml"))
    assert commands == [
        "affiner train /shared/run.toml",
        f"affiner train /shared/run.toml --node-rank 1 --run-id {rd.run_id}-node1",
        f"affiner train /shared/run.toml --node-rank 2 --run-id {rd.run_id}-node2",
    ]


def two_node_run(tmp_path: Path, model: Path) -> RunDir:
    """A run folder whose run.toml spans two nodes (nothing is launched)."""
    from tests.train_helpers import make_run

    return make_run(
        tmp_path, model, distributed={"nodes": 2, "main_address": "10.0.0.1", "main_port": 29500}
    )


def test_command_txt_holds_the_ranks_launch_and_the_other_nodes(
    tiny_llama: Path, runs_dir: Path, tmp_path: Path
) -> None:
    from affiner.runner.run import launch

    source = two_node_run(tmp_path, tiny_llama)
    rd = launch.prepare_run(source.config).run_dir
    text = rd.command.read_text()
    assert "-m accelerate.commands.launch --config_file" in text
    assert f"affiner train {rd.config} --node-rank 1 --run-id {rd.run_id}-node1" in text
    other = launch.prepare_run(source.config, node_rank=1, run_id=f"{rd.run_id}-node1").run_dir
    from affiner.runner.config import load_config

    assert load_config(other.config).distributed.node_rank == 1
    assert "--node-rank 1" not in other.command.read_text()  # only the main node lists them
    with pytest.raises(ConfigError, match=r"--node-rank.*\[distributed\]\.node_rank"):
        launch.prepare_run(source.config, node_rank=2, run_id="x")


def test_the_cli_prints_what_each_other_node_runs(
    tiny_llama: Path,
    runs_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from affiner.tui.cli.entry import main

    source = two_node_run(tmp_path, tiny_llama)
    started: list[RunDir] = []
    # the ranks would wait for node 1 forever: the worker is not started here
    monkeypatch.setattr(
        "affiner.runner.run.launch_worker", lambda rd, **kw: started.append(rd) or 0
    )
    assert main(["train", str(source.config), "--no-preflight"]) == 0
    out = capsys.readouterr().out
    rd = started[0]
    assert "This run spans 2 nodes and waits for them at 10.0.0.1:29500" in out
    assert f"node 1: affiner train {rd.config} --node-rank 1 --run-id {rd.run_id}-node1" in out
    assert main(["train", "--resume", rd.run_id, "--node-rank", "1"]) == 2


# ----------------------------------------------------------------------------- rank failures


def records(tmp_path: Path, *items: RankRecord) -> RunDir:
    rd = rundir(tmp_path)
    for record in items:
        dist_files.write_rank_record(rd, record)
    return rd


def supervisor(rd: RunDir) -> Supervisor:
    cfg = RunConfig()
    cfg.distributed.processes = 2
    return Supervisor(rd, cfg, resume=False)


def test_the_rank_that_died_first_is_the_cause(tmp_path: Path) -> None:
    now = time.time()
    rd = records(
        tmp_path,
        RankRecord(rank=0, pid=11, exit_code=1, ended=now, reason="crash: Connection reset"),
        RankRecord(rank=1, pid=12, node=0, host="gpu1", step=0),  # never said how it ended
    )
    (rd.path / "ranks" / "rank-1.log").write_text("loading\rLoading 50%\rLoading 100%\nstep 7\n")
    rd.log.write_text("traceback : Signal 9 (SIGKILL) received by PID 12\n")
    sup = supervisor(rd)
    # seen gone half a second after rank 0 failed on the broken connection: still the cause
    sup._vanished[1] = now + 0.5
    failure = sup._failure(dist_files.read_rank_records(rd))
    assert failure is not None and failure.record.rank == 1
    message = failure.message()
    assert message.startswith("Rank 1 (node 0, pid 12, gpu1) was killed by SIGKILL at step")
    assert "out-of-memory killer" in message
    assert "its last lines: Loading 100% | step 7" in message


def test_finished_and_stopped_ranks_are_no_failure(tmp_path: Path) -> None:
    rd = records(
        tmp_path, RankRecord(rank=0, pid=11, exit_code=3), RankRecord(rank=1, pid=12, exit_code=0)
    )
    assert supervisor(rd)._failure(dist_files.read_rank_records(rd)) is None


def test_a_crash_says_its_reason(tmp_path: Path) -> None:
    rd = records(
        tmp_path,
        RankRecord(rank=0, pid=11, exit_code=0),
        RankRecord(
            rank=1, pid=12, exit_code=1, ended=time.time(), step=4, reason="oom: Out of memory"
        ),
    )
    failure = supervisor(rd)._failure(dist_files.read_rank_records(rd))
    assert failure is not None
    assert "Rank 1 (node 0, pid 12) failed (oom: Out of memory) at step 4" in failure.message()


def test_log_tail_keeps_a_progress_bar_s_last_drawing(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("a\n\nb 1%\rb 99%\n")
    assert dist_files.log_tail(log) == ["a", "b 99%"]
    assert dist_files.log_tail(tmp_path / "missing.log") == []


def test_the_preflight_table_lists_each_rank_s_peak() -> None:
    from rich.console import Console

    from affiner.runner.run.events import Preflight
    from affiner.tui.cli.runs import render_preflight

    result = Preflight(
        device="cpu",
        measured_peak_bytes=3 * 2**30,
        measured_step_seconds=0.5,
        rank_peaks=[2 * 2**30, 3 * 2**30],
    )
    console = Console(width=120, record=True)
    console.print(render_preflight(result, RunConfig(), source="plan"))
    text = console.export_text()
    assert "peak per rank (2 processes, the estimate is per GPU): 0: 2.00 GiB · 1: 3.00 GiB" in text


def test_a_collective_timeout_is_said_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from affiner.runner.train import _describe_crash

    gloo = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
        "1800000ms for recv operation to complete"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, message = _describe_crash(gloo, 12)
    assert code == "collective_timeout"
    assert "At step 12 this rank waited longer than [distributed].timeout_minutes" in message
    assert "ranks/rank-1.log" in message
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _describe_crash(gloo, 12)[0] == "crash"  # one process has no collective to wait on


def test_with_several_ranks_a_signal_only_asks_until_they_agree() -> None:
    import signal

    from affiner.runner.training.callbacks import StopRequest
    from affiner.runner.training.ranks import StopAgreement

    alone = StopRequest()
    alone._handle(signal.SIGTERM, None)
    assert alone.requested  # one process acts on its own signal
    stop = StopRequest()
    agreement = StopAgreement(stop)
    stop._handle(signal.SIGTERM, None)
    # between this rank's all-reduce and its EventCallback, nothing changes what it will do
    assert stop.signalled and not stop.requested
    assert agreement.on_step_end(None, None, "control") == "control"  # no process group here


def test_a_multi_node_run_is_not_resumed_into_a_hang(
    tiny_llama: Path, runs_dir: Path, tmp_path: Path
) -> None:
    from affiner.planner.errors import AffinerError
    from affiner.runner.run import launch
    from affiner.runner.run.events import RunStatus, write_status

    source = two_node_run(tmp_path, tiny_llama)
    rd = launch.prepare_run(source.config).run_dir
    write_status(rd.path, RunStatus(run_id=rd.run_id, state="stopped"))
    with pytest.raises(AffinerError, match="spans 2 nodes, and resuming one is not supported"):
        launch.check_resumable(rd.run_id)
