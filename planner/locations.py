"""Where affiner keeps things on disk, and where it finds the Hugging Face hub's cache.

One place for locations: the folder that holds run folders, affiner's cache folder (the
measured CPU rate, the converted offline models), and the hub's cache the model resolver reads.
The runs root lives here, below the runner, so that ``affiner hw`` can show its disk without
importing the runner. Each is read from the
environment at every call (tests and the CLI set it after import).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "RUNS_ENV", "cache_dir", "hub_cache_dir", "runs_root"]

#: Overrides affiner's cache folder.
CACHE_ENV = "AFFINER_CACHE"
#: Overrides the runs root (``--runs-dir`` sets it for the process and its workers).
RUNS_ENV = "AFFINER_RUNS"


def runs_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds every run folder: `override`, else ``$AFFINER_RUNS``, else ``./runs``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(RUNS_ENV)
    return Path(env).expanduser() if env else Path.cwd() / "runs"


def cache_dir() -> Path:
    """affiner's cache: ``$AFFINER_CACHE``, else ``$XDG_CACHE_HOME/affiner``, else ``~/.cache/affiner``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "affiner"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub reads it once)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"
