"""The app's demo and ``affiner demo --headless`` run one run.toml (issue 17, point 3).

The headless demo's config is `affiner.runner.demo.tasks._config`; the app's is what the
assistant builds after walking the same steps with the demo's preset. Both must agree on every
setting that changes what the run reports: schedule, evaluation cadence and step-0 evaluation,
label order, LoRA targets and dropout, precision, batch, and a pre-flight run once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.hardware.device import DeviceTarget
from affiner.planner.models.offline import offline_spec
from affiner.planner.recommend import plan
from affiner.runner.demo.data import DemoData
from affiner.runner.demo.tasks import PRESETS, _config, _request
from affiner.runner.run.events import Preflight
from affiner.tui.assistant import assistant_preset
from affiner.tui.assistant.flow import AssistantFlow, DataPreview, Reply
from tests.assistant_fakes import hardware

GIB = 1024**3
CPU = DeviceTarget(
    kind="cpu", name="CPU (test)", source="cpu", memory_total=16 * GIB, memory_free=12 * GIB,
    bf16=False, fp16=False, peak_tflops_fp32=0.2, measured=True,
)  # fmt: skip


def _run(flow: AssistantFlow, reply: Reply) -> None:
    for task in reply.tasks:
        if task.kind == "plan":
            _run(flow, flow.plan_ready(plan(flow.spec, flow.device, flow.plan_request())))


def _headless(key: str, tmp_path: Path) -> tuple[object, DemoData]:
    preset = PRESETS[key]
    data = DemoData(tmp_path / "train.jsonl", tmp_path / "eval.jsonl", preset.train_rows, 48, "t")
    spec = offline_spec(preset.model)
    best = plan(spec, CPU, _request(preset, CPU, preset.train_rows, None)).best
    return _config(preset, best, tmp_path / "model", data, CPU, max_steps=None), data


def _app(headless: object, data: DemoData, tmp_path: Path, key: str) -> AssistantFlow:
    prepared = SimpleNamespace(model_path=tmp_path / "model", data=data, config=headless)
    flow = AssistantFlow()
    flow.hardware_ready(hardware(gpus=False), CPU)
    flow.demo_ready(assistant_preset(prepared))
    flow.submit("")  # Enter: the demo's model
    spec = dataclasses.replace(offline_spec(PRESETS[key].model), path=str(tmp_path / "model"))
    _run(flow, flow.model_ready(spec))
    preview = DataPreview(
        path=str(data.train),
        format="classification" if key == "classify" else "chat",
        rows=data.train_rows,
        lengths=[40] * 90 + [60] * 10,
    )
    _run(flow, flow.data_ready(preview))
    return flow


SAME = (
    "training.lr_scheduler", "training.warmup_ratio", "training.epochs", "training.learning_rate",
    "training.micro_batch", "training.grad_accum", "training.precision", "training.device",
    "training.max_steps", "training.seed", "training.logging_steps", "eval.every_steps",
    "eval.at_start", "data.labels", "data.max_seq_len", "data.seed", "method.name",
    "method.lora_rank", "method.lora_alpha", "method.lora_dropout", "method.target_modules",
    "checkpoint.keep_last",
)  # fmt: skip


def _get(cfg: object, dotted: str) -> object:
    section, key = dotted.split(".")
    value = getattr(getattr(cfg, section), key)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("key", ["classify", "chat"])
def test_the_app_builds_the_headless_demo_run_toml(key: str, tmp_path: Path) -> None:
    headless, data = _headless(key, tmp_path)
    flow = _app(headless, data, tmp_path, key)
    app = flow.build_config()
    differ = {
        k: (_get(headless, k), _get(app, k)) for k in SAME if _get(headless, k) != _get(app, k)
    }
    assert not differ, differ
    assert app.training.preflight is False  # the demo's own: no pre-flight in the worker


def test_after_the_watched_pre_flight_the_worker_does_not_run_another(tmp_path: Path) -> None:
    headless, data = _headless("classify", tmp_path)
    flow = _app(headless, data, tmp_path, "classify")
    flow.recipe.pop("training__preflight")  # as for any run the user plans in the app
    assert flow.build_config().training.preflight is True
    s = flow.candidate().settings
    event = Preflight(
        device="cpu", measured_peak_bytes=2 * GIB, measured_step_seconds=1.5,
        micro_batch=s.micro_batch, grad_accum=s.grad_accum,
    )  # fmt: skip
    _run(flow, flow.preflight_ready(event))
    config = flow.build_config()
    assert config.plan.measured_peak_bytes == 2 * GIB and config.training.preflight is False


def test_a_setting_the_user_changes_in_the_app_is_theirs(tmp_path: Path) -> None:
    headless, data = _headless("chat", tmp_path)
    flow = _app(headless, data, tmp_path, "chat")
    for line in ("dropout 0", "targets q,v"):
        _run(flow, flow.submit(line))
    config = flow.build_config()
    assert config.method.lora_dropout == 0.0
    assert config.method.target_modules == ["q_proj", "v_proj"]
    assert config.training.lr_scheduler == "linear"  # the rest of the recipe stays


def test_affiner_demo_opens_the_app_on_the_ready_classify_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``affiner demo`` (no task) is what the README says: the app on a ready task, not the
    general assistant asking which model."""
    from affiner.tui.cli import demo as cli_demo
    from affiner.tui.cli.entry import build_parser

    readied: list[str] = []
    opened: list[object] = []

    def prepare(key: str, runs_dir: object, shrink: object, console: object) -> object:
        readied.append(key)
        return SimpleNamespace(key=key)

    class App:
        return_code = 0

        def run(self) -> int:
            return 0

    def build(prepared: object, runs_dir: object) -> App:
        opened.append(prepared)
        return App()

    monkeypatch.setattr(cli_demo, "prepare_with_progress", prepare)
    monkeypatch.setattr(cli_demo, "_build_demo_app", build)
    args = build_parser().parse_args(["demo"])
    assert args.func(args) == 0
    assert readied == ["classify"] and opened == [SimpleNamespace(key="classify")]
