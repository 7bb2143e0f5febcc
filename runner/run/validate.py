"""The check before a launch: everything that can be known without loading weights, known first.

`affiner train`, the app's launch and the headless demo all reach `prepare_run`, which calls
`check_before_launch` before it writes a run folder. A mistake found here is an `AffinerError`
(exit code 2) with the file and line or the run.toml key at fault, and no run folder is left
behind; only what needs the weights (and the tokenizer) is left to the worker.

What is checked:

* **the model**: the folder exists and holds a readable ``config.json`` (or, for a hub id, the
  Hugging Face cache holds it; with ``HF_HUB_OFFLINE`` set nothing else can be had), the
  config names its sizes (a config with only ``model_type`` would make transformers build the
  library's default model, 6.7B parameters for ``llama``), code shipped with the model is only
  run when ``[model].trust_remote_code`` says so, and ``[data].max_seq_len`` fits the model's
  positions;
* **the data**: every row is read and validated by `affiner.runner.data.load_rows`, the loader
  the worker uses, so the message is the one the worker would give, ``file:line`` included;
  it streams and keeps only a digest of each row, so a large file stays cheap.

The warnings it returns are the data warnings the worker records
(`affiner.runner.data.notices`), worded by the same function.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.hub import hub_offline
from affiner.planner.locations import hub_cache_dir
from affiner.runner.config import RunConfig

#: config.json keys that give a model's width or depth, by family; a config with none of them
#: is not a checkpoint's config (transformers would fill every size from its defaults).
SIZE_KEYS = (
    "hidden_size",
    "n_embd",
    "d_model",
    "dim",
    "num_hidden_layers",
    "n_layer",
    "n_layers",
    "num_layers",
)
#: config.json keys that give the number of positions a model was trained on.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx")
#: config.json keys of position encodings that reach past the trained length (rotary, T5's
#: relative buckets): longer sequences run, on positions the model never saw. Without them
#: positions are a learned table that longer input overruns (an index error mid-training).
STRETCHABLE_KEYS = (
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rotary_dim",
    "rotary_pct",
    "relative_attention_num_buckets",
)
STRETCHABLE_TYPES = ("rotary", "relative_key", "relative_key_query")
MODEL_KEY = "[model].name_or_path"


def check_before_launch(
    cfg: RunConfig, *, source: str | os.PathLike[str] | None = None
) -> list[str]:
    """Check the model and the data of a configuration whose values already passed its checks.

    Args:
        cfg: the configuration, paths resolved.
        source: the run.toml it was read from, if any: a problem with one of its keys is then
            reported at that key's line (``run.toml:4 [model].name_or_path``).

    Returns:
        Warnings to show before the run starts, one line each.

    Raises:
        AffinerError: the model or the data cannot be used; the message names the file and
            line or the run.toml key.
    """
    _check_machine(cfg, source)
    try:
        warnings = check_model(cfg)
        warnings += check_data(cfg)
    except AffinerError as error:
        if source is not None and error.where and error.where.startswith("["):
            error.where = _key_line(Path(source), error.where)
        raise
    return warnings


def _check_machine(cfg: RunConfig, source: str | os.PathLike[str] | None) -> None:
    """What this machine cannot run (too few GPUs, no DeepSpeed), at the run.toml's line."""
    from affiner.runner.config.io import check_for_this_machine, key_lines

    lines: dict[str, int] = {}
    if source is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = key_lines(Path(source).read_text(encoding="utf-8"))
    check_for_this_machine(
        cfg, where=str(source) if source is not None else "run configuration", lines=lines
    )


def _key_line(file: Path, key: str) -> str:
    """``run.toml:4 [model].name_or_path`` for the key ``[model].name_or_path``, when found."""
    from affiner.runner.config.io import key_lines

    section, _, name = key.partition("].")
    dotted = f"{section.lstrip('[')}.{name}"
    try:
        lines = key_lines(file.read_text(encoding="utf-8"))
        line = lines.get(dotted) or lines.get(dotted.partition(".")[0])  # else its section
    except (OSError, UnicodeDecodeError):
        line = None
    return f"{file}:{line} {key}" if line else f"{file} {key}"


# ---------------------------------------------------------------------------- the model


def check_model(cfg: RunConfig) -> list[str]:
    """Refuse a model the worker could not load; warn about a sequence length past its positions."""
    config_file = locate_model_config(cfg)
    if config_file is None:  # a hub id not cached yet, with the hub online: the worker downloads it
        return []
    config = read_model_config(config_file)
    _check_sizes(config, config_file)
    _check_remote_code(cfg, config, config_file)
    return _check_positions(cfg, config, config_file)


def locate_model_config(cfg: RunConfig) -> Path | None:
    """The ``config.json`` the worker will load: in the model folder, or in the hub cache.

    Returns None for a hub id that is not cached while the hub may be reached (the worker
    downloads it; nothing here goes to the network).
    """
    ref = cfg.model.name_or_path.strip()
    path = Path(ref).expanduser()
    if path.is_absolute() or ref.startswith((".", "~")):
        return _folder_config(ref, path)
    return _cached_config(ref, cfg.model.revision)


def _folder_config(ref: str, path: Path) -> Path:
    if not path.exists():
        raise AffinerError(
            f"model folder {ref} does not exist",
            where=MODEL_KEY,
            hint="check the path: it should be the folder that holds config.json, the weights and "
            "the tokenizer (what save_pretrained writes), or a hub id already in the cache",
        )
    if not path.is_dir():
        raise AffinerError(
            f"{ref} is a file; the model is loaded from the folder that holds it with config.json",
            where=MODEL_KEY,
            hint=f"set name_or_path to the folder {path.parent}",
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:6]
        snapshots = path / "snapshots"
        hint = (
            f"this is a Hugging Face cache folder: give its repo id, or a folder under {snapshots}"
            if path.name.startswith("models--") and snapshots.is_dir()
            else "give the folder transformers saved the model to (save_pretrained writes config.json)"
        )
        raise AffinerError(
            f"no config.json in the model folder {ref}"
            + (f" (it holds {', '.join(found)})" if found else " (it is empty)"),
            where=MODEL_KEY,
            hint=hint,
        )
    return config_file


def _cached_config(repo_id: str, revision: str | None) -> Path | None:
    """``config.json`` of a hub id in the local cache, found by huggingface_hub's own rule."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    try:
        found = try_to_load_from_cache(
            repo_id, "config.json", cache_dir=str(cache), revision=revision or None
        )
    except ValueError as exc:  # huggingface_hub's HFValidationError: not a valid repo id
        raise AffinerError(
            f"{repo_id!r} is neither a local folder nor a valid hub id ({exc})",
            where=MODEL_KEY,
            hint="give the model's folder (a path starting with / or ./), or an id like org/name",
        ) from None
    if isinstance(found, str):
        return Path(found)
    if hub_offline():
        raise AffinerError(
            f"{repo_id} is not a local folder, and it is not in the Hugging Face cache ({cache}); "
            "HF_HUB_OFFLINE is set, so it cannot be downloaded",
            where=MODEL_KEY,
            hint=f"on a machine with internet run `hf download {repo_id}` and copy the cache here "
            "(HF_HOME or HF_HUB_CACHE points at it), or set name_or_path to the model's folder",
        )
    return None


def read_model_config(config_file: Path) -> dict[str, Any]:
    """The parsed ``config.json``; a broken one is refused with its line."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AffinerError(
            "the model's config is not UTF-8 text",
            where=str(config_file),
            hint="download the model again, or save it again with save_pretrained",
        ) from None
    except OSError as exc:
        raise AffinerError(
            f"cannot read the model's config: {exc.strerror}", where=str(config_file)
        ) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AffinerError(
            f"the model's config is not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})",
            where=f"{config_file}:{exc.lineno}",
            hint="download the model again, or save it again with save_pretrained",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise AffinerError(
            f"the model's config is not valid JSON ({exc})",
            where=str(config_file),
            hint="download the model again, or save it again with save_pretrained",
        ) from None
    if not isinstance(config, dict):
        raise AffinerError(
            f"the model's config should be a JSON object, found {type(config).__name__}",
            where=str(config_file),
            hint="download the model again, or save it again with save_pretrained",
        )
    return config


def _text_part(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it as ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def _check_sizes(config: dict[str, Any], config_file: Path) -> None:
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return  # transformers may still tell the architecture from the folder name; the worker says
    if any(key in config or key in _text_part(config) for key in SIZE_KEYS):
        return
    keys = ", ".join(sorted(config)[:6])
    raise AffinerError(
        f"config.json names model_type {model_type!r} but none of the model's sizes ({keys}): "
        f"transformers would build its default {model_type} model from library defaults, not "
        "this checkpoint",
        where=str(config_file),
        hint="use the complete config.json saved with the weights (save_pretrained writes "
        "hidden_size, num_hidden_layers and the rest)",
    )


def _check_remote_code(cfg: RunConfig, config: dict[str, Any], config_file: Path) -> None:
    """A model whose architecture comes only with its own code needs ``trust_remote_code``."""
    if cfg.model.trust_remote_code or not isinstance(config.get("auto_map"), dict):
        return
    model_type = config.get("model_type")
    # Imported only here: transformers costs seconds, and only models shipping code need it.
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES:
        return  # transformers has its own class for it and ignores the shipped code
    raise AffinerError(
        f"this model's architecture ({model_type!r}) comes with its own Python code "
        f"(auto_map in {config_file.name}), which transformers {__version__} does not include; "
        "affiner runs such code only when asked",
        where="[model].trust_remote_code",
        hint="if you trust the model's code, set trust_remote_code = true under [model] in "
        "run.toml; otherwise pick a model transformers supports",
    )


def _check_positions(cfg: RunConfig, config: dict[str, Any], config_file: Path) -> list[str]:
    part = _text_part(config)
    positions = next(
        (part[k] for k in POSITION_KEYS if isinstance(part.get(k), int) and part[k] > 0), None
    )
    wanted = cfg.data.max_seq_len
    if positions is None or wanted <= positions:
        return []
    stretchable = any(key in part for key in STRETCHABLE_KEYS) or (
        part.get("position_embedding_type") in STRETCHABLE_TYPES
    )
    if not stretchable:
        raise AffinerError(
            f"[data].max_seq_len is {wanted}, but the model has {positions} positions "
            f"({config_file.name}): a longer example would run past its position table",
            where="[data].max_seq_len",
            hint=f"set max_seq_len = {positions} or less under [data] in run.toml",
        )
    return [
        f"[data].max_seq_len: {wanted} is beyond the model's {positions} positions "
        f"({config_file.name}); examples longer than {positions} tokens train on positions the "
        f"model never saw, and it may do badly on them. Set max_seq_len = {positions} unless "
        "the model is meant to stretch (rope_scaling)"
    ]


# ---------------------------------------------------------------------------- the data


def check_data(cfg: RunConfig) -> list[str]:
    """Read and validate every row as the worker will; return the data warnings, one line each."""
    from affiner.runner.data.notices import loading_warnings
    from affiner.runner.data.rows import load_rows

    loaded = load_rows(cfg.data, task=cfg.model.task, keep_rows=False)
    return [f"{w.message} ({w.action})" for w in loading_warnings(loaded)]
