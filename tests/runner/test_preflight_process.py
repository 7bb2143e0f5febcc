"""`run_preflight_process`: the pre-flight in a child, its outcome read from the run folder.

What the TUI and ``affiner preflight`` rely on: a failure comes back in words (never a
traceback), a child that dies says how, and the child never outlives its caller.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.config.io import load_config
from affiner.runner.run import run_preflight_process
from affiner.runner.run.process import pid_alive, worker_argv
from affiner.runner.worker import main as worker_main
from tests.train_helpers import events_of, make_run, of_type


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `tempfile` makes the pre-flight's folder, so the test can see what is left."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.mark.slow
def test_a_data_problem_comes_back_in_words(
    tiny_llama: Path, tmp_path: Path, temp_root: Path
) -> None:
    rd = make_run(tmp_path, tiny_llama, rows=[{"nope": 1}, {"nope": 2}])
    with pytest.raises(AffinerError) as caught:
        run_preflight_process(load_config(rd.config))
    text = str(caught.value)
    assert "cannot tell the data format" in text and "train.jsonl" in text
    assert "Traceback" not in text
    assert list(temp_root.iterdir()) == []  # said in full, so nothing is kept


def test_a_killed_child_says_how_and_keeps_its_log(
    tiny_llama: Path, tmp_path: Path, temp_root: Path
) -> None:
    rd = make_run(tmp_path, tiny_llama)  # the model's config is read first; the child is fake
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho loading\nkill -9 $$\n")
    python.chmod(0o755)
    with pytest.raises(AffinerError, match="killed by SIGKILL") as caught:
        run_preflight_process(load_config(rd.config), python=str(python))
    (kept,) = temp_root.iterdir()
    assert caught.value.hint == f"the pre-flight's log is {kept / 'train.log'}"
    assert "loading" in (kept / "train.log").read_text()


def test_a_cancelled_preflight_stops_its_child(
    tiny_llama: Path, tmp_path: Path, temp_root: Path
) -> None:
    rd = make_run(tmp_path, tiny_llama)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 60\n")
    python.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(AffinerError, match="cancelled"):
        run_preflight_process(
            load_config(rd.config),
            python=str(python),
            cancelled=lambda: (tmp_path / "pid").exists(),
        )
    assert time.monotonic() - started < 30
    pid = int((tmp_path / "pid").read_text())
    assert not pid_alive(pid)
    assert list(temp_root.iterdir()) == []


def test_a_model_needing_remote_code_is_refused_before_a_child_starts(
    tmp_path: Path, temp_root: Path
) -> None:
    """The hint names the run.toml key, as `affiner train` says it (issue 13)."""
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(
        '{"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling.CustomLM"},'
        ' "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,'
        ' "vocab_size": 128}'
    )
    rd = make_run(tmp_path, model)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    python.chmod(0o755)
    with pytest.raises(AffinerError) as caught:
        run_preflight_process(load_config(rd.config), python=str(python))
    assert "trust_remote_code" in f"{caught.value} {caught.value.hint}"
    assert not (tmp_path / "started").exists() and list(temp_root.iterdir()) == []


@pytest.mark.slow
def test_the_worker_stops_when_its_parent_goes(tiny_llama: Path, tmp_path: Path) -> None:
    """With ``--exit-with-parent`` the child ends when its stdin closes: the caller is gone."""
    rd = make_run(tmp_path, tiny_llama)
    child = subprocess.Popen(
        worker_argv(rd.path, "--preflight-only", "--exit-with-parent", python=sys.executable),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    assert child.stdin is not None
    child.stdin.close()  # what the kernel does when the caller exits, however it exits
    # As on Ctrl-C: KeyboardInterrupt, raised in the main thread, ends the process by SIGINT.
    assert child.wait(timeout=30) == -signal.SIGINT
    assert not rd.events.exists() or events_of(rd) == []


def test_a_crash_in_the_worker_is_an_error_event(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affiner.runner.training

    def crash(*args, **kwargs):
        raise RuntimeError("something deep went wrong\nsecond line")

    monkeypatch.setattr(affiner.runner.training, "run_preflight", crash)
    rd = make_run(tmp_path, tiny_llama)
    assert worker_main([str(rd.path), "--preflight-only"]) == 1
    (error,) = of_type(events_of(rd), "error")
    assert error["code"] == "crash"
    assert error["message"] == (
        "The pre-flight check crashed: RuntimeError: something deep went wrong "
        "(traceback in train.log)"
    )


def test_exit_with_parent_goes_with_preflight_only(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        worker_main([str(tmp_path), "--exit-with-parent"])
