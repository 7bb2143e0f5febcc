"""The scriptable CLI: ``affiner hw | model | plan | train | preflight | runs | attach | stop | demo``.

Each subcommand lives in a module of this room with ``register(subparsers)``; `main` parses and
dispatches, printing a user mistake (an `AffinerError`) without a traceback and exiting 2.
"""

from affiner.tui.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
