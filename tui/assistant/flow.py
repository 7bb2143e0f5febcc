"""The guided assistant's conversation as a step machine, without Textual.

The assistant walks hardware → model → data → plan → settings → pre-flight → launch →
monitor. `AssistantFlow` holds what is known so far and decides what to say next; anything
slow (probing, resolving a model, reading data, planning, pre-flight, launching) comes back
as a `Task` that the screen runs in a worker and reports with the matching ``*_ready`` or
`failed` call. Every call returns a `Reply`: messages to show and tasks to start. Keeping
the conversation here means its logic is unit-tested in microseconds, and the screen stays
a thin layer that draws and runs workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from affiner.planner.settings import ATTENTIONS
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import (
    LORA_METHODS,
    OPTIMIZERS,
    PRECISION_SETTINGS,
    default_learning_rate,
)
from affiner.tui.assistant import answers
from affiner.tui.assistant.answers import AnswerContext, capitalized, method_name
from affiner.tui.assistant.intents import Intent, parse_intent
from affiner.tui.assistant.preview import DataPreview
from affiner.tui.assistant.text import QUESTIONS, data_summary, preflight_summary

#: The steps, in order. ``monitor`` is where the flow ends (the app opens the monitor).
STEPS = ("hardware", "model", "data", "plan", "settings", "preflight", "launch", "monitor")

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


def _shown(value: Any) -> str:
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
    epochs: float = 3.0
    learning_rate: float = default_learning_rate("lora")
    lora_rank: int = 16
    seq_len: int = 512
    batch: int = 16
    learning_rate_set: bool = False
    #: run.toml settings the user typed (``optimizer adamw``), by `PlanRequest` field: every
    #: re-plan states them, so the planner never changes them.
    stated: dict[str, Any] = field(default_factory=dict)

    def lr_for(self, method: str) -> float:
        """The learning rate a run would use: the user's, else the method's usual one
        (`affiner.planner.vocabulary.LEARNING_RATES`, the one a run.toml without one gets)."""
        return self.learning_rate if self.learning_rate_set else default_learning_rate(method)


@dataclass
class Say:
    """One message for the conversation. `kind` picks the widget: ``markdown`` (the text),
    ``data`` / ``histogram`` / ``example`` (a `DataPreview` in `data`), ``plan`` (the plan
    bars), ``settings`` (the settings form)."""

    text: str
    role: str = "affiner"
    kind: str = "markdown"
    data: Any = None


@dataclass
class Task:
    """Slow work for the screen: ``probe``, ``resolve_model`` (arg: ref), ``load_data``
    (arg: path), ``plan``, ``preflight`` (arg: RunConfig), ``launch`` (arg: RunConfig),
    ``open_monitor`` (arg: run folder), ``demo`` (arg: ``chat`` or ``classify``)."""

    kind: str
    arg: Any = None


@dataclass
class Reply:
    messages: list[Say] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)

    def __add__(self, other: Reply) -> Reply:
        return Reply(self.messages + other.messages, self.tasks + other.tasks)


def _say(*texts: str) -> Reply:
    return Reply([Say(t) for t in texts])


class AssistantFlow:
    """State of one guided conversation. See the module docstring for the protocol."""

    def __init__(self, *, default_model: str | None = None, default_data: str | None = None):
        self.step = "hardware"
        self.default_model = default_model
        self.default_data = default_data
        self.eval_path = ""  # held-out data the user (or a demo) gave; empty: split from train
        self.hardware: Any = None
        self.own_device: Any = None
        self.target: Any = None  # a catalog DeviceTarget ("as if"), None for this machine
        self.model_ref: str | None = None
        self.spec: Any = None
        self.data: DataPreview | None = None
        self.plan: Any = None
        self.settings = Settings()
        self.preflight: Any = None
        self.run_dir: Any = None
        self._pending: list[tuple[str, Any]] = []  # what to say when the next plan arrives
        self._undo: tuple[str, Any] | None = None  # the stated setting the pending plan tries

    # -- state -------------------------------------------------------------------------
    @property
    def device(self) -> Any:
        return self.target if self.target is not None else self.own_device

    @property
    def method(self) -> str | None:
        """The method that would run: the user's choice, else the recommendation."""
        chosen = self.context().chosen()
        return chosen.method if chosen is not None else self.settings.method

    def candidate(self) -> Any | None:
        return self.context().chosen()

    def context(self) -> AnswerContext:
        method = self.settings.method
        return AnswerContext(
            device=self.device,
            plan=self.plan,
            method=method,
            rows=self.data.rows if self.data else None,
            epochs=self.settings.epochs,
            batch=self.settings.batch,
            hardware=self.hardware,
            step=self.step,
        )

    def task_kind(self) -> str:
        fmt = self.data.format if self.data else ""
        return "classification" if fmt == "classification" else "causal_lm"

    # -- the protocol ------------------------------------------------------------------
    def start(self) -> Reply:
        return Reply([Say("Looking at this machine…")], [Task("probe")])

    def hardware_ready(self, report: Any, device: Any) -> Reply:
        self.hardware, self.own_device = report, device
        text = "Here is what this machine has:\n\n" + answers.hardware_summary(report)
        text += f"\n\nPlans are made for **{device.name}** ({format_bytes(answers.device_memory(device))} free)."
        if self.default_model is None:
            text += (
                "\n\nNew here? Type **demo classify** (a sentiment classifier, about 3 minutes on"
                " two CPU cores) or **demo chat** (a chat model, about 5 minutes) to fine-tune a real"
                " model on real data on this machine, with nothing downloaded."
            )
        if self.step == "hardware":
            return _say(text) + self._enter("model")
        return _say(text)

    def model_ready(self, spec: Any) -> Reply:
        self.spec = spec
        limit = spec.max_position_embeddings or self.settings.seq_len
        self.settings.seq_len = min(self.settings.seq_len, limit)
        reply = _say(answers.model_summary(spec)) + self._replan()
        return reply + self._enter("data")

    def data_ready(self, preview: DataPreview) -> Reply:
        self.data = preview
        reply = Reply([Say(data_summary(preview), kind="data", data=preview)])
        if preview.lengths:
            reply.messages.append(Say("", kind="histogram", data=preview))
        elif preview.note:
            reply.messages.append(Say(preview.note))
        if preview.example is not None:
            reply.messages.append(Say("", kind="example", data=preview))
        return reply + self._enter("plan")

    def plan_ready(self, report: Any) -> Reply:
        self._undo = None
        before = self.candidate()
        self.plan = report
        reply = Reply()
        for what, info in self._pending:
            if what == "setting":
                label, old, new = info
                after = self.candidate()
                reply += _say(answers.setting_changed(label, old, new, before, after, self.device))
            elif what == "device":
                reply += _say(
                    f"Re-planned for **{self.device.name}**.\n\n"
                    + answers.what_fits(report, self.device)
                )
            elif what == "show":
                reply += self._show_plan()
        self._pending.clear()
        return reply

    def preflight_ready(self, event: Any) -> Reply:
        self.preflight = event
        return _say(preflight_summary(event, self.candidate())) + self._enter("launch")

    def launched(self, run_dir: Any) -> Reply:
        self.run_dir = run_dir
        self.step = "monitor"
        path = getattr(run_dir, "path", run_dir)
        return Reply(
            [Say(f"Started run **{getattr(run_dir, 'run_id', path)}** in `{path}`.")],
            [Task("open_monitor", run_dir)],
        )

    def failed(self, kind: str, message: str) -> Reply:
        """A task failed: say why in words and ask the step's question again."""
        self._pending.clear()
        text = f"**That did not work** ({kind.replace('_', ' ')}): {message}"
        if kind == "plan" and self._undo is not None:  # a stated setting the planner refused
            key, old = self._undo
            self._undo = None
            if old is None:
                self.settings.stated.pop(key, None)
            else:
                self.settings.stated[key] = old
            return _say(text + f" It stays {_shown(old)}.")
        if kind == "resolve_model":
            return _say(text, QUESTIONS["model"])
        if kind == "load_data":
            return _say(text, QUESTIONS["data"])
        return _say(text)

    def set_target(self, target: Any) -> Reply:
        """Plan as if for `target` (a catalog `DeviceTarget`), or this machine when None."""
        self.target = target
        if self.spec is None:
            name = target.name if target is not None else "this machine"
            return _say(f"Plans will be made for **{name}** once a model is chosen.")
        self._pending.append(("device", None))
        return Reply(tasks=[Task("plan")])

    def submit(self, text: str) -> Reply:
        """A line the user typed (empty: Enter accepted the default)."""
        intent = parse_intent(text)
        echo = Reply([Say(text.strip() or "(Enter)", role="user")])
        if self.step in ("model", "data") and intent.kind == "unknown":
            return echo + self._answer_step(text.strip())
        return echo + self.handle(intent)

    # -- intents -----------------------------------------------------------------------
    def handle(self, intent: Intent) -> Reply:
        kind, value = intent.kind, intent.value
        if kind == "next":
            return self._next()
        if kind == "back":
            index = STEPS.index(self.step)
            return self._enter(STEPS[max(1, index - 1)] if index > 1 else "model")
        if kind == "goto":
            return self._goto(value)
        if kind == "plan_for_gpu":
            return Reply(tasks=[Task("target", value)])
        if kind == "use_method":
            return self._use_method(value)
        if kind.startswith("set_") and kind[4:] in STATED:
            return self.state_setting(kind[4:], value)
        if kind.startswith("set_"):
            return self.change_setting(kind[4:], value)
        if kind == "launch":
            return self._launch()
        if kind == "preflight":
            return self._preflight()
        if kind == "demo":
            return Reply(
                [Say(f"Getting the **{value}** demo ready: its model and data ship in packages…")],
                [Task("demo", value)],
            )
        return _say(answers.answer(intent, self.context()))

    def demo_ready(self, preset: dict[str, Any]) -> Reply:
        """A demo's model and data are on disk: pre-fill them and its settings, ask for the model.

        `preset` is what `Services.prepare_demo` returns: ``default_model``, ``default_data``
        and ``settings`` (field values of `Settings`).
        """
        self.default_model = preset["default_model"]
        self.default_data = preset["default_data"]
        self.eval_path = preset.get("default_eval", "")
        for name, value in preset.get("settings", {}).items():
            setattr(self.settings, name, value)
        self.settings.learning_rate_set = "learning_rate" in preset.get("settings", {})
        return _say("Ready. Press Enter at each step to accept the demo's choices.") + self._enter(
            "model"
        )

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
            return _say(f"{label} must be above zero; it stays {getattr(self.settings, attr):g}.")
        limit = getattr(self.spec, "max_position_embeddings", 0) or 0
        if name == "seq_len" and limit and value > limit:
            return _say(
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
        if quiet:
            return self._replan() if name not in ("epochs", "lr") else Reply()
        if name in ("epochs", "lr"):
            return _say(f"{label}: {old:g} → **{value:g}**." + self._time_line())
        return self._replan(("setting", (label, f"{old:g}", f"{value:g}")))

    def state_setting(self, name: str, value: Any) -> Reply:
        """State one run.toml setting (`STATED`: ``optimizer adamw``, ``targets q,v``...) and
        re-plan; every later plan keeps it. ``auto`` (None) hands it back to the planner."""
        key, label, words = STATED[name]
        stated = self.settings.stated
        old = stated.get(key)
        if words is not None and value not in words:
            return _say(f"{label} takes {', '.join(words)}; it stays {_shown(old)}.")
        if name == "dropout" and not 0 <= value < 1:
            return _say(f"{label} must be at least 0 and below 1; it stays {_shown(old)}.")
        if value is None:
            stated.pop(key, None)
        else:
            stated[key] = value
        self._undo = (key, old)
        if self.spec is None or self.device is None:
            return _say(f"{label}: **{_shown(value)}**; the plan will keep it.")
        return self._replan(("setting", (label, _shown(old), _shown(value))))

    def _use_method(self, method: str) -> Reply:
        if self.plan is not None and answers.find_candidate(self.plan, method) is None:
            return _say(f"The plan has no {method_name(method)} candidate for this model.")
        old = self.settings.method
        self.settings.method = method
        if self.plan is None:
            return _say(f"{capitalized(method_name(method))} it is; the plan follows the model.")
        candidate = self.candidate()
        text = f"Using **{method_name(method)}**" + (
            " (was the recommendation)." if old is None else "."
        )
        if candidate is not None and not candidate.fits:
            text += "\n\n" + answers.why_not(self.plan, method, self.device)
        elif candidate is not None:
            text += f" Peak {format_bytes(candidate.peak_bytes)}, {format_duration(answers.step_seconds(candidate))} a step."
        return Reply([Say(text), Say("", kind="plan", data=self.plan)])

    def _time_line(self) -> str:
        total = answers.how_long(self.context())
        return "\n\n" + total if self.data and self.plan else ""

    # -- steps -------------------------------------------------------------------------
    def _answer_step(self, text: str) -> Reply:
        if self.step == "model":
            ref = text or self.default_model
            if not ref:
                return _say("I need a model to plan for. " + QUESTIONS["model"])
            self.model_ref = ref
            return Reply([Say(f"Reading the shape of `{ref}`…")], [Task("resolve_model", ref)])
        path = text or self.default_data
        if not path:
            return _say("I need a data file to train on. " + QUESTIONS["data"])
        return Reply([Say(f"Reading `{path}`…")], [Task("load_data", path)])

    def _next(self) -> Reply:
        if self.step in ("model", "data"):
            return self._answer_step("")
        if self.step == "hardware":
            return _say("Still looking at the hardware; one moment.")
        if self.step == "plan":
            return self._enter("settings")
        if self.step == "settings":
            return self._enter("preflight")
        if self.step == "preflight":
            return self._preflight()
        if self.step == "launch":
            return self._launch()
        return _say("The run is started; the monitor shows it (F-keys switch screens).")

    def _goto(self, step: str) -> Reply:
        needs = {"data": self.spec, "plan": self.plan, "settings": self.plan}
        if step in needs and needs[step] is None:
            return _say(f"The {step} step needs the earlier ones first. " + QUESTIONS[self.step])
        if step == "hardware":
            return (
                _say(answers.hardware_summary(self.hardware))
                if self.hardware
                else _say("Still looking.")
            )
        return self._enter(step)

    def _enter(self, step: str) -> Reply:
        self.step = step
        if step == "model":
            default = f" Enter uses `{self.default_model}`." if self.default_model else ""
            return _say(QUESTIONS["model"] + default)
        if step == "data":
            default = f" Enter uses `{self.default_data}`." if self.default_data else ""
            return _say(QUESTIONS["data"] + default)
        if step == "plan":
            if self.plan is None:
                self._pending.append(("show", None))
                return Reply([Say("Planning…")], [Task("plan")])
            return self._show_plan()
        if step == "settings":
            return Reply([Say(QUESTIONS["settings"]), Say("", kind="settings", data=self.settings)])
        return _say(QUESTIONS[step])

    def _show_plan(self) -> Reply:
        best = answers.recommended(self.plan)
        head = answers.why(self.plan, None, self.device)
        if self.settings.method and best is not None and self.settings.method != best.method:
            head += f"\n\nYou chose **{method_name(self.settings.method)}**."
        return Reply([Say("", kind="plan", data=self.plan), Say(head + "\n\n" + QUESTIONS["plan"])])

    def _replan(self, pending: tuple[str, Any] | None = None) -> Reply:
        if self.spec is None or self.device is None:
            return Reply()
        if pending:
            self._pending.append(pending)
        return Reply(tasks=[Task("plan")])

    def _ready_to_run(self) -> str | None:
        """Why the run cannot start yet (None when it can)."""
        if self.spec is None or self.data is None:
            return "Choose a model and data first."
        if self.candidate() is None:
            return answers.nothing_fits(self.plan, self.device) if self.plan else "Planning…"
        if self.target is not None:
            return (
                f"The plan is for **{self.target.name}**, not this machine: type `plan for my GPU` "
                "to plan for what is here before running."
            )
        return None

    def _preflight(self) -> Reply:
        problem = self._ready_to_run()
        if problem:
            return _say(problem)
        self.step = "preflight"
        return Reply(
            [Say("Running the pre-flight check…")], [Task("preflight", self.build_config())]
        )

    def _launch(self) -> Reply:
        problem = self._ready_to_run()
        if problem:
            return _say(problem)
        self.step = "launch"
        return Reply([Say("Launching…")], [Task("launch", self.build_config())])

    def build_config(self) -> Any:
        """The `RunConfig` for the chosen candidate and settings (`affiner.runner.config.io`)."""
        from affiner.runner.config import config_from_plan

        candidate = self.candidate()
        method = candidate.method
        overrides: dict[str, Any] = {
            "epochs": self.settings.epochs,
            "learning_rate": self.settings.lr_for(method),
            "max_seq_len": self.settings.seq_len,
            # The monitor's eval table then reads "before → after" from step 0 on.
            "eval__at_start": True,
        }
        if method in LORA_METHODS:
            overrides["lora_rank"] = self.settings.lora_rank
            overrides["lora_alpha"] = 2 * self.settings.lora_rank
        model = getattr(self.spec, "path", None) or self.model_ref or self.spec.name
        return config_from_plan(
            candidate,
            model=str(model),
            train=self.data.path,
            eval=self.eval_path,
            task=self.task_kind(),
            **overrides,
        )

    def plan_request(self) -> Any:
        """The `affiner.planner.recommend.PlanRequest` for the current settings."""
        from affiner.planner.recommend import PlanRequest

        lengths = self.data.lengths if self.data else []
        p95 = sorted(lengths)[max(0, math.ceil(0.95 * len(lengths)) - 1)] if lengths else None
        return PlanRequest(
            seq_len=self.settings.seq_len,
            target_batch=self.settings.batch,
            lora_rank=self.settings.lora_rank,
            p95_len=min(p95, self.settings.seq_len) if p95 else None,
            train_rows=self.data.rows if self.data else None,
            epochs=self.settings.epochs,
            **self.settings.stated,
        )
