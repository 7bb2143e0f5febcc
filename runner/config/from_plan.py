"""A planner candidate turned into a ``run.toml``.

The candidate is read by attribute (method, quantization, precision, optimizer,
gradient_checkpointing, micro_batch, grad_accum, seq_len, lora_rank, peak_bytes,
step_seconds, settings; packing and loss_kernel only as stated, `_stated_levers`; the layout,
num_gpus, nodes and sharding, as ``[distributed]``, `_set_layout`), so any
object with those names works: the planner's `Candidate`,
a test double, or a namespace built by a script. The planner spells methods, quantizations,
precisions and optimizers as run.toml does (`affiner.planner.vocabulary`), so they are copied
as they are; a spelling outside the vocabulary is refused by the check with the allowed words.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from affiner.planner.vocabulary import default_learning_rate
from affiner.runner.config.io import ConfigError, convert_value, validate_config
from affiner.runner.config.schema import RunConfig


def _pick(candidate: Any, name: str, default: Any = None) -> Any:
    """`candidate.name`, else `candidate.settings.name`, else `default`."""
    value = getattr(candidate, name, None)
    if value is None:
        value = getattr(getattr(candidate, "settings", None), name, None)
    return default if value is None else value


def build_from_plan(
    candidate: Any,
    *,
    model: str,
    train: str,
    eval: str,
    task: str,
    overrides: dict[str, Any],
) -> RunConfig:
    """The unchecked `RunConfig` for `candidate`; `config_from_plan` checks it.

    `overrides` are a section name with a dict (``training={"epochs": 1}``), a
    ``section__field`` name (``eval__every_steps=10``: `eval` itself is the eval data path), or
    a field name that exists in exactly one section (``learning_rate=1e-4``).
    """
    for name, value in (("model", model), ("train", train), ("eval", eval), ("task", task)):
        if not isinstance(value, str):
            raise ConfigError(
                f"{name}= must be text, got {type(value).__name__}",
                file="plan",
                hint="eval= is the held-out data path; pass [eval] settings as eval__every_steps=...",
            )

    cfg = RunConfig()
    cfg.model.name_or_path = model
    cfg.model.task = task
    cfg.data.train = train
    cfg.data.eval = eval

    cfg.method.name = str(_pick(candidate, "method", "lora"))
    cfg.method.quantization = str(_pick(candidate, "quantization", "none"))
    for name in (
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "trainable_layers",
        "target_modules",
        "double_quant",
    ):
        value = _pick(candidate, name)
        if value is not None:
            _set(cfg, "method", name, value)
    targets = _pick(
        candidate, "lora_targets"
    )  # the planner's TrainSettings spells it so, as a tuple
    if targets is not None and _pick(candidate, "target_modules") is None:
        targets = [str(t) for t in targets] if not isinstance(targets, str) else [targets]
        _set(
            cfg, "method", "target_modules", "all-linear" if targets == ["all-linear"] else targets
        )
    if _pick(candidate, "lora_alpha") is None and _pick(candidate, "lora_rank") is not None:
        cfg.method.lora_alpha = 2 * int(cfg.method.lora_rank)

    cfg.training.precision = str(_pick(candidate, "precision", "auto"))
    cfg.training.optimizer = str(_pick(candidate, "optimizer", "adamw"))
    cfg.training.gradient_checkpointing = bool(_pick(candidate, "gradient_checkpointing", False))
    cfg.training.micro_batch = int(_pick(candidate, "micro_batch", cfg.training.micro_batch))
    cfg.training.grad_accum = int(_pick(candidate, "grad_accum", cfg.training.grad_accum))
    cfg.data.max_seq_len = int(_pick(candidate, "seq_len", cfg.data.max_seq_len))
    attention = _pick(candidate, "attention")
    if isinstance(attention, str) and attention:
        cfg.model.attn_implementation = attention
    for name, value in _stated_levers(candidate).items():
        _set(cfg, "training", name, value)
    _set_layout(cfg, candidate)

    cfg.plan.predicted_peak_bytes = _pick(candidate, "peak_bytes")
    step = _pick(
        candidate, "step_seconds", getattr(getattr(candidate, "time", None), "step_seconds", None)
    )
    cfg.plan.predicted_step_seconds = float(step) if step is not None else None
    device = _pick(candidate, "device")
    if device is not None:
        cfg.plan.device = str(getattr(device, "name", device))
        kind = getattr(device, "kind", None)
        if kind in ("cpu", "cuda"):
            cfg.training.device = kind

    # The method's usual rate, as a run.toml without one gets; a learning_rate override wins.
    cfg.training.learning_rate = default_learning_rate(cfg.method.name)

    sections = {f.name for f in dataclasses.fields(RunConfig)}
    owners: dict[str, list[str]] = {}
    for section in sections:
        for f in dataclasses.fields(getattr(cfg, section)):
            owners.setdefault(f.name, []).append(section)
    for key, value in overrides.items():
        section, _, field_name = key.partition("__")
        if field_name and section in sections:
            _set(cfg, section, field_name, value)
            continue
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"override {key}= must be a dict of fields", file="plan", key=f"[{key}]"
                )
            for field_name, field_value in value.items():
                _set(cfg, key, field_name, field_value)
            continue
        where = owners.get(key, [])
        if len(where) == 1:
            _set(cfg, where[0], key, value)
        elif len(where) > 1:
            raise ConfigError(
                f"override {key!r} is in several sections ({', '.join(sorted(where))})",
                file="plan",
                hint=f"name the section, e.g. {sorted(where)[0]}__{key}=...",
            )
        else:
            close = difflib.get_close_matches(key, list(owners) + list(sections), n=1)
            raise ConfigError(
                f"unknown override {key!r}",
                file="plan",
                hint=(
                    f"did you mean {close[0]!r}?"
                    if close
                    else "use a run.toml field or section name"
                ),
            )
    return cfg


def _set_layout(cfg: RunConfig, candidate: Any) -> None:
    """``[distributed]`` from the plan's layout: `num_gpus` devices over all `nodes`, so each
    node runs ``num_gpus / nodes`` processes, spread by `sharding` (the planner's ``none`` on
    several devices is run.toml's default, ``ddp``). One device leaves the section at its
    defaults: a single process."""
    gpus = int(_pick(candidate, "num_gpus", 1))
    if gpus <= 1:
        return
    nodes = max(1, int(_pick(candidate, "nodes", 1)))
    sharding = str(_pick(candidate, "sharding", "ddp"))
    if gpus % nodes:
        raise ConfigError(
            f"the plan's {gpus} GPUs do not spread evenly over its {nodes} nodes",
            file="plan",
            key="[distributed].processes",
            hint="plan a number of GPUs that is a multiple of the nodes",
        )
    _set(cfg, "distributed", "processes", gpus // nodes)
    _set(cfg, "distributed", "nodes", nodes)
    _set(cfg, "distributed", "strategy", "ddp" if sharding == "none" else sharding)


def _stated_levers(candidate: Any) -> dict[str, Any]:
    """``packing`` and ``loss_kernel`` as the user stated them, to write into [training].

    Only a stated one is written: left out, ``packing`` stays absent and ``loss_kernel``
    ``auto``, so the run decides on the loaded model and device, as the plan assumed. The
    planner's `Candidate` carries them in ``stated_levers`` (its settings hold what they
    resolved to, which is not what to write); any other object states one by having it as
    its own attribute (not its settings').
    """
    stated = dict(getattr(candidate, "stated_levers", None) or {})
    for name in ("packing", "loss_kernel"):
        value = getattr(candidate, name, None)
        if name not in stated and value is not None and not hasattr(candidate, "stated_levers"):
            stated[name] = value
    return {k: v for k, v in stated.items() if k in ("packing", "loss_kernel") and v is not None}


def _set(cfg: RunConfig, section: str, key: str, value: Any) -> None:
    target = getattr(cfg, section)
    hints = {f.name: f for f in dataclasses.fields(target)}
    if key not in hints:
        raise ConfigError(
            f"unknown key {key!r} in [{section}]", file="plan", key=f"[{section}].{key}"
        )
    import typing

    ok, converted, expected = convert_value(value, typing.get_type_hints(type(target))[key])
    if not ok:
        raise ConfigError(
            f"expected {expected}, got {value!r}", file="plan", key=f"[{section}].{key}"
        )
    setattr(target, key, converted)


def config_from_plan(
    candidate: Any,
    *,
    model: str,
    train: str,
    eval: str = "",
    task: str = "causal_lm",
    **overrides: Any,
) -> RunConfig:
    """Turn a planner candidate into a checked `RunConfig`.

    Args:
        candidate: any object with the planner `Candidate`'s attributes (read by name).
        model, train, eval, task: what the plan does not know: the model and data to use.
        **overrides: ``learning_rate=1e-4`` (a field unique to one section),
            ``eval__every_steps=10`` (section and field) or ``training={"epochs": 1}``.

    Raises:
        ConfigError: an unknown override, a wrong type, or a combination `validate_config` refuses.
    """
    cfg = build_from_plan(
        candidate, model=model, train=train, eval=eval, task=task, overrides=overrides
    )
    validate_config(cfg, where="plan")
    return cfg
