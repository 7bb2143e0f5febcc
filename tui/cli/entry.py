"""The ``affiner`` command: the TUI with no arguments, and scriptable subcommands.

Each subcommand lives in its own ``tui/cli_*.py`` module with two functions:
``register(subparsers)`` adds its parser (and sets ``func``), and the function it sets
does the work, importing anything heavy inside the call. So ``affiner hw`` never pays for
torch, and ``affiner --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from affiner.planner.errors import AffinerError

#: Subcommand modules, in the order ``affiner --help`` lists them.
COMMAND_MODULES = (
    "affiner.tui.cli.hw",
    "affiner.tui.cli.model",
    "affiner.tui.cli.plan",
    "affiner.tui.cli.runs",
    "affiner.tui.cli.export",
    "affiner.tui.cli.demo",
)

DESCRIPTION = """\
affiner plans, runs and monitors the fine-tuning of language models.

Run it with no command to open the guided terminal application. The commands below do
the same work from scripts; each takes --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affiner",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"affiner {_version()}")
    parser.add_argument(
        "--runs-dir",
        metavar="DIR",
        default=None,
        help="folder that holds run folders (default: ./runs, or $AFFINER_RUNS)",
    )
    parser.add_argument(
        "--run",
        metavar="RUN",
        default=None,
        help="open the app on this run's monitor (an id, a unique part of one, or a folder)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _version() -> str:
    from affiner import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``affiner`` console script. Returns the process exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs_dir:
        os.environ["AFFINER_RUNS"] = os.path.abspath(args.runs_dir)
    func = getattr(args, "func", None)
    try:
        if func is None:
            from affiner.tui.app import run_app

            return run_app(args)
        return int(func(args) or 0)
    except AffinerError as error:
        print(f"affiner: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("affiner: interrupted", file=sys.stderr)
        return 130
