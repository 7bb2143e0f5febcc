"""The plan's max length comes from the data's p99 when nobody states one, and says so.

A length the user states (``--seq-len``, or ``[data].max_seq_len`` written in the run.toml)
is never replaced; the model's context window and what fits the device cap the data's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.planner.data_length import (
    LENGTH_MULTIPLE,
    length_from_data,
    nearest_rank,
    round_up_length,
)
from tests.model_configs import LLAMA_3_8B
from tests.tiny_models import write_jsonl

WORDS = ["[UNK]", "say", "word", "ok"]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Llama-shaped config.json with a word-level tokenizer.json (one token a word), and
    100 training rows of 10..109 words (the p99 row has 108 tokens) and a held-out file, so
    all 100 are trained on."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AFFINER_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    small = dict(
        LLAMA_3_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, vocab_size=1000
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(small))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(model / "tokenizer.json"))
    rows = [{"text": " ".join(["word"] * (10 + i))} for i in range(100)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", [{"text": "say ok"}, {"text": "ok say ok"}])
    return model


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    from affiner.tui.cli.entry import main

    assert main(["plan", *args, "--vram", "24", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rounding_and_caps_are_said_in_words() -> None:
    assert LENGTH_MULTIPLE == 16
    assert [round_up_length(n) for n in (1, 16, 17, 72, 108)] == [16, 16, 32, 80, 112]
    assert nearest_rank(list(range(1, 101))) == 99 and nearest_rank([]) == 0
    plain = length_from_data(72)
    assert (plain.seq_len, plain.capped_by) == (80, None)
    assert plain.why.startswith("max length 80: the data's p99 is 72 tokens")
    window = length_from_data(900, window=512)
    assert (window.seq_len, window.capped_by) == (512, "window")
    assert "reads at most 512" in window.why
    memory = length_from_data(3000, window=8192, fits=1000, device="T4")
    assert (memory.seq_len, memory.capped_by) == (992, "memory")
    assert "does not fit on T4" in memory.why


def test_plan_with_data_takes_its_p99_and_says_so(folder: Path, capsys) -> None:
    out = _plan(capsys, "--model", str(folder), "--data", "train.jsonl", "--eval", "eval.jsonl")
    assert out["data"]["lengths"]["p99"] == 108
    assert {c["seq_len"] for c in out["candidates"]} == {112}
    assert out["max_seq_len_from_data"].startswith("max length 112: the data's p99 is 108 tokens")
    assert out["notes"][0].startswith("Max length 112: the data's p99 is 108 tokens")
    assert out["data"]["lengths"]["longer_than_max_seq_len"] == 0


def test_a_stated_length_is_never_changed(folder: Path, capsys, tmp_path: Path) -> None:
    out = _plan(
        capsys,
        "--model",
        str(folder),
        "--data",
        "train.jsonl",
        "--eval",
        "eval.jsonl",
        "--seq-len",
        "64",
    )
    assert {c["seq_len"] for c in out["candidates"]} == {64}
    assert out["max_seq_len_from_data"] is None
    stated = tmp_path / "stated.toml"
    stated.write_text(
        '[model]\nname_or_path = "model"\n[data]\ntrain = "train.jsonl"\nmax_seq_len = 48\n'
    )
    out = _plan(capsys, str(stated))
    assert {c["seq_len"] for c in out["candidates"]} == {48}


def test_a_run_toml_without_a_length_gets_the_datas_and_saves_it(
    folder: Path, capsys, tmp_path: Path
) -> None:
    from affiner.runner.config import load_config

    unstated = tmp_path / "unstated.toml"
    unstated.write_text('[model]\nname_or_path = "model"\n[data]\ntrain = "train.jsonl"\n')
    saved = tmp_path / "saved.toml"
    out = _plan(capsys, str(unstated), "--save", str(saved))
    assert {c["seq_len"] for c in out["candidates"]} == {112}
    assert load_config(saved).data.max_seq_len == 112


def test_the_models_window_caps_the_datas_length(folder: Path, capsys) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 64}))
    out = _plan(capsys, "--model", str(folder), "--data", "train.jsonl", "--eval", "eval.jsonl")
    assert {c["seq_len"] for c in out["candidates"]} == {64}
    assert "reads at most 64" in out["max_seq_len_from_data"]


def test_without_token_lengths_the_plan_keeps_its_default(folder: Path, capsys) -> None:
    (folder / "tokenizer.json").unlink()
    out = _plan(capsys, "--model", str(folder), "--data", "train.jsonl", "--eval", "eval.jsonl")
    assert {c["seq_len"] for c in out["candidates"]} == {512}
    assert out["max_seq_len_from_data"] is None


# ---------------------------------------------------------------- the assistant's data step


def _flow_at_data(max_pos: int = 4096) -> object:
    from affiner.tui.assistant.flow import AssistantFlow
    from tests.assistant_fakes import gpu_device, hardware, model_spec

    flow = AssistantFlow()
    flow.start()
    flow.hardware_ready(hardware(), gpu_device())
    flow.submit("models/llama")
    flow.model_ready(model_spec(path="models/llama", max_pos=max_pos))
    return flow


def _preview(lengths: list[int]) -> object:
    from affiner.tui.assistant.flow import DataPreview

    return DataPreview(path="train.jsonl", format="text", rows=len(lengths), lengths=lengths)


def test_the_assistant_takes_the_datas_p99_and_says_so() -> None:
    flow = _flow_at_data()
    reply = flow.data_ready(_preview(list(range(1, 101))))  # p99: 99 tokens
    assert flow.settings.seq_len == 112
    said = "\n".join(m.text for m in reply.messages)
    assert "Max length 112: the data's p99 is 99 tokens" in said


def test_the_assistant_keeps_a_typed_length_and_a_demos() -> None:
    flow = _flow_at_data()
    flow.change_setting("seq_len", 300)
    flow.data_ready(_preview(list(range(1, 101))))
    assert flow.settings.seq_len == 300
    demo = _flow_at_data()
    demo.settings.seq_len, demo.settings.seq_len_set = 64, True  # assistant_preset's
    demo.data_ready(_preview(list(range(1, 101))))
    assert demo.settings.seq_len == 64


def test_the_assistant_caps_the_datas_length_at_the_models_window() -> None:
    flow = _flow_at_data(max_pos=256)
    reply = flow.data_ready(_preview([900] * 10))
    assert flow.settings.seq_len == 256
    assert "reads at most 256" in "\n".join(m.text for m in reply.messages)


def test_a_chat_templates_tokens_and_default_system_prompt_are_counted(
    folder: Path, capsys, tmp_path: Path
) -> None:
    """SmolLM2's template puts a system prompt before every conversation: a length from the
    texts alone would cut most short chat rows."""
    from tokenizers import Tokenizer

    from affiner.tui.cli.template_overhead import template_overhead

    rows = [
        {
            "messages": [
                {"role": "user", "content": "say " * i},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for i in range(1, 101)
    ]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    write_jsonl(
        tmp_path / "chat-eval.jsonl",
        [{"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "ok"}]}],
    )
    args = ("--model", str(folder), "--data", "chat.jsonl", "--eval", "chat-eval.jsonl")
    bare = _plan(capsys, *args)["data"]["lengths"]["p99"]
    assert bare == 99 + 1 + 2  # without a template: the row's texts, i words, "ok", the roles
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "system say say say say say\n{% endif %}{{ m['role'] + ' ' + m['content'] + '\n' }}"
        "{% endfor %}"
    )
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    overhead = template_overhead(folder, tokenizer)
    assert overhead is not None and overhead(("user", "assistant")) == 6 + 2  # system line, roles
    out = _plan(capsys, *args)
    assert out["data"]["lengths"]["p99"] == 99 + 1 + 8  # the contents, then the template's
    assert "with the chat template's tokens" in out["data"]["note"]
    assert {c["seq_len"] for c in out["candidates"]} == {112}


def test_what_fits_the_device_caps_the_datas_length(tmp_path: Path, monkeypatch, capsys) -> None:
    """8B rows of ~6,000 tokens on a 10 GiB card: the data's length does not fit, the longest
    that does is planned, and the plan says why."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_3_8B))
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "word": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(model / "tokenizer.json"))
    write_jsonl(tmp_path / "long.jsonl", [{"text": "word " * (6000 + i)} for i in range(50)])
    from affiner.tui.cli.entry import main

    assert (
        main(["plan", "--model", str(model), "--data", "long.jsonl", "--vram", "10", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["recommended"] is not None
    why = out["max_seq_len_from_data"]
    assert why.startswith("max length ") and "but a longer one does not fit on" in why
    chosen = int(why.split()[2].rstrip(":"))
    assert 16 <= chosen < 6000 and chosen % LENGTH_MULTIPLE == 0
    best = out["candidates"][out["recommended"]]
    assert best["seq_len"] == chosen and best["fits"]


def test_the_assistant_takes_the_longest_that_fits_when_the_datas_does_not() -> None:
    from affiner.planner.recommend import plan
    from affiner.tui.assistant.flow import AssistantFlow
    from tests.assistant_fakes import gpu_device, hardware, model_spec

    flow = AssistantFlow()
    flow.start()
    flow.hardware_ready(hardware(), gpu_device(gib=16))
    flow.submit("models/llama")
    flow.model_ready(model_spec(path="models/llama"))
    flow.data_ready(_preview([4000] * 100))
    assert flow.settings.seq_len == 4000
    too_long = plan(flow.spec, flow.device, flow.plan_request())
    assert too_long.best is None
    reply = flow.plan_ready(too_long)
    assert [task.kind for task in reply.tasks] == ["plan"]
    said = "\n".join(m.text for m in reply.messages)
    assert "the data's p99 is 4000 tokens, but a longer one does not fit on" in said
    assert 16 <= flow.settings.seq_len < 4000
    fitting = plan(flow.spec, flow.device, flow.plan_request())
    assert fitting.best is not None
    flow.plan_ready(fitting)
    assert flow.plan is fitting and flow.settings.seq_len < 4000
