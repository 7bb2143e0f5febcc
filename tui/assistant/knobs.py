"""The settings step's knobs: the values a run takes (`Settings`) and the two ways the user
changes them, a number the planner works around (``batch 8``: `SettingKnobs.change_setting`)
or a run.toml setting every later plan keeps as stated (``optimizer adamw``:
`SettingKnobs.state_setting`).

They live apart from the step machine (`affiner.tui.assistant.flow`) because they are one
topic, each knob's checks and its message, that grows with every setting run.toml learns;
`AssistantFlow` takes them in as a mixin, so `flow.change_setting(...)` is called as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from affiner.planner.settings import ATTENTIONS
from affiner.planner.vocabulary import OPTIMIZERS, PRECISION_SETTINGS, default_learning_rate
from affiner.tui.assistant import answers
from affiner.tui.assistant.reply import Reply, say

#: The typed run.toml settings (intent ``set_<name>``): the `PlanRequest` field each states,
#: its label, and the words it takes (None: checked otherwise).
STATED: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "targets": ("lora_targets", "LoRA targets", None),
    "checkpointing": ("gradient_checkpointing", "Gradient checkpointing", None),
    "optimizer": ("optimizer", "Optimizer", OPTIMIZERS),
    "precision": ("precision", "Precision", PRECISION_SETTINGS),
    "attention": ("attention", "Attention", ATTENTIONS),
    "dropout": ("lora_dropout", "LoRA dropout", None),
}


def shown(value: Any) -> str:
    """A stated setting as the user types it (``q_proj,v_proj``, ``off``, ``auto``)."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Settings:
    """The knobs the settings step shows; `method` None follows the recommendation."""

    method: str | None = None
    #: Who chose `method` when the user did not: ``the demo`` (its preset), None: the user.
    method_by: str | None = None
    epochs: float = 3.0
    learning_rate: float = default_learning_rate("lora")
    lora_rank: int = 16
    seq_len: int = 512
    batch: int = 16
    learning_rate_set: bool = False
    #: The maximum length was given (typed, or a demo's preset): the data's p99 never replaces it.
    seq_len_set: bool = False
    #: run.toml settings the user typed (``optimizer adamw``), by `PlanRequest` field: every
    #: re-plan states them, so the planner never changes them.
    stated: dict[str, Any] = field(default_factory=dict)
    #: GPUs of this machine the run spreads over, and how (`affiner.tui.assistant.gpus`):
    #: above 1, every plan is per GPU and the run.toml carries ``[distributed]``.
    num_gpus: int = 1
    sharding: str = "none"

    def lr_for(self, method: str) -> float:
        """The learning rate a run would use: the user's, else the method's usual one
        (`affiner.planner.vocabulary.LEARNING_RATES`, the one a run.toml without one gets)."""
        return self.learning_rate if self.learning_rate_set else default_learning_rate(method)


class SettingKnobs:
    """The knob-changing half of `AssistantFlow`, which mixes it in.

    It reads the flow's state (below) and its `device` and `method` properties, and asks the
    flow's `_replan` for a new plan and its `context` for the answers' view of the run. Epochs
    re-plan too: the run's steps are the plan's count (``TimeEstimate.total_steps``).
    """

    settings: Settings
    spec: Any
    data: Any
    plan: Any
    #: The stated setting the pending plan tries, as (`PlanRequest` field, old value): a
    #: refused plan puts it back (`AssistantFlow.failed`).
    _undo: tuple[str, Any] | None

    def change_setting(self, name: str, value: Any, *, quiet: bool = False) -> Reply:
        """Set one knob (``epochs``, ``lr``, ``rank``, ``seq_len``, ``batch``) and re-plan.

        `quiet` (the settings fields, which change on every keystroke) re-plans without a
        message in the conversation: the live bars and summary line show the effect.
        """
        fields = {
            "epochs": ("epochs", "Epochs", float),
            "lr": ("learning_rate", "Learning rate", float),
            "rank": ("lora_rank", "LoRA rank", int),
            "seq_len": ("seq_len", "Maximum length", int),
            "batch": ("batch", "Batch (rows a step)", int),
        }
        attr, label, cast = fields[name]
        value = cast(value)
        if value <= 0:
            return say(f"{label} must be above zero; it stays {getattr(self.settings, attr):g}.")
        limit = getattr(self.spec, "max_position_embeddings", 0) or 0
        if name == "seq_len" and limit and value > limit:
            return say(
                f"{self.spec.name} reads at most {limit:,} tokens; the maximum length stays {self.settings.seq_len}."
            )
        old = (
            self.settings.lr_for(self.method or "lora")
            if name == "lr"
            else getattr(self.settings, attr)
        )
        setattr(self.settings, attr, value)
        if name == "lr":
            self.settings.learning_rate_set = True
        if name == "seq_len":
            self.settings.seq_len_set = True
        if name == "lr":  # changes neither memory nor time: nothing to plan again
            return (
                Reply() if quiet else say(f"{label}: {old:g} → **{value:g}**." + self._time_line())
            )
        if quiet:
            return self._replan()
        if name == "epochs":  # the same step, a new count of them: the plan's
            if self.spec is None or self.device is None:
                return say(f"{label}: {old:g} → **{value:g}**.")
            return self._replan(("time", (label, f"{old:g}", f"{value:g}")))
        return self._replan(("setting", (label, f"{old:g}", f"{value:g}")))

    def state_setting(self, name: str, value: Any) -> Reply:
        """State one run.toml setting (`STATED`: ``optimizer adamw``, ``targets q,v``...) and
        re-plan; every later plan keeps it. ``auto`` (None) hands it back to the planner."""
        key, label, words = STATED[name]
        stated = self.settings.stated
        old = stated.get(key)
        if words is not None and value not in words:
            return say(f"{label} takes {', '.join(words)}; it stays {shown(old)}.")
        if name == "dropout" and not 0 <= value < 1:
            return say(f"{label} must be at least 0 and below 1; it stays {shown(old)}.")
        if value is None:
            stated.pop(key, None)
        else:
            stated[key] = value
        self._undo = (key, old)
        if self.spec is None or self.device is None:
            return say(f"{label}: **{shown(value)}**; the plan will keep it.")
        return self._replan(("setting", (label, shown(old), shown(value))))

    def _time_line(self) -> str:
        """How long the run takes now, from the plan's own total (`answers.how_long`)."""
        total = answers.how_long(self.context())
        return "\n\n" + total if self.data and self.plan else ""
