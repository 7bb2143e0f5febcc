"""The playground's models in a child process (`affiner.runner.chat`, `ChatProcess`).

Real round trips on the tiny Llama: what the child streams is what an in-process `ChatSession`
says (greedy), a classifier's labels come back, a load error comes back in words, and the
child ends when its client closes and when the process that started it dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.inference import ChatProcess, ChatSession
from affiner.runner.run.process import pid_alive
from tests.assistant_fakes import make_adapter
from tests.train_helpers import classifier_run, make_run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "tell me a story about the sea"}]
GREEDY = {"max_new_tokens": 12, "temperature": 0.0}


@pytest.fixture(scope="module")
def chat_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run folder whose adapter has non-zero weights (tuned and base answers differ)."""
    rd = make_run(tmp_path_factory.mktemp("chat"), tiny_llama, method="lora")
    make_adapter(tiny_llama, rd.adapter)
    return rd.path


@pytest.fixture(scope="module")
def classify_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification run that saved a whole model (as a full fine-tune does)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    rd = make_run(
        tmp_path_factory.mktemp("classify"),
        tiny_llama,
        method="full",
        task="classification",
        data={"labels": ["good", "bad"]},
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=2, dtype=torch.float32
    )
    model.save_pretrained(rd.adapter)
    return rd.path


def by_hand(chat: ChatProcess, lines: list[str], until_id: int) -> list[dict]:
    """Write raw lines to the child's stdin; read its lines (each must be JSON) up to `until_id`'s."""
    child = chat._child
    assert child is not None and child.stdin is not None and child.stdout is not None
    child.stdin.write("".join(line + "\n" for line in lines))
    child.stdin.flush()
    answers: list[dict] = []
    while not answers or answers[-1].get("id") != until_id:
        line = child.stdout.readline()
        assert line, "the child ended mid-protocol"
        answers.append(json.loads(line))  # every line is JSON
    return answers


def test_the_child_streams_what_the_in_process_session_says(chat_run: Path) -> None:
    local = ChatSession.from_run(chat_run, device="cpu")
    local_pieces = [p for p in local.stream(MESSAGES, use_adapter=True, **GREEDY) if p]
    expected = {
        side: local.generate(MESSAGES, use_adapter=side == "tuned", **GREEDY)
        for side in ("tuned", "base")
    }
    with ChatProcess.from_run(chat_run, device="cpu") as chat:
        assert chat.task == "causal_lm" and chat.is_peft and chat.device == "cpu"
        assert chat.adapter == chat_run / "adapter" and chat.base == local.base
        pieces = list(chat.stream(MESSAGES, use_adapter=True, **GREEDY))
        # The same pieces as in process (the empty ones, the streamer's holding back, left out).
        assert pieces == local_pieces and "".join(pieces) == expected["tuned"]
        assert chat.generate(MESSAGES, use_adapter=False, **GREEDY) == expected["base"]
        assert expected["tuned"] != expected["base"]

        # Leaving a reply midway cancels it; the next question is answered cleanly.
        reply = chat.stream(MESSAGES, max_new_tokens=200, temperature=0.0)
        next(reply)
        reply.close()
        assert chat.generate(MESSAGES, **GREEDY) == expected["tuned"]

        # A request the model cannot answer comes back in words; the child goes on serving.
        with pytest.raises(AffinerError, match="generator, not a classifier"):
            chat.classify(["a text"])
        assert chat.generate(MESSAGES, use_adapter=False, **GREEDY) == expected["base"]

        # The protocol by hand, on the same child: one JSON object a line each way, a bad line
        # answered in words, an unknown request named; then end of input ends it (below).
        assert chat._ready["type"] == "ready" and chat._ready["task"] == "causal_lm"
        answers = by_hand(
            chat,
            [
                "this is not json",
                json.dumps({"op": "stream", "id": 707, "messages": MESSAGES, **GREEDY}),
                json.dumps({"op": "dance", "id": 708}),
            ],
            until_id=708,
        )
        assert answers[0]["type"] == "error" and "not JSON" in answers[0]["message"]
        pieces = [a["text"] for a in answers if a["type"] == "piece" and a["id"] == 707]
        assert pieces and {"type": "done", "id": 707, "stopped": False} in answers
        assert answers[-1] == {"type": "error", "id": 708, "message": "unknown request 'dance'"}
        assert chat.generate(MESSAGES, **GREEDY) == expected["tuned"]  # still serving
        pid, child = chat.pid, chat._child
    assert pid is not None and not pid_alive(pid)
    assert child is not None and child.returncode == 0  # closed stdin: it left by itself
    assert chat.log is not None and not chat.log.exists()  # a clean end leaves no log behind
    with pytest.raises(AffinerError, match="closed"):
        chat.generate(MESSAGES)


def test_a_classifier_run_s_labels_come_back(
    classify_run: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    # A whole-model classifier whose run.toml lists its labels loads them (in process).
    whole = ChatSession.from_run(classify_run, device="cpu")
    texts = ["loved this film", "boring plot"]
    assert whole.labels == ["good", "bad"]
    assert {p.label for p in whole.classify(texts)} <= {"good", "bad"}

    # A LoRA classifier whose run.toml lists none: the child finds them (and that the base side's
    # head is untrained) and says so once loaded; its predictions are the in-process ones.
    run = classifier_run(tmp_path, tiny_llama)
    local = ChatSession.from_run(run, device="cpu")
    chat = ChatProcess.from_run(run, device="cpu")
    assert chat.labels == [] and chat.base_head_untrained is None  # known once loaded
    with chat:
        assert chat.task == "classification" and sorted(chat.labels) == ["bad", "good"]
        assert chat.base_head_untrained is True
        predictions = chat.classify(texts)
        with pytest.raises(AffinerError, match="classifier"):
            next(chat.stream(MESSAGES))
    assert [p.label for p in predictions] == [p.label for p in local.classify(texts)]
    for p in predictions:
        assert set(p.probabilities) == {"good", "bad"}
        assert abs(sum(p.probabilities.values()) - 1) < 1e-5


def test_a_load_error_comes_back_in_words(chat_run: Path, tmp_path: Path) -> None:
    # The run names a base model that is not there: the child says so and ends.
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (chat_run / "run.toml").read_text(encoding="utf-8")
    base = ChatSession.from_run(chat_run).base
    (broken / "run.toml").write_text(text.replace(base, str(tmp_path / "no-such-model")))
    (broken / "adapter").symlink_to(chat_run / "adapter")
    chat = ChatProcess(broken, device="cpu")
    with pytest.raises(AffinerError) as caught:
        chat.load()
    words = str(caught.value)
    assert "Traceback" not in words and "no-such-model" in words
    assert chat.pid is not None and not pid_alive(chat.pid)
    # A run with nothing saved fails before any process is started.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.toml").write_text(text)
    with pytest.raises(AffinerError, match="no saved weights"):
        ChatProcess(empty)


#: A parent that starts a chat, says its child's pid, then waits to be killed.
PARENT = r"""
import sys, time
from affiner.runner.inference import ChatProcess

chat = ChatProcess(sys.argv[1], device="cpu").load()
print(chat.pid, flush=True)
time.sleep(600)
"""


def test_the_child_ends_when_its_parent_dies(chat_run: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(chat_run)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = parent.stdout.readline() if parent.stdout is not None else ""
        assert line.strip().isdigit(), "the parent did not start its chat"
        child = int(line)
        assert pid_alive(child)
        parent.send_signal(signal.SIGKILL)  # no close(), no atexit: only the pipe tells
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
