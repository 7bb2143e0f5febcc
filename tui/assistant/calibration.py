"""The pre-flight's calibration of the plan: its measured optimizer step (`Measured`), how
long that measurement still applies (`PreflightCalibration.measured_step`), and the plan
request that states it (`PreflightCalibration.plan_request`).

After a pre-flight the plan is calibrated by its measured step: every re-plan states it, with
the pre-flight's adjusted micro-batch, whenever nothing that changes a step's time (the
method, the model, the data, the device, the length, batch, rank or a stated setting) differs
from what was measured. A change sets it aside, and going back to the measured settings (a
what-if GPU and back, ``use qlora`` then ``use lora``) brings it back: a re-plan of the same
settings gives the same numbers.

They live apart from the step machine (`affiner.tui.assistant.flow`) because they are one
topic, what a measured step is and when it stops applying, that the steps only consult;
`AssistantFlow` takes them in as a mixin, so `flow.preflight_ready(...)` is called as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affiner.tui.assistant.knobs import Settings
from affiner.tui.assistant.reply import Reply, say
from affiner.tui.assistant.text import preflight_summary


@dataclass(frozen=True)
class Measured:
    """A pre-flight's measured optimizer step, and what it ran.

    Attributes:
        step_seconds: the measured step (`affiner.runner.run.Preflight.measured_step_seconds`).
        method: the method that ran; the calibrated plan is made for it alone.
        micro_batch, grad_accum: the batch that ran; when `adjusted` (the planned one ran
            out of memory) the plan states this micro-batch and the run takes both.
        key: `AssistantFlow._step_key` when it ran: the settings a step's time depends on.
        peak_bytes: the measured peak (`Preflight.measured_peak_bytes`; its basis is
            `affiner.runner.run.peak_basis` of the device), None when it was not measured.
    """

    step_seconds: float
    method: str
    micro_batch: int
    grad_accum: int
    adjusted: bool
    key: tuple[Any, ...]
    peak_bytes: int | None = None


class PreflightCalibration:
    """The calibration half of `AssistantFlow`, which mixes it in.

    It reads the flow's state (below) and its `device` property, and asks the flow's
    `candidate` for the chosen plan candidate, `_replan` for a new plan and `_enter` for the
    next step.
    """

    settings: Settings
    spec: Any
    data: Any
    target: Any
    preflight: Any
    measured: Measured | None
    #: The method and `_step_key` the running pre-flight was started with.
    _preflight_ran: tuple[str, tuple[Any, ...]] | None

    def preflight_ready(self, event: Any) -> Reply:
        """The pre-flight's `affiner.runner.run.Preflight`: show it beside the plan, then
        re-plan calibrated by its measured step (with its micro-batch, when it adjusted it)."""
        self.preflight = event
        candidate = self.candidate()
        reply = say(preflight_summary(event, candidate))
        step = getattr(event, "measured_step_seconds", None)
        ran = getattr(event, "device", "")
        on_cpu = bool(getattr(self.device, "is_cpu", False))
        if ran and (ran == "cpu") != on_cpu:  # a CPU step says nothing of a GPU, nor back
            where = "the CPU" if ran == "cpu" else ran
            reply += say(
                f"The pre-flight ran on {where}, not on {self.device.name}: "
                "its step time does not calibrate the plan."
            )
        elif candidate is not None and step and step > 0:
            # what the pre-flight ran, had anything changed while it ran (then stale at once)
            method, key = self._preflight_ran or (candidate.method, self._step_key())
            self.measured = Measured(
                step_seconds=float(step),
                method=method,
                micro_batch=int(getattr(event, "micro_batch", 0) or 0),
                grad_accum=int(getattr(event, "grad_accum", 0) or 0),
                adjusted=bool(getattr(event, "adjusted", False)),
                key=key,
                peak_bytes=int(getattr(event, "measured_peak_bytes", 0) or 0) or None,
            )
            reply += self._replan(("measured", None))
        return reply + self._enter("launch")

    def measured_step(self) -> Measured | None:
        """The pre-flight's measurement when the settings are the ones it ran with, else None.

        A step's time depends on the method, model, data, device, length, batch, rank and the
        stated settings (`_step_key`): while any of them differs, plans are the time model's
        estimates; the measurement is kept (`measured`), so the same settings again are planned
        with it again. Epochs and the learning rate do not change a step, so they keep it.
        """
        m = self.measured
        if m is None or m.key != self._step_key() or self.settings.method not in (None, m.method):
            return None
        return m

    def measured_for(self, candidate: Any) -> Measured | None:
        """The measurement when it is of `candidate` (its method, these settings), else None:
        what shows a measured peak in place of the planned one."""
        measured = self.measured_step()
        if measured is None or getattr(candidate, "method", None) != measured.method:
            return None
        return measured

    def _step_key(self) -> tuple[Any, ...]:
        s = self.settings
        data = (self.data.path, self.data.rows) if self.data else None
        model = (getattr(self.spec, "name", None), getattr(self.spec, "path", None))
        stated = tuple(sorted((k, repr(v)) for k, v in s.stated.items()))
        return (model, data, self.target, s.seq_len, s.batch, s.lora_rank, stated)

    def plan_request(self) -> Any:
        """The `affiner.planner.recommend.PlanRequest` for the current settings, calibrated by
        the pre-flight's step while it applies (`measured_step`)."""
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
            num_gpus=self.settings.num_gpus,
            sharding=self.settings.sharding,
            **(self.settings.stated | self._measured_fields()),
        )

    def _measured_fields(self) -> dict[str, Any]:
        """What a plan request states of the pre-flight: its step, for its method alone, and
        the micro-batch it ran when it had to adjust it."""
        measured = self.measured_step()
        if measured is None:
            return {}
        fields: dict[str, Any] = {
            "method": measured.method,
            "measured_step_seconds": measured.step_seconds,
            "measured_step_source": "the pre-flight",
        }
        if measured.adjusted and measured.micro_batch:
            fields["micro_batch"] = measured.micro_batch
        return fields
