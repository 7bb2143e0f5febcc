"""The guided assistant's step machine (affiner.tui.assistant.flow), driven without a terminal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from affiner.planner.units import format_duration
from affiner.runner.run.events import Preflight
from affiner.tui.assistant.flow import AssistantFlow, DataPreview, Reply
from tests.assistant_fakes import fake_plan, gpu_device, hardware, model_spec


def texts(reply: Reply) -> str:
    return "\n".join(say.text for say in reply.messages)


def tasks(reply: Reply) -> list[tuple[str, object]]:
    return [(task.kind, task.arg) for task in reply.tasks]


def preview(path: str = "train.jsonl", rows: int = 1000) -> DataPreview:
    return DataPreview(
        path=path,
        format="chat",
        rows=rows,
        sample=[{"messages": [{"role": "user", "content": "hi"}]}],
        dropped=[("train.jsonl:7", "not valid JSON (Expecting value)")],
        lengths=[100] * 90 + [900] * 10,
        example=[("<|im_start|>user\nhi", False), ("hello", True)],
    )


@pytest.fixture
def at_data() -> AssistantFlow:
    flow = AssistantFlow()
    flow.start()
    flow.hardware_ready(hardware(), gpu_device())
    flow.submit("models/llama")
    flow.model_ready(model_spec(path="models/llama"))
    flow.plan_ready(fake_plan())
    return flow


def test_walks_hardware_then_asks_for_the_model() -> None:
    flow = AssistantFlow(default_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert tasks(flow.start()) == [("probe", None)]
    reply = flow.hardware_ready(hardware(), gpu_device())
    assert flow.step == "model"
    assert "NVIDIA GeForce RTX 4090" in texts(reply) and "Which model?" in texts(reply)
    assert "Enter uses `HuggingFaceTB/SmolLM2-135M-Instruct`" in texts(reply)
    reply = flow.submit("")  # Enter accepts the default
    assert tasks(reply) == [("resolve_model", "HuggingFaceTB/SmolLM2-135M-Instruct")]
    assert reply.messages[0].role == "user"


def test_model_answer_resolves_then_plans_and_asks_for_data() -> None:
    flow = AssistantFlow()
    flow.start()
    flow.hardware_ready(hardware(), gpu_device())
    assert tasks(flow.submit("7B")) == [("resolve_model", "7B")]
    reply = flow.model_ready(model_spec(max_pos=256))
    assert flow.step == "data" and ("plan", None) in tasks(reply)
    assert "**6.74 B parameters**" in texts(reply) and "Which training data?" in texts(reply)
    assert flow.settings.seq_len == 256  # capped at what the model reads


def test_without_a_default_enter_asks_again() -> None:
    flow = AssistantFlow()
    flow.hardware_ready(hardware(), gpu_device())
    reply = flow.submit("")
    assert not reply.tasks and "I need a model" in texts(reply)


def test_failed_model_is_explained_and_asked_again() -> None:
    flow = AssistantFlow()
    flow.hardware_ready(hardware(), gpu_device())
    flow.submit("nope/missing")
    reply = flow.failed("resolve_model", "no model folder or cached hub id 'nope/missing'")
    assert "**That did not work** (resolve model): no model folder" in texts(reply)
    assert "Which model?" in texts(reply) and flow.step == "model"


def test_data_shows_rows_bad_lines_histogram_example_then_the_plan(at_data: AssistantFlow) -> None:
    flow = at_data
    assert tasks(flow.submit("train.jsonl")) == [("load_data", "train.jsonl")]
    reply = flow.data_ready(preview())
    kinds = [say.kind for say in reply.messages]
    assert kinds[:3] == ["data", "histogram", "example"]
    summary = reply.messages[0].text
    assert "**1,000 rows** of **chat** data" in summary
    assert "`train.jsonl:7`: not valid JSON" in summary and "The first rows" in summary
    # the plan shown is the one made with the data's rows, not the one made before them
    assert tasks(reply) == [("plan", None)] and "recommended" not in texts(reply)
    reply = flow.plan_ready(fake_plan())
    assert "plan" in [say.kind for say in reply.messages]
    assert flow.step == "plan" and "**LoRA** is recommended" in texts(reply)
    assert flow.data.truncated(512) == 10


def test_questions_get_specific_answers_at_any_step(at_data: AssistantFlow) -> None:
    assert "needs **61.0 GiB**" in texts(at_data.submit("why not full?"))
    assert at_data.step == "data"  # a question does not move the conversation
    assert "I did not understand" not in texts(at_data.submit("what fits?"))


def test_unknown_lines_outside_answer_steps_list_what_works(at_data: AssistantFlow) -> None:
    at_data.data_ready(preview())
    reply = at_data.submit("make it faster")
    assert "I did not understand “make it faster”" in texts(reply) and not reply.tasks


def test_settings_replan_and_report_the_change(at_data: AssistantFlow) -> None:
    flow = at_data
    flow.data_ready(preview())
    flow.plan_ready(fake_plan())  # the plan the data asked for
    reply = flow.submit("rank 64")
    assert tasks(reply) == [("plan", None)] and flow.settings.lora_rank == 64
    reply = flow.plan_ready(fake_plan(rank=64))
    assert texts(reply).startswith(
        "LoRA rank: 16 → **64**. LoRA now peaks at **18.0 GiB** (was 16.5 GiB)"
    )
    # epochs change the run's steps, which the plan counts: re-planned, then the time.
    reply = flow.submit("epochs 1")
    assert tasks(reply) == [("plan", None)] and flow.plan_request().epochs == 1
    reply = flow.plan_ready(fake_plan(rank=64))
    assert texts(reply).startswith("Epochs: 3 → **1**.\n\nLoRA: about **900 ms a step**")
    # the learning rate changes neither: answered at once
    reply = flow.submit("lr 1e-4")
    assert not reply.tasks and "0.0002 → **0.0001**" in texts(reply)
    # quiet changes (the settings fields, on every keystroke) re-plan without a message
    reply = flow.change_setting("batch", 8, quiet=True)
    assert tasks(reply) == [("plan", None)] and not reply.messages
    assert flow.plan_ready(fake_plan(batch=8)).messages == []


def test_impossible_settings_are_refused_with_the_reason(at_data: AssistantFlow) -> None:
    assert "reads at most 4,096 tokens" in texts(at_data.submit("seq 8192"))
    assert at_data.settings.seq_len == 512
    assert "must be above zero" in texts(at_data.submit("batch 0"))


def test_choosing_a_method_follows_it_everywhere(at_data: AssistantFlow) -> None:
    flow = at_data
    reply = flow.submit("use qlora")
    assert flow.settings.method == "qlora" and flow.candidate().method == "qlora"
    assert "Using **QLoRA (4-bit base)** (the recommendation is LoRA)" in texts(reply)
    reply = flow.submit("use full")
    assert "needs **61.0 GiB**" in texts(reply)  # chosen, and told it will not fit
    assert "Full fine-tuning" in texts(flow.submit("how long?"))


def test_full_fine_tuning_gets_a_smaller_learning_rate_unless_set(at_data: AssistantFlow) -> None:
    assert at_data.settings.lr_for("full") == 2e-5 and at_data.settings.lr_for("lora") == 2e-4
    at_data.submit("lr 3e-4")
    assert at_data.settings.lr_for("full") == 3e-4


def test_what_if_another_gpu_replans_and_blocks_running_here(at_data: AssistantFlow) -> None:
    flow = at_data
    flow.data_ready(preview())
    assert tasks(flow.submit("what if I had an A100")) == [("target", "a100")]
    a100 = gpu_device("A100 80GB", 80)
    assert tasks(flow.set_target(a100)) == [("plan", None)]
    reply = flow.plan_ready(fake_plan(capacity_gib=80))
    assert "Re-planned for **A100 80GB**" in texts(
        reply
    ) and "full fine-tuning**: 61.0 GiB, fits" in texts(reply)
    assert "not this machine" in texts(flow.submit("launch"))
    flow.set_target(None)
    assert flow.device.name == "NVIDIA GeForce RTX 4090"


def test_back_next_and_goto_move_between_steps(at_data: AssistantFlow) -> None:
    flow = at_data
    flow.data_ready(preview())
    assert flow.step == "plan"
    flow.submit("next")
    assert flow.step == "settings"
    flow.submit("back")
    assert flow.step == "plan"
    flow.submit("go to data")
    assert flow.step == "data"
    flow.submit("go to settings")
    assert flow.step == "settings"


def test_preflight_then_launch_then_monitor(at_data: AssistantFlow, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "the cat sat"}\n')
    flow = at_data
    flow.data_ready(preview(str(data)))
    flow.submit("rank 32")
    flow.plan_ready(fake_plan(rank=32))
    flow.submit("")  # plan → settings
    flow.submit("")  # settings → preflight
    assert flow.step == "preflight"
    reply = flow.submit("")  # Enter runs the pre-flight check
    ((kind, config),) = tasks(reply)
    assert kind == "preflight"
    assert (config.method.name, config.method.lora_rank, config.data.max_seq_len) == (
        "lora",
        32,
        912,  # the data's p99 (900 tokens) rounded up: no length was typed
    )
    assert config.model.name_or_path == "models/llama" and config.data.train == str(data)
    assert config.training.learning_rate == 2e-4 and config.training.epochs == 3
    event = Preflight(device="cpu", measured_peak_bytes=15 * 10**9, measured_step_seconds=1.1)
    reply = flow.preflight_ready(event)
    assert "peak memory (process resident memory): **14.0 GiB** (predicted 17.0 GiB)" in texts(
        reply
    )
    assert "step time: **1.1 s** (predicted 900 ms)" in texts(reply) and flow.step == "launch"
    reply = flow.submit("")
    assert [k for k, _ in tasks(reply)] == ["launch"]
    run = tmp_path / "runs" / "run-1"
    reply = flow.launched(run)
    assert tasks(reply) == [("open_monitor", run)] and flow.step == "monitor"


def test_launch_before_data_says_what_is_missing() -> None:
    flow = AssistantFlow()
    flow.hardware_ready(hardware(), gpu_device())
    assert "Choose a model and data first" in texts(flow.submit("launch"))


def test_the_first_message_offers_the_demo_and_demo_ready_prefills_it() -> None:
    flow = AssistantFlow()
    flow.start()
    offer = flow.hardware_ready(hardware(gpus=False), gpu_device())
    assert "demo classify" in " ".join(say.text for say in offer.messages)
    reply = flow.submit("demo chat")
    assert [task.kind for task in reply.tasks] == ["demo"] and reply.tasks[0].arg == "chat"
    preset = {
        "default_model": "/cache/smollm2",
        "default_data": "/runs/demo-data/chat/train.jsonl",
        "default_eval": "/runs/demo-data/chat/eval.jsonl",
        "settings": {"method": "lora", "epochs": 1.0, "learning_rate": 1e-3, "seq_len": 128},
    }
    ready = flow.demo_ready(preset)
    assert flow.step == "model" and flow.default_model == "/cache/smollm2"
    assert flow.settings.method == "lora" and flow.settings.learning_rate_set
    assert "/cache/smollm2" in " ".join(say.text for say in ready.messages)


def test_the_demo_offer_promises_the_plans_time_for_this_machine() -> None:
    from affiner.planner.hardware.device import DeviceTarget
    from affiner.runner.demo import planned_seconds

    cpu = DeviceTarget(
        "cpu", "CPU (test)", "cpu", 24 << 30, 20 << 30, False, False,
        peak_tflops_fp32=0.5, measured=True,
    )  # fmt: skip
    text = texts(AssistantFlow().hardware_ready(hardware(gpus=False), cpu))
    assert "minutes on two CPU cores" not in text  # the old fixed promise
    for key in ("classify", "chat"):
        seconds = planned_seconds(key, cpu)
        assert seconds and f"training planned at about {format_duration(seconds)} here" in text
    # twice the matmul rate, half the time: the figure follows the machine
    fast = dataclasses.replace(cpu, peak_tflops_fp32=1.0)
    assert planned_seconds("classify", fast) < planned_seconds("classify", cpu)
