"""What to call a run's base model outside the machine that trained it.

A run's ``run.toml`` holds the base as it was loaded: a hub id, or an absolute folder (an
offline model's name is resolved to its converted folder before the run starts). A model
card that says ``/root/.cache/affiner/models/smollm2-135m-instruct`` tells the next reader
nothing, so the card names the base by its hub id or affiner's offline name, says what an
offline conversion changed (a dequantized GGUF is not the hub's weights), and gives a
reference its loading snippet can use as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from affiner.planner.errors import AffinerError
from affiner.planner.locations import cache_dir
from affiner.planner.models import OFFLINE_MODELS, OfflineModel, converted_dir

#: A folder inside a Hugging Face cache: ``.../models--ORG--NAME/snapshots/<revision>``.
_HUB_CACHE = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")
#: The quantization a GGUF file name carries (``SmolLM2-135M-Instruct.Q4_1.gguf``).
_GGUF_QUANT = re.compile(r"\.((?:I?Q\d[\w]*)|F16|BF16|F32)\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class BaseModelName:
    """How the card names the base model.

    Attributes:
        name: the hub id, the offline model's public name, or a local folder's name.
        note: what else a reader must know (an offline conversion, a machine-local folder);
            empty when the name says it all.
        load_lines: Python lines that set ``BASE`` to something ``from_pretrained`` loads,
            as the loading snippet uses it.
        hub_id: the model's id on the Hugging Face hub, when known.
    """

    name: str
    note: str
    load_lines: tuple[str, ...]
    hub_id: str | None = None


def describe_base(ref: str) -> BaseModelName:
    """Name the base model `ref` (a run's ``[model].name_or_path``) for a model card."""
    offline = offline_model_at(ref)
    if offline is not None:
        return _offline_name(offline)
    path = Path(ref).expanduser()
    if not (path.is_absolute() or path.exists()):
        return BaseModelName(ref, "", (f"BASE = {ref!r}",), hub_id=ref)
    cached = _HUB_CACHE.search(str(path))
    if cached:
        hub_id = f"{cached.group(1)}/{cached.group(2)}"
        return BaseModelName(
            hub_id, "read from the local Hugging Face cache", (f"BASE = {hub_id!r}",), hub_id
        )
    return BaseModelName(
        path.name or str(path),
        "a local folder, not a hub id; the snippet below loads it from its path on the "
        "machine that trained this run: change the path to your copy",
        (f"BASE = {str(path)!r}  # the base model's folder on the training machine",),
    )


def offline_model_at(ref: str) -> OfflineModel | None:
    """The offline model whose name or converted folder `ref` is, else None."""
    from affiner.planner.models import find_offline_model

    if not ref:
        return None
    named = find_offline_model(ref)
    if named is not None and not Path(ref).expanduser().exists():
        return named
    path = Path(ref).expanduser()
    for model in OFFLINE_MODELS:
        if path == cache_dir() / "models" / model.key or _same(path, model):
            return model
    return None


def _same(path: Path, model: OfflineModel) -> bool:
    try:
        return path.resolve() == converted_dir(model).resolve()
    except (OSError, AffinerError):  # its package is not installed: not this one
        return False


def _offline_name(model: OfflineModel) -> BaseModelName:
    hub_id = next((alias for alias in model.aliases if "/" in alias), None)
    name = hub_id or model.title
    load = (
        "from affiner.planner.models import offline_folder",
        f"BASE = offline_folder({model.key!r})  # affiner's offline copy of {name}",
    )
    if model.kind == "gguf":
        found = _GGUF_QUANT.search(model.relative)
        quant = found.group(1).upper() if found else "quantized"
        note = (
            f"affiner's offline `{model.key}`: converted from the {quant} GGUF file "
            f"`{model.relative}` in the `{model.package}` package, dequantized to plain "
            f"weights; they carry {quant}'s rounding and are not the hub's original weights"
        )
    else:
        note = (
            f"affiner's offline `{model.key}`: the model folder the `{model.package}` "
            f"package ships, {model.license} licence"
        )
    return BaseModelName(name, note, load, hub_id)


def has_trained_head(ref: str) -> bool | None:
    """Whether the base was saved as a sequence classifier (its head is trained, not new).

    A base that was not (a language model, a sentence encoder) gets a freshly initialised
    head, so its evaluation before training scores chance, not the base's skill. None when
    the base's ``config.json`` cannot be read.
    """
    import json

    path = Path(ref).expanduser() / "config.json"
    try:
        if path.exists():
            architectures = json.loads(path.read_text(encoding="utf-8")).get("architectures")
        else:
            from transformers import AutoConfig

            architectures = AutoConfig.from_pretrained(ref).architectures
    except Exception:  # unreadable, or not in the cache: say nothing rather than guess
        return None
    if not isinstance(architectures, list):
        return None
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)
