"""The model card reads true against the run's own event log.

Tiny Llama runs through `run_training`: a finished classifier evaluated before training, a
language model stopped by SIGTERM after only its step-0 evaluation, and one that fails on a
NaN loss. Every number in the card's evaluation table is the event log's at the step its
column names; the card's loading snippet runs as written; a run that did not finish says so
first. `describe_base` names offline and cached bases without a machine-local path.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from affiner.planner.locations import cache_dir
from affiner.runner.run.events import effective_events, read_events
from affiner.runner.train import EXIT_FAILED, EXIT_FINISHED, EXIT_STOPPED, run_training
from affiner.runner.training.base_model import describe_base
from affiner.runner.training.model_card import METRIC_WORDS
from tests.train_callbacks import PoisonWeights, Terminate
from tests.train_helpers import events_of, make_run, of_type

KEY_OF = {words: key for key, words in METRIC_WORDS}


def _table(card: str) -> tuple[list[int], dict[str, list[str]]]:
    """The evaluation table: each column's step, and each metric's cells."""
    section = card.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")][1:]
    steps = [int(cell.rsplit("step ", 1)[1]) for cell in header]
    cells = {}
    for row in rows[1:]:
        parts = [cell.strip() for cell in row.strip("|").split("|")]
        if parts[0] != "---":
            cells[KEY_OF[parts[0]]] = parts[1:]
    return steps, cells


def _evals_by_step(rd: Any) -> dict[int, Any]:
    return {e.step: e for e in effective_events(read_events(rd.path)) if e.type == "eval"}


def _run_snippet(card: str, folder: Path) -> dict[str, Any]:
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    here = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, "model card", "exec"), scope)
    finally:
        os.chdir(here)
    return scope


def test_a_finished_runs_card_matches_its_event_log(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        task="classification",
        training={"max_steps": 6, "logging_steps": 2},
        eval={"every_steps": 3, "at_start": True},
        checkpoint={"every_steps": 3},
        data={"dedupe": True},
    )
    assert run_training(rd.path) == EXIT_FINISHED
    card = rd.model_card.read_text(encoding="utf-8")
    events = events_of(rd)
    finished = events[-1]
    assert finished["state"] == "finished" and finished["step"] == 6

    steps, cells = _table(card)
    evals = _evals_by_step(rd)
    assert steps[0] == 0 and 6 in steps  # before training, and the adapter's own step
    for key, values in cells.items():
        for step, shown in zip(steps, values, strict=True):
            value = getattr(evals[step], key)
            assert shown == ("N/A" if value is None else f"{value:.4f}"), (key, step)
    assert "F1 (macro)" in cells or "f1" in cells
    assert "| F1 (macro) |" in card and "precision (macro)" in card
    assert "`adapter/` holds the weights of step 6." in card
    best = [c for c in of_type(events, "checkpoint") if c["best"]][-1]
    assert f"`checkpoints/best/` holds the weights of step {best['step']}," in card
    assert "Format: classification (detected)" in card and "format: auto" not in card
    started = of_type(events, "run_started")[0]
    assert f"— {started['train_rows']:,} examples after the split and de-duplication" in card
    assert f"— {started['eval_rows']:,} examples" in card
    assert "0 duplicates removed" in card and "48 rows read" in card
    assert str(tiny_llama) not in card.split("## How to load it")[0]  # no local path in prose
    assert "Stopped" not in card and "failed" not in card.split("\n", 3)[2]
    assert "Step 0 scores the base model with the new classification head" in card

    model = _run_snippet(card, rd.path)["model"]
    assert model.config.id2label == {0: "bad", 1: "good"}

    # the folder a user uploads carries the card too, not PEFT's placeholder naming a local path
    uploaded = (rd.adapter / "README.md").read_text(encoding="utf-8")
    meta = uploaded.split("---")[1]
    assert card in uploaded and "library_name: peft" in meta and str(tiny_llama) not in meta
    assert "More Information Needed" not in uploaded


def test_the_adapter_card_names_a_hub_base_in_its_metadata() -> None:
    from affiner.runner.config import RunConfig
    from affiner.runner.training.model_card import adapter_card

    cfg = RunConfig()
    cfg.model.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg.method.name = "qlora"
    text = adapter_card(cfg, "# the card\n")
    meta = text.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in meta
    assert "- base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in meta
    assert text.endswith("# the card\n")


def test_a_stopped_runs_card_says_so_and_keeps_step_0_apart(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        training={"max_steps": 20, "logging_steps": 2},
        eval={"every_steps": 100, "at_start": True},
        checkpoint={"every_steps": 100},
    )
    assert run_training(rd.path, callbacks=[Terminate(at_step=3)]) == EXIT_STOPPED
    card = rd.model_card.read_text(encoding="utf-8")
    title, _, rest = card.partition("\n\n")
    assert title == f"# {rd.run_id}"
    assert rest.startswith("> **Stopped before the end of training** (step 3 of 20)")
    assert f"affiner train --resume {rd.run_id}" in rest.split("\n", 1)[0]
    assert "Last evaluation" not in card and "last evaluation on the held-out set" not in card

    steps, cells = _table(card)
    assert steps == [0]  # only the base model was evaluated, and the column says so
    assert "before training, step 0" in card
    assert cells["loss"][0] == f"{_evals_by_step(rd)[0].loss:.4f}"
    assert "The weights in `adapter/` (step 3) were not evaluated" in card
    assert "(the base model, before training)" in card

    scope = _run_snippet(card, rd.path)
    assert type(scope["model"]).__name__ == "PeftModelForCausalLM"
    # trained on plain text: the snippet continues a text, and generates
    assert "trained on plain text" in card
    assert scope["output"].shape[1] > scope["inputs"]["input_ids"].shape[1]


@pytest.mark.parametrize("template", [True, False], ids=["chat-template", "plain-layout"])
def test_the_snippet_asks_with_the_prompt_training_put_before_the_loss(
    tiny_llama: Path, template: bool
) -> None:
    """What the card tells a user to type gives the token ids the playground asks with."""
    from transformers import AutoTokenizer

    from affiner.runner.data.render import prompt_ids
    from affiner.runner.training.model_card import CardFacts, _asking_lines

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    if not template:
        tokenizer.chat_template = None
    facts = CardFacts("finished", 1, 1, 1, data_format="chat", chat_template=template)
    lines = _asking_lines(facts)
    asking = [line for line in lines if "generate" not in line and "decode" not in line]
    scope: dict[str, Any] = {"tokenizer": tokenizer}
    exec("\n".join(asking), scope)
    asked = [{"role": "user", "content": "Hello! What can you do?"}]
    assert scope["inputs"]["input_ids"][0].tolist() == prompt_ids(asked, tokenizer)


def test_a_failed_runs_card_says_so_first(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="full",
        training={"max_steps": 10, "logging_steps": 1},
        eval={"every_steps": 100},
        checkpoint={"every_steps": 100},
    )
    assert run_training(rd.path, callbacks=[PoisonWeights(at_step=2)]) == EXIT_FAILED
    card = rd.model_card.read_text(encoding="utf-8")
    banner = card.split("\n\n")[1]
    assert banner.startswith("> **This run failed at step ")
    assert "This attempt saved no final weights." in banner
    assert "`adapter/` holds" not in card and "from_pretrained" not in card
    assert "Nothing to load from this attempt" in card


def test_describe_base_never_names_a_machine_local_offline_folder() -> None:
    smollm2 = describe_base(str(cache_dir() / "models" / "smollm2-135m-instruct"))
    assert smollm2.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1 GGUF" in smollm2.note and "dequantized" in smollm2.note
    assert "smollm2-135m-instruct" in smollm2.note and str(cache_dir()) not in smollm2.note
    assert any("offline_folder('smollm2-135m-instruct')" in line for line in smollm2.load_lines)

    by_name = describe_base("smollm2")
    assert by_name.name == "HuggingFaceTB/SmolLM2-135M-Instruct"

    cached = describe_base("/home/u/.cache/huggingface/hub/models--org--tiny/snapshots/abc123")
    assert cached.name == "org/tiny" and cached.load_lines == ("BASE = 'org/tiny'",)

    hub = describe_base("HuggingFaceTB/SmolLM2-360M")
    assert hub.name == "HuggingFaceTB/SmolLM2-360M" and hub.note == ""


@pytest.mark.parametrize("folder", ["/data/models/my-llama"])
def test_a_plain_local_base_is_named_by_its_folder(folder: str) -> None:
    local = describe_base(folder)
    assert local.name == "my-llama" and "local folder" in local.note
    assert local.load_lines[0].startswith(f"BASE = {folder!r}")
