"""One JSON file per measurement of this machine, keyed by what makes a figure stale.

The CPU's matmul rate and the training process's baseline memory are measured once and kept in
affiner's cache folder, each under a key naming the machine and library versions. Reading never
fails (a missing or broken file is empty) and writing is best effort and atomic (a temporary
file, then a rename), so a read-only home or a crash mid-write never stops planning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_entries(path: Path) -> dict[str, Any]:
    """Every entry of the cache file, or nothing when it is missing or not JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def put_entry(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Store `entry` under `key`, keeping the others; best effort."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = load_entries(path)
        data[key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
