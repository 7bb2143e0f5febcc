"""The guided assistant's conversation as a step machine, without Textual.

The assistant walks hardware → model → data → plan → settings → pre-flight → launch →
monitor. `AssistantFlow` holds what is known so far and decides what to say next; anything
slow (probing, resolving a model, reading data, planning, pre-flight, launching) comes back
as a `Task` that the screen runs in a worker and reports with the matching ``*_ready`` or
`failed` call. Every call returns a `Reply`: messages to show and tasks to start. Keeping
the conversation here means its logic is unit-tested in microseconds, and the screen stays
a thin layer that draws and runs workers.

The settings step's knobs (`Settings`, `change_setting`, `state_setting`) are in
`affiner.tui.assistant.knobs`, and `Say`, `Task` and `Reply` in `affiner.tui.assistant.reply`;
both are imported here, so ``from affiner.tui.assistant.flow import Settings, Reply`` works.

The pre-flight's calibration of the plan by its measured step (`Measured`, `preflight_ready`,
`measured_step`, `plan_request`: every re-plan states the step while what it ran still
holds) is in `affiner.tui.assistant.calibration`, mixed in the same way.
"""

from __future__ import annotations

from typing import Any

from affiner.planner.data_length import DataLength, length_from_data, nearest_rank
from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import LORA_METHODS
from affiner.tui.assistant import answers
from affiner.tui.assistant.answers import AnswerContext, capitalized, method_name
from affiner.tui.assistant.calibration import Measured, PreflightCalibration
from affiner.tui.assistant.gpus import GpuLayout
from affiner.tui.assistant.intents import Intent, parse_intent
from affiner.tui.assistant.knobs import STATED, SettingKnobs, Settings, shown
from affiner.tui.assistant.preview import DataPreview
from affiner.tui.assistant.reply import Reply, Say, Task, say
from affiner.tui.assistant.text import QUESTIONS, data_summary, plan_question

#: The words that accept an offer (Enter and "next" move on instead).
YES = ("yes", "y", "ok", "okay", "sure", "accept", "yes please")

#: The steps, in order. ``monitor`` is where the flow ends (the app opens the monitor).
STEPS = ("hardware", "model", "data", "plan", "settings", "preflight", "launch", "monitor")


class AssistantFlow(SettingKnobs, PreflightCalibration, GpuLayout):
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
        self.measured: Measured | None = None  # the pre-flight's step, while it still applies
        self._preflight_ran: tuple[str, tuple[Any, ...]] | None = None  # its method and key
        self.run_dir: Any = None
        self._pending: list[tuple[str, Any]] = []  # what to say when the next plan arrives
        self._undo: tuple[str, Any] | None = None  # the stated setting the pending plan tries
        #: A demo's own run.toml settings beyond `settings` (`assistant_preset`'s ``recipe``).
        self.recipe: dict[str, Any] = {}
        #: The max length taken from the data (`_length_from_data`), while it is in force.
        self._data_length: DataLength | None = None

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
        measured = self.measured_step()
        method = self.settings.method or (measured.method if measured else None)
        return AnswerContext(
            device=self.device,
            plan=self.plan,
            method=method,
            chosen_by=self.settings.method_by if self.settings.method else None,
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
            classify, chat = (_demo_time(key, device) for key in ("classify", "chat"))
            text += (
                f"\n\nNew here? Type **demo classify** (a sentiment classifier{classify}) or "
                f"**demo chat** (a chat model{chat}) to fine-tune a real model on real data on "
                "this machine, with nothing downloaded."
            )
        if self.step == "hardware":
            return say(text) + self._enter("model")
        return say(text)

    def model_ready(self, spec: Any) -> Reply:
        self.spec = spec
        limit = spec.max_position_embeddings or self.settings.seq_len
        self.settings.seq_len = min(self.settings.seq_len, limit)
        reply = say(answers.model_summary(spec)) + self._replan()
        return reply + self._enter("data")

    def data_ready(self, preview: DataPreview) -> Reply:
        self.data = preview
        length = self._length_from_data(preview)  # before the histogram, which draws it
        reply = Reply([Say(data_summary(preview), kind="data", data=preview)])
        if preview.lengths:
            reply.messages.append(Say("", kind="histogram", data=preview))
        elif preview.note:
            reply.messages.append(Say(preview.note))
        if preview.example is not None:
            reply.messages.append(Say("", kind="example", data=preview))
        if length:
            reply += say(length)
        if self.plan is not None:
            # A plan made before the data has no total and other lengths: plan again with its
            # rows and lengths, and show that plan (showing the old one first put its numbers
            # in the conversation beside the new plan's in the panel).
            self.step = "plan"
            return (
                reply
                + say("Planning with the data's rows and lengths…")
                + self._replan(("show", None))
            )
        return reply + self._enter("plan")

    def _length_from_data(self, preview: DataPreview) -> str | None:
        """Take the maximum length from the rows' p99 (`affiner.planner.data_length`) unless
        the user (or a demo) gave one; returns the sentence saying so, or None."""
        if not preview.lengths or self.settings.seq_len_set:
            return None
        window = getattr(self.spec, "max_position_embeddings", None) or None
        chosen = length_from_data(nearest_rank(preview.lengths), window=window)
        self.settings.seq_len = chosen.seq_len
        self._data_length = chosen
        return f"{capitalized(chosen.why)}; `seq N` sets another."

    def _length_that_fits(self, report: Any) -> Reply | None:
        """When nothing fits at the length taken from the data, take the longest that does
        (the planner's `longest_sequence_for`, over the methods planned) and plan again."""
        chosen = self._data_length
        candidates = getattr(report, "candidates", None) or []
        if chosen is None or self.settings.seq_len != chosen.seq_len:
            return None
        if not candidates or any(c.fits for c in candidates):
            return None
        from affiner.planner.recommend import longest_sequence_for

        request = self.plan_request()
        fits = max(
            (
                longest_sequence_for(self.spec, self.device, request, c.method).longest
                for c in candidates
            ),
            default=0,
        )
        if not 0 < fits < chosen.seq_len:
            return None
        window = getattr(self.spec, "max_position_embeddings", None) or None
        capped = length_from_data(chosen.p99, window=window, fits=fits, device=self.device.name)
        self._data_length = capped
        self.settings.seq_len = capped.seq_len
        return say(f"{capitalized(capped.why)}; `seq N` sets another.") + Reply(
            tasks=[Task("plan")]
        )

    def plan_ready(self, report: Any) -> Reply:
        shorter = self._length_that_fits(report)  # what was pending waits for that plan
        if shorter is not None:
            return shorter
        self._undo = None
        self._gpu_offer = None  # an offer stands beside the plan it was made for
        before = self.candidate()
        self.plan = report
        reply = Reply()
        for what, info in self._pending:
            if what == "setting":
                label, old, new = info
                after = self.candidate()
                reply += say(answers.setting_changed(label, old, new, before, after, self.device))
            elif what == "device":
                reply += say(
                    f"Re-planned for **{self.device.name}**.\n\n"
                    + answers.what_fits(report, self.device)
                )
            elif what == "show":
                reply += self._show_plan()
            elif what == "time":  # epochs: the same steps' time, a new count
                label, old, new = info
                reply += say(f"{label}: {old} → **{new}**." + self._time_line())
            elif what == "measured":
                reply += say(
                    "Re-planned with the pre-flight's step time.\n\n"
                    + answers.how_long(self.context())
                )
            elif what == "method":
                reply += self._method_chosen(*info)
            elif what == "layout":
                reply += self.layout_planned(*info)
        self._pending.clear()
        return reply

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
            return say(text + f" It stays {shown(old)}.")
        if kind == "resolve_model":
            return say(text, QUESTIONS["model"])
        if kind == "load_data":
            return say(text, QUESTIONS["data"])
        return say(text)

    def set_target(self, target: Any) -> Reply:
        """Plan as if for `target` (a catalog `DeviceTarget`), or this machine when None."""
        self.target = target
        if self.spec is None:
            name = target.name if target is not None else "this machine"
            return say(f"Plans will be made for **{name}** once a model is chosen.")
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
        if kind == "next" and intent.text.strip().lower().strip(" .!") in YES:
            # a typed yes (not Enter, not "next") takes the pending multi-GPU offer
            accepted = self.accept_gpu_offer()
            if accepted is not None:
                return accepted
        if kind == "next":
            return self._next()
        if kind == "use_gpus":
            count, strategy = value
            return self.use_gpus(self.machine_gpus if count == -1 else count, strategy)
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
        return say(answers.answer(intent, self.context()))

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
        self.recipe = dict(preset.get("recipe", {}))
        self.settings.learning_rate_set = "learning_rate" in preset.get("settings", {})
        self.settings.method_by = "the demo" if self.settings.method else None
        return say("Ready. Press Enter at each step to accept the demo's choices.") + self._enter(
            "model"
        )

    def _use_method(self, method: str) -> Reply:
        """``use qlora``: choose a method; plan again when that sets a pre-flight's measured
        step aside (the calibrated plan holds the measured method alone) or brings it back."""
        before = self.measured_step()
        if (
            self.plan is not None
            and before is None
            and answers.find_candidate(self.plan, method) is None
        ):
            return say(answers.missing_reason(self.plan, method))
        old = self.settings.method
        self.settings.method = method
        self.settings.method_by = None  # the user's choice now
        if self.plan is None:
            return say(f"{capitalized(method_name(method))} it is; the plan follows the model.")
        if self.measured_step() is not before:
            return self._replan(("method", (method, old)))
        return self._method_chosen(method, old)

    def _method_chosen(self, method: str, old: str | None) -> Reply:
        """The reply to ``use qlora``: what now runs, and how it stands to the recommendation
        (★ in the plan panel), never to what ran before."""
        candidate = self.candidate()
        if candidate is None or candidate.method != method:
            return say(answers.missing_reason(self.plan, method))
        best = answers.recommended(self.plan)
        text = f"Using **{method_name(method)}**"
        if best is not None and best.method == method:
            text += ", the recommendation."
        elif best is not None:
            text += f" (the recommendation is {method_name(best.method)})."
        else:
            text += "."
        if not candidate.fits:
            text += "\n\n" + answers.why_not(self.plan, method, self.device)
        else:
            text += f" Peak {format_bytes(candidate.peak_bytes)}, {answers.a_step(candidate)}."
            slow = answers.impractical(candidate)
            if slow:
                text += f"\n\n⚠ Impractical here: {slow}."
        return Reply([Say(text), Say("", kind="plan", data=self.plan)])

    # -- steps -------------------------------------------------------------------------
    def _answer_step(self, text: str) -> Reply:
        if self.step == "model":
            ref = text or self.default_model
            if not ref:
                return say("I need a model to plan for. " + QUESTIONS["model"])
            self.model_ref = ref
            return Reply([Say(f"Reading the shape of `{ref}`…")], [Task("resolve_model", ref)])
        path = text or self.default_data
        if not path:
            return say("I need a data file to train on. " + QUESTIONS["data"])
        return Reply([Say(f"Reading `{path}`…")], [Task("load_data", path)])

    def _next(self) -> Reply:
        if self.step in ("model", "data"):
            return self._answer_step("")
        if self.step == "hardware":
            return say("Still looking at the hardware; one moment.")
        if self.step == "plan":
            return self._enter("settings")
        if self.step == "settings":
            return self._enter("preflight")
        if self.step == "preflight":
            return self._preflight()
        if self.step == "launch":
            return self._launch()
        return say("The run is started; the monitor shows it (F-keys switch screens).")

    def _goto(self, step: str) -> Reply:
        needs = {"data": self.spec, "plan": self.plan, "settings": self.plan}
        if step in needs and needs[step] is None:
            return say(f"The {step} step needs the earlier ones first. " + QUESTIONS[self.step])
        if step == "hardware":
            return (
                say(answers.hardware_summary(self.hardware))
                if self.hardware
                else say("Still looking.")
            )
        return self._enter(step)

    def _enter(self, step: str) -> Reply:
        self.step = step
        if step == "model":
            default = f" Enter uses `{self.default_model}`." if self.default_model else ""
            return say(QUESTIONS["model"] + default)
        if step == "data":
            default = f" Enter uses `{self.default_data}`." if self.default_data else ""
            return say(QUESTIONS["data"] + default)
        if step == "plan":
            if self.plan is None:
                self._pending.append(("show", None))
                return Reply([Say("Planning…")], [Task("plan")])
            return self._show_plan()
        if step == "settings":
            return Reply([Say(QUESTIONS["settings"]), Say("", kind="settings", data=self.settings)])
        return say(QUESTIONS[step])

    def _show_plan(self) -> Reply:
        best = answers.recommended(self.plan)
        head = answers.why(self.plan, None, self.device)
        chosen = self.settings.method
        if chosen and best is not None and chosen != best.method:
            by = self.settings.method_by
            head += f"\n\n{capitalized(answers.chooser(by))} **{method_name(chosen)}**"
            head += f": {answers.DEMO_METHOD_WHY}." if by == "the demo" else "."
            head += f" `use {best.method}` follows the recommendation."
        offer = self.gpu_offer_line()
        if offer:
            head += "\n\n" + offer
        return Reply(
            [
                Say("", kind="plan", data=self.plan),
                Say(head + "\n\n" + plan_question(self.plan, self.method)),
            ]
        )

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
            return say(problem)
        self.step = "preflight"
        config = self.build_config()
        self._preflight_ran = (config.method.name, self._step_key())
        return Reply([Say("Running the pre-flight check…")], [Task("preflight", config)])

    def _launch(self) -> Reply:
        problem = self._ready_to_run()
        if problem:
            return say(problem)
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
        measured = self.measured_for(candidate)
        if measured is not None and measured.adjusted:
            # Run what the pre-flight measured: the planned micro-batch ran out of memory.
            overrides["micro_batch"] = measured.micro_batch
            overrides["grad_accum"] = measured.grad_accum
        model = getattr(self.spec, "path", None) or self.model_ref or self.spec.name
        config = config_from_plan(
            candidate,
            model=str(model),
            train=self.data.path,
            eval=self.eval_path,
            task=self.task_kind(),
            **{**self._recipe_overrides(overrides), **overrides},
        )
        if measured is not None:  # the run's record holds what the pre-flight measured
            config.plan.measured_step_seconds = measured.step_seconds
            config.plan.measured_peak_bytes = measured.peak_bytes
            # the user has just watched this pre-flight; the worker does not run it again
            config.training.preflight = False
        return config

    def _recipe_overrides(self, own: dict[str, Any]) -> dict[str, Any]:
        """The demo's recipe, less what the flow sets itself (the batch shape is the plan's, as
        in the headless demo, whose plan states the same batch)."""
        return {
            k: v for k, v in self.recipe.items() if k not in own and k.split("__")[-1] not in own
        }


def _demo_time(key: str, device: Any) -> str:
    """The demo offer's time (", training planned at about 7 min here"): the plan for this
    machine, never a fixed promise (empty when the planner has no time for it)."""
    from affiner.planner.errors import AffinerError
    from affiner.runner.demo import planned_seconds

    try:
        seconds = planned_seconds(key, device)
    except (AffinerError, OSError, ValueError):  # a model or device it cannot size: say nothing
        return ""
    return f", training planned at about {format_duration(seconds)} here" if seconds else ""
