"""Exact parameter counts from a model's ``config.json``, by arithmetic alone.

Planning needs a model's size long before (and often instead of) loading it: a 70B model's
shape is known from a 1 kB file. For the families that make up most fine-tuning work
(Llama, Mistral, Mixtral, Qwen2/3, Gemma 1/2, Phi-3, GPT-2, GPT-NeoX, Falcon, OPT, BERT) the
rules in `affiner.planner.models.llama_style` and `affiner.planner.models.classic` reproduce, parameter for
parameter, what transformers 5 builds for the config's class, including the defaults its
config classes fill in for keys a file leaves out. Any other architecture is counted by
building it on PyTorch's meta device (`affiner.planner.models.meta_count`), which costs a torch import
but no memory.

This module holds the entry point and the helpers the family rules share: `ConfigView`
(reads keys with aliases and family defaults, and names the key when a value is wrong) and
`Tally` (adds up parameters per module group and collects the LoRA-wrappable layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.models.spec import MODULE_KEYS, LinearTarget, ModelSpec

_MISSING = object()


class UnsupportedClass(Exception):
    """A known family asked for a model class the arithmetic does not cover (counted on meta)."""


class ConfigView:
    """A config dict read the way transformers' config class reads it.

    Keys may have several spellings (``n_embd`` is GPT-2's ``hidden_size``); a key that is
    absent or ``null`` takes the family default, as the config class would fill it in.

    Args:
        config: the parsed ``config.json``.
        defaults: the family's config-class defaults, by canonical key.
        where: the file the config came from, for error messages.
    """

    def __init__(self, config: dict[str, Any], defaults: dict[str, Any], where: str | None) -> None:
        self.config = config
        self.defaults = defaults
        self.where = where

    def get(self, key: str, *aliases: str, default: Any = _MISSING) -> Any:
        """The first non-null value among `key` and `aliases`, else the default."""
        for name in (key, *aliases):
            value = self.config.get(name)
            if value is not None:
                return value
        if default is not _MISSING:
            return default
        return self.defaults.get(key)

    def integer(self, key: str, *aliases: str, default: Any = _MISSING) -> int:
        """An integer setting; a string or fraction here is a broken config, said plainly."""
        value = self.get(key, *aliases, default=default)
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise AffinerError(
                f"config key {key!r} should be a whole number, found {value!r}",
                hint="fix config.json, or pass the folder of an unmodified checkpoint",
                where=self.where,
            )
        return int(value)

    def number(self, key: str, *aliases: str, default: Any = _MISSING) -> float:
        value = self.get(key, *aliases, default=default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AffinerError(
                f"config key {key!r} should be a number, found {value!r}",
                hint="fix config.json",
                where=self.where,
            )
        return float(value)

    def flag(self, key: str, *aliases: str, default: Any = _MISSING) -> bool:
        return bool(self.get(key, *aliases, default=default))

    def text(self, key: str, *aliases: str, default: Any = _MISSING) -> str:
        value = self.get(key, *aliases, default=default)
        return "" if value is None else str(value)

    def num_labels(self) -> int:
        """Classifier width as transformers derives it: ``id2label`` wins over ``num_labels``."""
        id2label = self.config.get("id2label")
        if isinstance(id2label, dict) and id2label:
            return len(id2label)
        return self.integer("num_labels", default=2)


@dataclass
class Tally:
    """Parameter counts per module group, and the LoRA-wrappable layers, as a model is walked."""

    modules: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODULE_KEYS, 0))
    targets: list[LinearTarget] = field(default_factory=list)

    def add(self, part: str, params: int) -> None:
        """Parameters that are not a LoRA target (embeddings, norms, routers, tied biases)."""
        self.modules[part] += params

    def linear(
        self,
        part: str,
        name: str,
        in_features: int,
        out_features: int,
        count: int,
        *,
        bias: bool,
        kind: str = "linear",
    ) -> None:
        """`count` layers of one shape: their parameters, and one LoRA target entry."""
        if count <= 0:
            return
        target = LinearTarget(name, in_features, out_features, count, bias, kind, part)
        self.modules[part] += target.params
        for index, seen in enumerate(self.targets):
            if (
                seen.name,
                seen.in_features,
                seen.out_features,
                seen.bias,
                seen.kind,
                seen.part,
            ) == (
                name,
                in_features,
                out_features,
                bias,
                kind,
                part,
            ):
                self.targets[index] = LinearTarget(
                    name, in_features, out_features, seen.count + count, bias, kind, part
                )
                return
        self.targets.append(target)

    def head_linear(self, in_features: int, out_features: int, *, bias: bool) -> None:
        """An output-side layer (LM head, classifier): counted, never a LoRA target."""
        self.modules["head"] += in_features * out_features + (out_features if bias else 0)

    def norm(self, size: int, count: int, *, bias: bool, part: str = "norms") -> None:
        """`count` norms of width `size` (LayerNorm has a bias, RMSNorm does not)."""
        self.modules[part] += count * size * (2 if bias else 1)

    @property
    def total(self) -> int:
        return sum(self.modules.values())


@dataclass
class Shape:
    """What a family rule reports besides the tally; becomes a `ModelSpec` in `spec_from_config`."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tied_embeddings: bool
    mlp_kind: str
    hidden_act: str
    norm_kind: str
    tally: Tally
    parallel_residual: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    num_experts: int = 0
    experts_per_token: int = 0
    inactive_params: int = 0
    is_decoder: bool = True


#: A family rule: reads the config for one class and fills a `Shape`.
FamilyRule = Callable[[ConfigView, str], Shape]


@dataclass(frozen=True)
class Family:
    """One ``model_type``: its rule, its config-class defaults, and the classes it counts.

    Attributes:
        rule: the counting function.
        defaults: what transformers' config class fills in for absent keys.
        prefix: class-name prefix (``Llama``); a class is ``prefix + suffix``.
        default_class: the class counted when the config names none of ours.
        suffixes: class suffixes the rule handles (``ForCausalLM``, ``Model``...).
    """

    rule: FamilyRule
    defaults: dict[str, Any]
    prefix: str
    default_class: str
    suffixes: tuple[str, ...]

    def pick_class(self, config: dict[str, Any]) -> str:
        """The class transformers would build: ``architectures[0]`` when it is this family's."""
        names = config.get("architectures") or []
        wanted = names[0] if isinstance(names, list) and names else None
        if not isinstance(wanted, str) or not wanted.startswith(self.prefix):
            return self.default_class
        if wanted in {self.prefix + suffix for suffix in self.suffixes}:
            return wanted
        raise UnsupportedClass(wanted)


def families() -> dict[str, Family]:
    """Every ``model_type`` counted by arithmetic (imported late: the rule modules import this one)."""
    from affiner.planner.models.classic import CLASSIC_FAMILIES
    from affiner.planner.models.llama_style import LLAMA_STYLE_FAMILIES

    return {**LLAMA_STYLE_FAMILIES, **CLASSIC_FAMILIES}


def config_dtype(config: dict[str, Any]) -> str | None:
    """The checkpoint dtype a config states (``dtype`` in transformers 5, ``torch_dtype`` before)."""
    value = config.get("dtype") or config.get("torch_dtype")
    if not isinstance(value, str) or not value or value == "auto":
        return None
    return value.removeprefix("torch.")


def spec_from_config(
    config: dict[str, Any],
    *,
    name: str,
    source: str = "config",
    path: str | None = None,
    trust_remote_code: bool = False,
) -> ModelSpec:
    """The `ModelSpec` of the model a ``config.json`` describes, with exact parameter counts.

    Known families are counted by arithmetic (no torch). Any other ``model_type``, or a
    class of a known family that the rules do not cover, is built on the meta device by
    `affiner.planner.models.meta_count.spec_from_meta` (which imports transformers).

    Args:
        config: the parsed config.
        name: what the user called the model (shown in reports).
        source: where the config came from (``config``, ``folder``, ``hub-cache``, ``hub``).
        path: the local folder or file, if any (used in messages and kept on the spec).
        trust_remote_code: allow the meta fallback to run modelling code shipped with the model.

    Raises:
        AffinerError: no ``model_type``, a malformed value, or an architecture that cannot be built.
    """
    if not isinstance(config, dict):
        raise AffinerError(
            "a model config must be a JSON object", hint="pass the model's config.json", where=path
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise AffinerError(
            "config has no 'model_type', so the architecture is unknown",
            hint='a transformers config.json names it, e.g. "model_type": "llama"; '
            "pass the config.json of the checkpoint itself",
            where=path,
        )
    family = families().get(model_type)
    if family is None:
        return _meta(config, name=name, path=path, trust_remote_code=trust_remote_code)
    try:
        cls = family.pick_class(config)
    except UnsupportedClass:
        return _meta(config, name=name, path=path, trust_remote_code=trust_remote_code)
    shape = family.rule(ConfigView(config, family.defaults, path), cls)
    return build_spec(shape, config, name=name, model_type=model_type, source=source, path=path)


def _meta(
    config: dict[str, Any], *, name: str, path: str | None, trust_remote_code: bool
) -> ModelSpec:
    from affiner.planner.models.meta_count import spec_from_meta

    return spec_from_meta(config, name=name, path=path, trust_remote_code=trust_remote_code)


def build_spec(
    shape: Shape,
    config: dict[str, Any],
    *,
    name: str,
    model_type: str,
    source: str,
    path: str | None,
) -> ModelSpec:
    """Turn a family's `Shape` into the shared `ModelSpec`."""
    total = shape.tally.total
    return ModelSpec(
        name=name,
        model_type=model_type,
        architecture=shape.architecture,
        source=source,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        tied_embeddings=shape.tied_embeddings,
        mlp_kind=shape.mlp_kind,
        hidden_act=shape.hidden_act,
        norm_kind=shape.norm_kind,
        params_total=total,
        modules=dict(shape.tally.modules),
        lora_targets=tuple(shape.tally.targets),
        params_active=total - shape.inactive_params if shape.num_experts else None,
        parallel_residual=shape.parallel_residual,
        attention_dropout=shape.attention_dropout,
        hidden_dropout=shape.hidden_dropout,
        num_experts=shape.num_experts,
        experts_per_token=shape.experts_per_token,
        is_decoder=shape.is_decoder,
        dtype=config_dtype(config),
        path=path,
        raw_config=dict(config),
    )
