"""What the user typed as "the model" → a `ModelSpec`.

A reference is, in the order tried:

1. a local path: a folder holding ``config.json`` (what ``save_pretrained`` writes, or a
   Hugging Face cache folder ``models--org--name``), or a ``config.json`` itself;
2. an offline model's name (``smollm2``, ``minilm``: see `affiner.planner.models.offline`);
3. a bare size: ``7B``, ``0.5b``, ``8x7B`` (see `affiner.planner.models.sizes`);
4. a Hugging Face id, ``org/name`` (optionally ``@revision``): read from the local Hugging
   Face cache (``HF_HUB_CACHE``, ``HF_HOME``), and fetched from the hub only when
   ``HF_HUB_OFFLINE`` is not set. Only ``config.json`` is ever fetched, never weights.

Only ``config.json`` is read; no torch or transformers is imported for the families
`affiner.planner.models.shapes` counts by arithmetic.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from affiner.planner.errors import AffinerError
from affiner.planner.hub import hub_offline
from affiner.planner.locations import hub_cache_dir
from affiner.planner.models.offline import offline_spec
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.models.sizes import EXAMPLES, is_size, spec_from_size
from affiner.planner.models.spec import ModelSpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?$")
_WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_WHAT_WORKS = (
    f"pass a folder with config.json, a config.json, a Hugging Face id such as "
    f"Qwen/Qwen2.5-0.5B, or a size such as {EXAMPLES}"
)


def read_config(file: Path) -> dict[str, Any]:
    """Parse a ``config.json``; a broken file is reported with its line and column."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AffinerError(
            "config is not UTF-8 text", hint="pass the model's config.json", where=str(file)
        ) from exc
    except OSError as exc:
        raise AffinerError(
            f"cannot read the config: {exc.strerror}", where=str(file), hint="check the path"
        ) from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AffinerError(
            f"config is not valid JSON: {exc.msg} (column {exc.colno})",
            hint="fix the file, or download it again",
            where=f"{file}:{exc.lineno}",
        ) from exc
    if not isinstance(config, dict):
        raise AffinerError(
            f"config should be a JSON object, found a {type(config).__name__}",
            hint="pass the model's config.json",
            where=str(file),
        )
    return config


def _snapshot_config(repo_folder: Path, revision: str = "main") -> Path | None:
    """``config.json`` in a hub cache folder (``models--org--name``): the ref's snapshot first."""
    ref = repo_folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    candidate = repo_folder / "snapshots" / commit / "config.json"
    if candidate.is_file():
        return candidate
    found = sorted(
        (repo_folder / "snapshots").glob("*/config.json"),
        key=lambda file: file.stat().st_mtime,
        reverse=True,
    )
    return found[0] if found else None


def _from_path(path: Path, name: str, trust_remote_code: bool) -> ModelSpec:
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file() and path.name.startswith("models--"):
            config_file = _snapshot_config(path) or config_file
        if not config_file.is_file():
            weights = [p.name for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES][:3]
            found = f" (found {', '.join(weights)})" if weights else ""
            raise AffinerError(
                f"no config.json in this folder{found}",
                hint="pass the folder transformers saved the model to (save_pretrained writes "
                "config.json), the config.json itself, or a size such as 7B",
                where=str(path),
            )
        config = read_config(config_file)
        folder = str(config_file.parent)
        return spec_from_config(
            config, name=name, source="folder", path=folder, trust_remote_code=trust_remote_code
        )
    if path.suffix.lower() in _WEIGHT_SUFFIXES:
        raise AffinerError(
            "this is a weights file; affiner reads the model's shape from its config.json",
            hint="pass the folder that holds config.json next to the weights, or a size such as 7B",
            where=str(path),
        )
    config = read_config(path)
    return spec_from_config(
        config, name=name, source="config", path=str(path), trust_remote_code=trust_remote_code
    )


def _from_hub(ref: str, trust_remote_code: bool) -> ModelSpec:
    repo_id, _, revision = ref.partition("@")
    revision = revision or "main"
    cache = hub_cache_dir()
    repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
    cached = _snapshot_config(repo_folder, revision) if repo_folder.is_dir() else None
    if cached is not None:
        return spec_from_config(
            read_config(cached),
            name=ref,
            source="hub-cache",
            path=str(cached.parent),
            trust_remote_code=trust_remote_code,
        )
    if hub_offline():
        raise AffinerError(
            f"{repo_id} is not in the local Hugging Face cache ({cache}), and HF_HUB_OFFLINE is "
            "set, so the hub is not asked",
            hint=f"on a machine with internet run `hf download {repo_id}` and copy the cache "
            "folder here (set HF_HOME or HF_HUB_CACHE to it), or pass the model's folder",
        )
    return _download_config(repo_id, revision, cache, ref, trust_remote_code)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub before huggingface_hub's retries (about 25 s offline).

    Behind a proxy a direct connection proves nothing, so the check is skipped there.
    """
    if any(
        os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    parsed = urlsplit(_hub_endpoint())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _download_config(
    repo_id: str, revision: str, cache: Path, ref: str, trust_remote_code: bool
) -> ModelSpec:
    """Fetch ``config.json`` alone from the hub (the login token, if any, is never shown)."""
    from huggingface_hub import errors, hf_hub_download

    hint_folder = "or pass the model's folder"
    if not hub_reachable():
        raise AffinerError(
            f"{repo_id} is not in the local Hugging Face cache ({cache}), and the hub "
            f"({_hub_endpoint()}) cannot be reached from here",
            hint=f"on a machine with internet run `hf download {repo_id}` and copy the cache "
            "folder here (set HF_HOME or HF_HUB_CACHE to it), or pass the model's folder; "
            "set HF_HUB_OFFLINE=1 to skip this check",
        )
    try:
        file = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=str(cache))
    except errors.GatedRepoError as exc:
        raise AffinerError(
            f"{repo_id} is gated: its licence must be accepted before download",
            hint=f"accept it on https://huggingface.co/{repo_id}, then run `hf auth login`; {hint_folder}",
        ) from exc
    except errors.RepositoryNotFoundError as exc:
        raise AffinerError(
            f"the hub has no model {repo_id!r} (or it is private)",
            hint=f"check the id; for a private model run `hf auth login`; {hint_folder}",
        ) from exc
    except errors.RevisionNotFoundError as exc:
        raise AffinerError(
            f"{repo_id} has no revision {revision!r}", hint="check the branch, tag or commit"
        ) from exc
    except errors.LocalEntryNotFoundError as exc:  # the hub went away mid-request
        raise AffinerError(
            f"could not fetch {repo_id}'s config from the hub (connection failed)",
            hint=f"check the connection, or set HF_HUB_OFFLINE=1 and {hint_folder}",
        ) from exc
    except errors.EntryNotFoundError as exc:
        raise AffinerError(
            f"{repo_id} has no config.json (a GGUF-only or non-transformers repository?)",
            hint=f"pass the id of the original transformers model, a size such as 7B, {hint_folder}",
        ) from exc
    except (OSError, ValueError) as exc:  # network down, proxy, timeouts, malformed ids
        raise AffinerError(
            f"could not fetch {repo_id}'s config from the hub: {type(exc).__name__}",
            hint=f"check the connection, or set HF_HUB_OFFLINE=1 and {hint_folder}",
        ) from exc
    path = Path(file)
    return spec_from_config(
        read_config(path),
        name=ref,
        source="hub",
        path=str(path.parent),
        trust_remote_code=trust_remote_code,
    )


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", "."))
        or text.endswith((".json", *_WEIGHT_SUFFIXES))
        or text.partition("@")[0].rstrip("/").count("/") > 1  # hub ids have one slash at most
    )


def resolve_model(ref: str | os.PathLike[str], *, trust_remote_code: bool = False) -> ModelSpec:
    """The `ModelSpec` for a folder, a ``config.json``, a size or a Hugging Face id.

    Args:
        ref: what the user typed.
        trust_remote_code: let an architecture transformers does not ship run the modelling
            code that comes with the checkpoint (only used by the meta-device count).

    Raises:
        AffinerError: nothing matches, the config is broken, or the id is not available offline.
    """
    text = os.fspath(ref).strip()
    if not text:
        raise AffinerError("no model given", hint=_WHAT_WORKS)
    path = Path(text).expanduser()
    if path.exists():
        return _from_path(path, text, trust_remote_code)
    offline = offline_spec(text)  # smollm2, minilm: models a registry package carries
    if offline is not None:
        return offline
    if is_size(text):
        return spec_from_size(text)
    if _looks_like_path(text):
        raise AffinerError("no such file or folder", hint=_WHAT_WORKS, where=text)
    repo_id = text.partition("@")[0]
    if _HUB_ID.match(repo_id) and ".." not in repo_id:
        return _from_hub(text, trust_remote_code)
    raise AffinerError(
        f"{text!r} is not a folder, a config.json, a Hugging Face id or a size", hint=_WHAT_WORKS
    )
