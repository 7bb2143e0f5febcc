"""The pieces every family's shape rule is written with, apart from the dispatcher that picks a rule.

`ConfigView` reads a config's keys with aliases and family defaults (and names the key when a
value is wrong), `Tally` adds up parameters per module group and collects the LoRA-wrappable
layers, `Shape` is what a rule returns and `Family` ties a ``model_type`` to its rule. The
rules (`affiner.planner.models.llama_style`, `affiner.planner.models.classic`) and the meta-device counter
import this module; `affiner.planner.models.shapes` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.models.spec import MODULE_KEYS, LinearTarget

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


def config_dtype(config: dict[str, Any]) -> str | None:
    """The checkpoint dtype a config states (``dtype`` in transformers 5, ``torch_dtype`` before)."""
    value = config.get("dtype") or config.get("torch_dtype")
    if not isinstance(value, str) or not value or value == "auto":
        return None
    return value.removeprefix("torch.")
