"""Class names end to end: what training found in the data is what every reader of the run says.

A tiny Llama classifier trains a few steps through `run_training`; afterwards the run's
``run.toml``, the saved model's config, `ChatSession.from_run` (with the data moved away, so
only the run folder can tell it) and plain transformers + peft, loaded the way the model card
says, all name the classes ``negative`` / ``positive``, never ``LABEL_0``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from affiner.runner.config import load_config, read_raw_config
from affiner.runner.config.io import set_config_values
from affiner.runner.train import EXIT_FINISHED, run_training
from tests.train_helpers import make_run, sentiment_rows

NAMES = {"good": "positive", "bad": "negative"}
FAST = {"max_steps": 4, "logging_steps": 2}


def _named_rows(*, as_ids: bool = False) -> list[dict[str, object]]:
    """The sentiment rows with their classes called negative/positive (or 0/1 when `as_ids`)."""
    rows = []
    for row in sentiment_rows(32):
        name = NAMES[str(row["label"])]
        rows.append({"text": row["text"], "label": int(name == "positive") if as_ids else name})
    return rows


def _card_snippet(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def test_detected_labels_reach_run_toml_chat_and_plain_transformers(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        task="classification",
        rows=_named_rows(),
        training=FAST,
        eval={"every_steps": 4},
    )
    assert read_raw_config(rd.config)["data"]["labels"] == []
    assert run_training(rd.path) == EXIT_FINISHED

    # (a) the run's run.toml now lists them, and still loads as a whole
    assert read_raw_config(rd.config)["data"]["labels"] == ["negative", "positive"]
    assert load_config(rd.config).data.labels == ["negative", "positive"]

    # affiner attach names them in its header
    from rich.console import Console

    from affiner.tui.cli.attach import AttachView

    view = AttachView(rd)
    view.poll()
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(view.render())
    assert "classes  negative, positive" in console.export_text()

    # the playground's session names them from the run folder alone (the data moved away)
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved"))
    from affiner.runner.inference import ChatSession

    session = ChatSession.from_run(rd.path, device="cpu").load()
    assert session.labels == ["negative", "positive"]
    (prediction,) = session.classify(["great loved brilliant fresh good film"])
    assert prediction.label in ("negative", "positive")
    assert set(prediction.probabilities) == {"negative", "positive"}

    # (c) plain transformers + peft, exactly as the card says to load it
    card = rd.model_card.read_text(encoding="utf-8")
    assert "Labels: negative, positive (class ids 0, 1)" in card
    scope: dict[str, object] = {}
    printed = io.StringIO()
    here = Path.cwd()
    os.chdir(rd.path)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(_card_snippet(card), "model card", "exec"), scope)
    finally:
        os.chdir(here)
    model = scope["model"]
    assert model.config.id2label == {0: "negative", 1: "positive"}  # type: ignore[attr-defined]
    assert model.config.label2id == {"negative": 0, "positive": 1}  # type: ignore[attr-defined]
    assert printed.getvalue().strip() in ("negative", "positive")


def test_ids_in_the_data_named_in_run_toml_are_saved_in_the_model_config(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Rows labelled 0/1 with the names listed in run.toml (as a Rotten Tomatoes export is):
    a whole-model run saves them as the model's id2label/label2id."""
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="full",
        task="classification",
        rows=_named_rows(as_ids=True),
        training=FAST,
        eval={"every_steps": 4},
        data={"labels": ["negative", "positive"]},
    )
    assert run_training(rd.path) == EXIT_FINISHED
    assert read_raw_config(rd.config)["data"]["labels"] == ["negative", "positive"]
    config = json.loads((rd.adapter / "config.json").read_text(encoding="utf-8"))
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rd.adapter)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_set_config_values_keeps_the_rest_of_the_file_as_written(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[model]\nname_or_path = "./model"\ntask = "classification"\n\n'
        '[data]\ntrain = "data/train.jsonl"\nmax_seq_len = 96\n',
        encoding="utf-8",
    )
    set_config_values(path, "data", {"labels": ["negative", "positive"]})
    raw = read_raw_config(path)
    assert raw["data"]["labels"] == ["negative", "positive"]
    assert raw["data"]["train"] == "data/train.jsonl"  # not resolved against any folder
    assert raw["data"]["max_seq_len"] == 96 and raw["model"]["name_or_path"] == "./model"
    assert not list(tmp_path.glob(".run-*"))  # the temporary file was renamed into place


def test_set_config_values_refuses_a_value_run_toml_cannot_hold(tmp_path: Path) -> None:
    from affiner.runner.config.io import ConfigError

    path = tmp_path / "run.toml"
    text = '[data]\ntrain = "train.jsonl"\n'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="labels"):
        set_config_values(path, "data", {"labels": "negative"})
    assert path.read_text(encoding="utf-8") == text
