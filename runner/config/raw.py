"""``run.toml`` as plain tables, before any checking; and the one TOML parser import.

`affiner.runner.config.io` turns the tables into a checked `RunConfig`. Some readers want the
tables as written instead: the preflight rewrites its measured figures into them (so relative
paths stay relative), and the run summary and the monitor pick one or two values from a file
that may not even be valid any more. They all read TOML through this module, so the choice
of parser (``tomllib``, or ``tomli`` before Python 3.11) is made once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["read_raw_config", "tomllib"]


def read_raw_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tables of a ``run.toml`` exactly as written: no defaults, no checks, paths as they are.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not UTF-8, or not TOML (``tomllib.TOMLDecodeError`` is a ValueError).
    """
    return tomllib.loads(Path(path).read_text(encoding="utf-8"))
