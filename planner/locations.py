"""Where affiner keeps things on disk, and where it finds the Hugging Face hub's cache.

One place for locations: the measured CPU rate and the converted offline models both live in
affiner's cache folder, and the model resolver reads the hub's cache. Each is read from the
environment at every call (tests and the CLI set it after import).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "hub_cache_dir"]

#: Overrides affiner's cache folder.
CACHE_ENV = "AFFINER_CACHE"


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
