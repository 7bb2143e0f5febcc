"""The assistant's multi-GPU offer: "use 4 GPUs with FSDP" when this machine has them and the
best one-GPU plan is worse (nothing fits, or only a lower-fidelity method does).

The planner searches the fewest GPUs each better method fits on (`PlanReport.layouts`,
`affiner.planner.multi_gpu`); the offer is the best of those this machine can run, in one
line, and waits for a yes (or ``use 4 gpus``, which also works unprompted). Accepting it sets
the layout in `Settings` (``num_gpus``, ``sharding``): every later plan is made over those
GPUs, and the run.toml built from the plan carries ``[distributed]``. ``use 1 gpu`` goes back.

A mixin of `AssistantFlow`, like `affiner.tui.assistant.knobs.SettingKnobs`: it reads the
flow's `settings`, `plan`, `device`, `target` and `hardware`, and plans through `_replan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affiner.planner.units import format_bytes
from affiner.tui.assistant.answers import method_name, step_seconds
from affiner.tui.assistant.reply import Reply, say

#: How each strategy is named to people (run.toml spells them ddp, fsdp, zero2, zero3).
STRATEGY_WORDS = {"ddp": "DDP", "fsdp": "FSDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}


@dataclass(frozen=True)
class GpuOffer:
    """A layout the assistant offered: `num_gpus` of this machine's GPUs with `sharding`, for
    `method`, which does not fit (or fit as well) on one."""

    num_gpus: int
    sharding: str
    method: str


class GpuLayout:
    """The multi-GPU half of `AssistantFlow`, which mixes it in."""

    settings: Any
    plan: Any
    hardware: Any
    target: Any
    spec: Any
    _pending: list[tuple[str, Any]]
    #: The layout offered with the last plan shown, which a yes accepts (None: no offer).
    _gpu_offer: GpuOffer | None = None

    @property
    def machine_gpus(self) -> int:
        """GPUs on this machine (1 when none or unknown): what a layout may use."""
        gpus = getattr(self.hardware, "gpus", None) or ()
        return max(1, len(gpus))

    def gpu_offer_line(self) -> str | None:
        """The offer to show beside a plan, or None (and no offer pending).

        Offered when the plan is for this machine (not a catalog GPU), over one GPU, and the
        planner found a better method that fits over GPUs this machine has.
        """
        self._gpu_offer = None
        if self.target is not None or self.settings.num_gpus > 1 or self.machine_gpus < 2:
            return None
        layouts = [
            layout
            for layout in getattr(self.plan, "layouts", None) or ()
            if layout.num_gpus <= self.machine_gpus and layout.nodes == 1
        ]
        if not layouts:
            return None
        best = layouts[0]
        self._gpu_offer = GpuOffer(best.num_gpus, best.sharding, best.method)
        strategy = STRATEGY_WORDS.get(best.sharding, best.sharding)
        step = step_seconds(best.candidate)
        pace = f", about {_seconds(step)} a step" if step else ""
        return (
            f"This machine has {self.machine_gpus} GPUs: **use {best.num_gpus} GPUs with "
            f"{strategy}** and {method_name(best.method)} fits ({format_bytes(best.peak_bytes)} "
            f"per GPU{pace}). Say **yes** or `use {best.num_gpus} gpus`."
        )

    def use_gpus(self, count: int, sharding: str | None = None) -> Reply:
        """``use 4 gpus [with fsdp]`` or a yes to the offer: plan over `count` GPUs."""
        have = self.machine_gpus
        if count < 1:
            return say("A run needs at least one GPU.")
        if count > have:
            return say(
                f"This machine has {have} GPU{'s' if have != 1 else ''}; a run can use at most "
                f"that many (`use {have} gpus`)."
            )
        offer = self._gpu_offer
        if sharding is None:
            same = offer is not None and offer.num_gpus == count
            sharding = offer.sharding if same and offer is not None else "ddp"
        old = self._layout_words()
        self.settings.num_gpus = count
        self.settings.sharding = sharding if count > 1 else "none"
        self._gpu_offer = None
        new = self._layout_words()
        if self.spec is None:
            return say(f"Layout: **{new}**; the plan follows the model.")
        return self._replan(("layout", (old, new)))

    def accept_gpu_offer(self) -> Reply | None:
        """A yes to the pending offer (None when nothing is offered)."""
        offer = self._gpu_offer
        if offer is None:
            return None
        return self.use_gpus(offer.num_gpus, offer.sharding)

    def layout_planned(self, old: str, new: str) -> Reply:
        """What the plan over the new layout says: what it recommends, memory per GPU."""
        from affiner.tui.assistant.answers import capitalized, recommended
        from affiner.tui.assistant.reply import Say

        best = recommended(self.plan)
        text = f"Layout: {old} → **{new}**."
        if best is None:
            text += " Nothing fits even so."
        elif self.settings.num_gpus > 1:
            text += (
                f" {capitalized(method_name(best.method))} is recommended: "
                f"{format_bytes(best.peak_bytes)} per GPU; the run.toml carries the layout "
                "as [distributed]."
            )
        else:
            text += (
                f" {capitalized(method_name(best.method))} is recommended: "
                f"{format_bytes(best.peak_bytes)}."
            )
        return Reply([Say(text), Say("", kind="plan", data=self.plan)])

    def _layout_words(self) -> str:
        n = self.settings.num_gpus
        if n <= 1:
            return "one GPU"
        return f"{n} GPUs with {STRATEGY_WORDS.get(self.settings.sharding, 'DDP')}"


def _seconds(value: float) -> str:
    from affiner.planner.units import format_duration

    return format_duration(value)
