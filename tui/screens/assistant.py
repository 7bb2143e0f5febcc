"""The first screen: a guided conversation from "what do I have" to a running fine-tune.

The conversation's logic lives in `affiner.tui.assistant.flow.AssistantFlow`; this screen draws its
replies and runs its slow tasks in named thread workers (``exit_on_error=False``), feeding
results back through `Worker.StateChanged`. Failures become readable messages in the
conversation. Nothing here imports torch or transformers: the data preview loads a tokenizer
inside a worker, and only when the user has given a model and data.

Layout: the conversation scrolls; under it, once there is a plan, the live panel (memory
bars for every method, a one-line summary with the time estimate, and in the settings step
the settings fields); the input line at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_bytes
from affiner.planner.vocabulary import LORA_METHODS
from affiner.tui.assistant import AssistantFlow, Reply, Task, answers
from affiner.tui.assistant.preview import run_rows
from affiner.tui.assistant.text import other_method, preflight_progress
from affiner.tui.messages import PlanTargetChanged
from affiner.tui.widgets.conversation import Conversation
from affiner.tui.widgets.example_view import ExampleView
from affiner.tui.widgets.plan_bars import PlanBars
from affiner.tui.widgets.settings_form import SettingsForm
from affiner.tui.widgets.token_histogram import TokenHistogram


class ModelConverting(Message):
    """A line of an offline model's first-use conversion (``" 40%  reading the GGUF file"``),
    posted by the model step's worker thread; a newer one replaces a queued one."""

    def __init__(self, ref: str, line: str) -> None:
        super().__init__()
        self.ref, self.line = ref, line

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ModelConverting)


class PreflightProgressed(Message):
    """How far the running pre-flight has got (a `PreflightProgress`), posted by its worker
    thread on every poll; a newer one replaces a queued one."""

    def __init__(self, progress: Any) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PreflightProgressed)


def placeholder(plan: Any, chosen: str | None) -> str:
    """The input's hint: ``use <method>`` only for a method the plan has (`text.other_method`)."""
    other = other_method(plan, chosen) if plan is not None else None
    use = f" · use {other}" if other else ""
    return f"Answer, or ask: what fits?{use} · help"


def readable(error: BaseException) -> str:
    """An error as a person reads it: an AffinerError's own words, else the type and message."""
    if isinstance(error, AffinerError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class AssistantScreen(Screen):
    """The guided assistant (see the module docstring); its CSS is in ``tui/app.tcss``."""

    #: Below this many rows the screen is compact (`-short`): no margin under the bars, a
    #: one-row input line.
    SHORT_HEIGHT = 30

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Next/accept"),
        Binding("ctrl+b", "back", "Back"),
        # Not in the footer: at 80 columns it would push the F-keys out; `help` names it.
        Binding("ctrl+t", "toggle_plan", "Plan panel", show=False),
        # The Input has no use for these keys, so they scroll the conversation while it has focus.
        Binding("pageup", "scroll_conversation(-1)", "Scroll up", show=False),
        Binding("pagedown", "scroll_conversation(1)", "Scroll down", show=False),
        Binding("ctrl+home", "scroll_conversation_to(0)", "Top", show=False),
        Binding("ctrl+end", "scroll_conversation_to(1)", "End", show=False),
        Binding("escape", "focus_prompt", "Type", show=False),
    ]

    def __init__(
        self,
        services: Any,
        *,
        default_model: str | None = None,
        default_data: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.services = services
        self.flow = AssistantFlow(
            default_model=default_model,
            default_data=default_data,
        )
        self._histograms: list[TokenHistogram] = []

    def compose(self) -> ComposeResult:
        yield Conversation(id="conversation")
        with Vertical(id="live"):
            yield PlanBars(id="plan-bars")
            yield Static(id="summary")
        yield Input(placeholder=placeholder(None, None), id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()
        self.set_class(self.size.height < self.SHORT_HEIGHT, "-short")
        self.apply(self.flow.start())

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.height < self.SHORT_HEIGHT, "-short")

    def action_toggle_plan(self) -> None:
        """Fold the plan bars away (the summary line stays) or bring them back."""
        self.query_one("#live").toggle_class("-collapsed")

    def action_scroll_conversation(self, pages: int) -> None:
        conversation = self.query_one(Conversation)
        if pages < 0:
            conversation.scroll_page_up(animate=False)
        else:
            conversation.scroll_page_down(animate=False)

    def action_scroll_conversation_to(self, end: int) -> None:
        conversation = self.query_one(Conversation)
        if end:
            conversation.scroll_end(animate=False)
        else:
            conversation.scroll_home(animate=False)

    # -- drawing a reply ---------------------------------------------------------------
    def apply(self, reply: Reply) -> None:
        """Show a reply's messages and start its tasks."""
        conversation = self.query_one(Conversation)
        for say in reply.messages:
            if say.kind == "markdown":
                conversation.say(say.text, say.role)
            elif say.kind == "data":
                conversation.say(say.text)
            elif say.kind == "histogram":
                histogram = TokenHistogram(say.data.lengths, self.flow.settings.seq_len)
                self._histograms.append(histogram)
                conversation.show(histogram)
            elif say.kind == "example":
                where = getattr(say.data, "example_where", None)
                title = f"a typical example ({where}), as the model sees it" if where else None
                conversation.show(ExampleView(say.data.example, title))
            elif say.kind == "plan":
                self.refresh_live()
            elif say.kind == "settings":
                self.show_settings()
        if self.flow.step != "settings":  # the fields belong to their step: rows for the rest
            for form in self.query(SettingsForm):
                form.remove()
        for task in reply.tasks:
            self.start(task)
        self.refresh_live()

    def refresh_live(self) -> None:
        """Redraw the bars, the summary line and the histograms from the flow's state."""
        flow = self.flow
        live = self.query_one("#live")
        if flow.plan is None:
            return
        live.add_class("-shown")
        self.query_one(PlanBars).update_plan(flow.plan, flow.device, flow.settings.method)
        self.query_one("#summary", Static).update(self.summary_line())
        self.query_one("#prompt", Input).placeholder = placeholder(flow.plan, flow.method)
        for histogram in self._histograms:
            histogram.set_max_len(flow.settings.seq_len)
        forms = self.query(SettingsForm)
        if forms:
            forms.first().sync(flow.settings)

    def summary_line(self) -> str:
        flow = self.flow
        settings = flow.settings
        candidate = flow.candidate()
        if candidate is None:
            return "Nothing fits with these settings."
        method = candidate.method
        parts = [answers.method_name(method)]
        if method in LORA_METHODS:
            parts.append(f"rank {settings.lora_rank}")
        parts += [
            f"length {settings.seq_len}",
            f"batch {settings.batch}",
            f"{settings.epochs:g} epoch{'' if settings.epochs == 1 else 's'}",
            f"lr {settings.lr_for(method):g}",
        ]
        measured = flow.measured_for(candidate)
        if measured is not None and measured.peak_bytes:
            peak = f"peak {format_bytes(measured.peak_bytes)} measured"
        else:
            peak = f"peak {format_bytes(candidate.peak_bytes)}"
        line = " · ".join(parts) + f" → {peak}"
        total = answers.run_total(candidate)  # the plan's count, as the Trainer's
        step = answers.step_seconds(candidate)
        if total is not None:
            steps, seconds = total
            line += f", {steps:,} steps ≈ {answers.run_time(seconds)}"
            if answers.calibration_note(candidate):
                line += " (measured step)"
        elif step:
            line += f", {answers.per_step(step)}"
        if answers.impractical(candidate):
            line += " ⚠ impractical here"
        if flow.data is not None and flow.data.lengths:
            cut = flow.data.truncated(settings.seq_len)
            line += f"; {cut} rows cut" if cut else "; no row cut"
        return line

    def show_settings(self) -> None:
        live = self.query_one("#live")
        for old in self.query(SettingsForm):
            old.remove()
        live.mount(SettingsForm(self.flow.settings))

    # -- input ---------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        event.input.value = ""
        self.apply(self.flow.submit(event.value))

    @on(SettingsForm.Changed)
    def _setting_changed(self, event: SettingsForm.Changed) -> None:
        attr = {"epochs": "epochs", "lr": "learning_rate", "rank": "lora_rank"}
        attr |= {"seq_len": "seq_len", "batch": "batch"}
        if float(getattr(self.flow.settings, attr[event.name])) == event.value:
            return
        reply = self.flow.change_setting(event.name, event.value, quiet=True)
        self.apply(reply)

    @on(SettingsForm.Accepted)
    def _settings_accepted(self) -> None:
        self.query_one("#prompt", Input).focus()
        self.apply(self.flow.submit(""))

    @on(PlanTargetChanged)
    def _target_changed(self, message: PlanTargetChanged) -> None:
        if message.target == self.flow.target:
            return
        self.apply(self.flow.set_target(message.target))

    def action_next(self) -> None:
        self.apply(self.flow.submit(""))

    def action_back(self) -> None:
        self.apply(self.flow.submit("back"))

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    # -- workers -------------------------------------------------------------------------
    def start(self, task: Task) -> None:
        """Run one task: quick ones here, slow ones in a named thread worker."""
        if task.kind == "open_monitor":
            self.app.open_monitor(getattr(task.arg, "path", task.arg))
            return
        if task.kind == "preflight":
            for old in self.query("#preflight-status"):
                old.remove()
            self.query_one(Conversation).show(
                Static(preflight_progress(_Starting()), id="preflight-status")
            )
        work = getattr(self, f"_task_{task.kind}")
        self.run_worker(
            lambda: work(task.arg),
            name=task.kind,
            group="assistant-plan" if task.kind == "plan" else "assistant",
            description=f"assistant: {task.kind}",
            thread=True,
            exclusive=task.kind == "plan",
            exit_on_error=False,
        )

    def _task_probe(self, _arg: Any) -> tuple[Any, Any]:
        report = self.services.probe_hardware()
        return report, self.services.resolve_device(report)

    def _task_resolve_model(self, ref: str) -> Any:
        # An offline model named for the first time is converted before its shape is read, so
        # the data step counts its tokens and the run loads a folder (a child does the work).
        ready = self.services.make_model_ready
        if ready is not None:
            worker = get_current_worker()
            ready(
                ref,
                lambda line: self.post_message(ModelConverting(ref, line)),
                lambda: worker.is_cancelled,
            )
        return self.services.resolve_model(ref)

    @on(ModelConverting)
    def _model_converting(self, message: ModelConverting) -> None:
        text = (
            f"{message.ref} is used for the first time here: converting it once into a folder "
            f"affiner trains from (about 30 s; later runs load it in a second). {message.line}"
        )
        found = self.query("#model-status")
        if found:
            found.first(Static).update(text)
        else:
            self.query_one(Conversation).show(Static(text, id="model-status"))

    def _task_load_data(self, path: str) -> Any:
        flow = self.flow
        seq_len = flow.settings.seq_len
        preview = self.services.inspect_data(path, flow.spec, seq_len, flow.model_ref)
        if flow.eval_path and Path(path).is_file():
            # With an eval file (a demo's) the run splits nothing off: plan its rows, not the
            # preview's one-file count (3,600 planned where the run trained 4,000).
            preview.rows = run_rows(path, flow.eval_path, flow.spec, seq_len)
        return preview

    def _task_plan(self, _arg: Any) -> Any:
        flow = self.flow
        return self.services.make_plan(flow.spec, flow.device, flow.plan_request())

    def _task_target(self, name: str | None) -> Any:
        return self.services.catalog_target(name) if name else None

    def _task_preflight(self, config: Any) -> Any:
        # the child's progress reaches this screen as a message, posted from the worker's thread
        return self.services.preflight(
            config, lambda progress: self.post_message(PreflightProgressed(progress))
        )

    @on(PreflightProgressed)
    def _preflight_progressed(self, message: PreflightProgressed) -> None:
        status = self._preflight_status()
        if status is not None:
            status.update(preflight_progress(message.progress))

    def _preflight_status(self) -> Static | None:
        found = self.query("#preflight-status")
        return found.first(Static) if found else None

    def _task_launch(self, config: Any) -> Any:
        return self.services.start_run(config)

    def _task_demo(self, key: str) -> Any:
        return self.services.prepare_demo(key)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group not in ("assistant", "assistant-plan"):
            return
        if (
            event.state == WorkerState.ERROR
            and worker.name == "plan"
            and self.flow.plan is not None
        ):
            self.notify(readable(worker.error), title="Could not re-plan", severity="error")
            return
        if worker.name == "resolve_model" and event.state in (
            WorkerState.ERROR,
            WorkerState.SUCCESS,
        ):
            for done in self.query("#model-status"):
                done.remove()  # the model's summary (or the error) says the rest
        if worker.name == "preflight" and event.state in (WorkerState.ERROR, WorkerState.SUCCESS):
            status = self._preflight_status()
            if status is not None:  # the pre-flight's summary (or the error) says the rest
                status.remove()
        if event.state == WorkerState.ERROR:
            self.apply(self.flow.failed(worker.name, readable(worker.error)))
            return
        if event.state != WorkerState.SUCCESS:
            return
        result = worker.result
        flow = self.flow
        handlers = {
            "probe": lambda: flow.hardware_ready(*result),
            "resolve_model": lambda: flow.model_ready(result),
            "load_data": lambda: flow.data_ready(result),
            "plan": lambda: flow.plan_ready(result),
            "target": lambda: self._apply_target(result),
            "preflight": lambda: flow.preflight_ready(result),
            "launch": lambda: flow.launched(result),
            "demo": lambda: flow.demo_ready(result),
        }
        self.apply(handlers[worker.name]())

    def _apply_target(self, target: Any) -> Reply:
        if hasattr(self.app, "plan_target"):
            self.app.plan_target = target
        return self.flow.set_target(target)


@dataclass(frozen=True)
class _Starting:
    """The pre-flight's progress before its worker has read anything."""

    phase: str = "preflight_start"
    elapsed: float = 0.0
