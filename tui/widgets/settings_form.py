"""The settings step's fields: epochs, learning rate, LoRA rank, maximum length, batch.

Each field is an Input with a validator. A valid edit posts `SettingsForm.Changed` at once,
so the screen re-plans and the memory bar moves while the user types; Enter in any field
posts `SettingsForm.Accepted` (go on with these values). Tab moves between fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import Integer, Number
from textual.widgets import Input, Label

#: (setting name as `AssistantFlow.change_setting` takes it, label, Settings attribute, integer?)
FIELDS = (
    ("epochs", "epochs", "epochs", False),
    ("lr", "learning rate", "learning_rate", False),
    ("rank", "LoRA rank", "lora_rank", True),
    ("seq_len", "max length", "seq_len", True),
    ("batch", "batch", "batch", True),
)


def format_value(value: float) -> str:
    return f"{value:g}"


class SettingsForm(Horizontal):
    """One labelled Input a setting, side by side."""

    DEFAULT_CSS = """
    SettingsForm {
        height: auto;
    }
    SettingsForm > Vertical {
        width: 1fr;
        height: auto;
    }
    SettingsForm Label {
        padding: 0 1;
        color: $text-muted;
    }
    SettingsForm Input {
        width: 1fr;
    }
    """

    @dataclass
    class Changed(Message):
        """A field now holds a valid value different from what it held."""

        name: str
        value: float

    @dataclass
    class Accepted(Message):
        """Enter in a field: continue with the current values."""

    def __init__(self, settings: Any, *, autofocus: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.autofocus = autofocus
        self._initial = {name: getattr(settings, attr) for name, _, attr, _ in FIELDS}

    def compose(self) -> ComposeResult:
        for name, label, _attr, integer in FIELDS:
            validator = Integer(minimum=1) if integer else Number(minimum=1e-12)
            with Vertical():
                yield Label(label)
                yield Input(
                    format_value(self._initial[name]),
                    id=f"setting-{name}",
                    validators=[validator],
                    validate_on=["changed", "submitted"],
                    compact=True,
                )

    def on_mount(self) -> None:
        if self.autofocus:
            self.query(Input).first().focus()

    def sync(self, settings: Any) -> None:
        """Show `settings` (after a typed ``rank 32``) without posting Changed."""
        if not self.query(Input):  # not composed yet: it was built from the current settings
            return
        for name, _label, attr, _integer in FIELDS:
            field = self.query_one(f"#setting-{name}", Input)
            value = getattr(settings, attr)
            try:
                current = float(field.value)
            except ValueError:
                current = None
            if current != float(value):
                with field.prevent(Input.Changed):
                    field.value = format_value(value)

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.validation_result is not None and not event.validation_result.is_valid:
            return
        try:
            value = float(event.value)
        except ValueError:
            return
        self.post_message(self.Changed(event.input.id.removeprefix("setting-"), value))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Accepted())
