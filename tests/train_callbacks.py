"""Trainer callbacks the training tests use to end a run in a chosen way at a chosen step."""

from __future__ import annotations

import os
import signal
from typing import Any

from transformers import TrainerCallback


class Terminate(TrainerCallback):
    """Sends this process SIGTERM while step `at_step` runs, as `affiner stop` would."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at_step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


class PoisonWeights(TrainerCallback):
    """Sets a trainable weight to infinity after step `at_step`: the next loss is not finite."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if state.global_step == self.at_step:
            import torch

            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("inf"))
