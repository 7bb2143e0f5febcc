"""What packing and the fused loss do for a recommendation, in plain words.

`affiner.planner.recommend` plans the same methods once more with padded batches and torch's
loss (`affiner.planner.levers.without_levers`); these say what the difference is: fewer tokens
computed, the logits dropped, a better method or setting that fits only with the levers, or,
where a pack's mask costs more than padding would, how to plan padded batches instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from affiner.planner import explain
from affiner.planner.units import format_bytes, format_duration

if TYPE_CHECKING:
    from affiner.planner.hardware import DeviceTarget
    from affiner.planner.models import ModelSpec
    from affiner.planner.plan_candidates import Candidate
    from affiner.planner.settings import TrainSettings


def lever_reasons(
    spec: ModelSpec,
    device: DeviceTarget,
    chosen: Candidate,
    plain: Candidate | None,
    plain_best: Candidate | None,
    *,
    row_tokens: float | None,
) -> list[str]:
    """What packing and the fused loss do for the chosen plan, in words.

    Args:
        chosen: the recommended candidate (levers as the run resolves them).
        plain: the same method planned without the levers (None when they are off).
        plain_best: what the recommendation would be without them (None: nothing fits).
        row_tokens: the data's mean tokens a row (None when unknown).
    """
    from affiner.planner.memory.activations import estimate_activations

    s = chosen.settings
    out: list[str] = []
    if s.packing and row_tokens is not None and row_tokens < s.seq_len:
        # with the lengths unknown every row is planned full: packing then changes no figure
        share = 1 - row_tokens / s.seq_len
        out.append(
            f"packing removes padding: rows average {row_tokens:.0f} of {s.seq_len} tokens, "
            f"~{share:.0%} fewer tokens computed"
        )
    if s.loss_kernel == "liger":
        full = estimate_activations(spec, s.with_(loss_kernel="torch"), device.kind)
        fused = estimate_activations(spec, s, device.kind)
        before = max(full.logits_peak, full.logits_forward)
        # the head's gradient, made early, is a gradient the run has anyway, not logits
        after = max(fused.logits_peak, fused.logits_forward) - fused.details.get(
            "fused_loss.head_grad", 0
        )
        out.append(
            f"fused loss (liger) drops the {format_bytes(before)} logits: "
            f"{format_bytes(after)} instead"
        )
    if plain is None:
        return out
    words = _lever_words(s, row_tokens)
    let = "let" if " and " in words else "lets"
    name = explain.METHOD_NAMES[chosen.method]
    if plain_best is None:
        out.append(f"without {words} nothing would fit: {words} {let} {name} fit")
    elif plain_best.method != chosen.method:
        other = explain.METHOD_NAMES[plain_best.method]
        if chosen.fits and not plain.fits:
            out.append(
                f"{words} {let} {name} fit: otherwise it needs "
                f"{format_bytes(plain.peak_bytes)} and the best that fits is {other}"
            )
        else:
            out.append(f"without {words} the recommendation would be {other}")
    elif plain.fits and chosen.fits:
        gain = _same_method_gain(chosen, plain)
        if gain:
            out.append(f"{words} {gain.replace('let ', let + ' ', 1)}")
    return out


def slower_text(chosen: Candidate, plain: Candidate) -> str:
    """Why the same plan with padded batches would take less time a step, in words."""
    return (
        f"with packing off a step would take about {format_duration(plain.time.step_seconds)} "
        f"instead of {format_duration(chosen.time.step_seconds)}: with "
        f"{chosen.settings.attention} a pack's attention spans all its "
        f"{chosen.settings.micro_batch} rows behind a mask; plan it with --packing off "
        "(packing = false in run.toml), or use flash_attention_2"
    )


def hurts_text(plain_best: Candidate) -> str:
    """Why padded batches would do better than the packing the run is set to, in words."""
    name = explain.METHOD_NAMES[plain_best.method]
    s = plain_best.settings
    how = f"micro-batch {s.micro_batch}" + (
        ", checkpointing on" if s.gradient_checkpointing else ""
    )
    return (
        f"with packing off, {name} would fit at {how} ({format_bytes(plain_best.peak_bytes)}): "
        "with sdpa or eager a pack's block-diagonal mask costs tokens x tokens at every layer "
        "(flash_attention_2 needs none); plan it with --packing off (packing = false in run.toml)"
    )


def _lever_words(s: TrainSettings, row_tokens: float | None) -> str:
    """The levers that change this plan's figures, named: packing only where a pack is
    smaller than padded rows (the data's lengths are known), the fused loss wherever it is on."""
    on = []
    fewer = s.micro_batch_tokens < s.micro_batch * s.seq_len
    if s.packing and (fewer or (row_tokens is not None and row_tokens < s.seq_len)):
        on.append("packing")
    if s.loss_kernel == "liger":
        on.append("the fused loss")
    return " and ".join(on) or "packing"


def _same_method_gain(chosen: Candidate, plain: Candidate) -> str | None:
    """What the levers buy the same method: no checkpointing, a larger micro-batch."""
    a, b = chosen.settings, plain.settings
    if b.gradient_checkpointing and not a.gradient_checkpointing:
        return "let it run without gradient checkpointing (about a third faster)"
    if a.micro_batch > b.micro_batch:
        return f"let it run micro-batch {a.micro_batch} instead of {b.micro_batch}"
    if b.optimizer != a.optimizer and a.optimizer == "adamw":
        return "let it keep full AdamW state"
    return None
