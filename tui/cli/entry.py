"""The ``affiner`` command: the TUI with no arguments, and scriptable subcommands.

Each subcommand lives in its own ``tui/cli_*.py`` module with two functions:
``register(subparsers)`` adds its parser (and sets ``func``), and the function it sets
does the work, importing anything heavy inside the call. So ``affiner hw`` never pays for
torch, and ``affiner --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_bytes

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
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at exit
        return code
    except AffinerError as error:
        print(f"affiner: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("affiner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _pipe_closed()
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"affiner: {no_space_message(error)}", file=sys.stderr)
        return 1


def _pipe_closed() -> int:
    """The reader of our output went away (``affiner runs --json | head``): stop quietly.

    Python would otherwise report the pipe again when it flushes stdout at exit, so stdout
    is pointed at /dev/null first (the recipe of Python's own signal documentation).
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)


def no_space_message(error: OSError) -> str:
    """One line for a full disk: which file could not be written, and how much room is left."""
    place = error.filename if isinstance(error.filename, str) else None
    if place is None:  # a write to an open file (stdout, a log) names no file
        return "no space left on the device being written to; free some space and run the command again"
    free = ""
    probe = Path(place).expanduser()
    for folder in (probe, *probe.parents):
        try:
            free = f" ({format_bytes(shutil.disk_usage(folder).free)} free)"
            break
        except OSError:
            continue
    return f"no space left on the disk holding {place}{free}; free some space and run the command again"
