"""Typed phrases → intents (affiner.tui.assistant.intents) → specific answers from the plan (affiner.tui.assistant.answers)."""

from __future__ import annotations

import pytest

from affiner.planner.timing import TimeEstimate
from affiner.tui.assistant import answers
from affiner.tui.assistant.answers import AnswerContext, answer
from affiner.tui.assistant.intents import Intent, parse_intent
from tests.assistant_fakes import fake_plan, gpu_device, hardware, model_spec, with_capacity


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("what if I had a 4090", "plan_for_gpu", "4090"),
        ("plan for an A100", "plan_for_gpu", "a100"),
        ("What about an H100 80GB?", "plan_for_gpu", "h100 80gb"),
        ("plan for my GPU", "plan_for_gpu", None),
        ("use qlora", "use_method", "qlora"),
        ("use full", "use_method", "full"),
        ("use 8-bit lora", "use_method", "lora8"),
        ("switch to layer freeze", "use_method", "freeze"),
        ("seq 4096", "set_seq_len", 4096),
        ("max length 1024", "set_seq_len", 1024),
        ("sequence length 2k", "set_seq_len", 2048),
        ("batch 8", "set_batch", 8),
        ("batch size: 2", "set_batch", 2),
        ("rank 32", "set_rank", 32),
        ("lora rank 64", "set_rank", 64),
        ("lr 1e-4", "set_lr", 1e-4),
        ("learning rate = 0.0003", "set_lr", 3e-4),
        ("epochs 2", "set_epochs", 2.0),
        ("1.5 epochs", "set_epochs", 1.5),
        ("why not full?", "why_not", "full"),
        ("Why not 4-bit LoRA?", "why_not", "qlora"),
        ("why?", "why", None),
        ("why qlora", "why", "qlora"),
        ("how long?", "how_long", None),
        ("how long will it take", "how_long", None),
        ("what fits?", "what_fits", None),
        ("hardware", "hardware", None),
        ("help", "help", None),
        ("?", "help", None),
        ("back", "back", None),
        ("next", "next", None),
        ("", "next", None),
        ("go to data", "goto", "data"),
        ("launch", "launch", None),
        ("preflight", "preflight", None),
    ],
)
def test_phrases_parse_to_intents(text: str, kind: str, value: object) -> None:
    intent = parse_intent(text)
    assert (intent.kind, intent.value) == (kind, value)
    assert intent.text == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "7B",
        "data/train.jsonl",
        "gpt2",
        "plan for success",
        "why is the sky blue",
    ],
)
def test_answers_and_nonsense_stay_unknown(text: str) -> None:
    """Model ids, paths and sizes are answers to the step's question, not commands."""
    assert parse_intent(text).kind == "unknown"


def ctx(**kwargs) -> AnswerContext:
    base = {"device": gpu_device(), "plan": fake_plan(), "hardware": hardware(), "step": "plan"}
    return AnswerContext(**(base | kwargs))


def test_why_not_full_names_the_memory_it_needs_and_what_there_is() -> None:
    text = answer(parse_intent("why not full?"), ctx())
    assert "needs **61.0 GiB**" in text
    assert "has **24.0 GiB** free" in text
    assert "all 7.2 B parameters" in text  # the planner's own reason
    assert "What fits instead: LoRA, QLoRA" in text


def test_why_not_a_method_that_fits_compares_with_the_recommendation() -> None:
    text = answer(parse_intent("why not qlora?"), ctx())
    assert "QLoRA (4-bit base) fits (6.20 GiB of 24.0 GiB)" in text
    assert "LoRA is recommended" in text
    assert "1.6× slower per step" in text


def test_why_explains_the_recommendation() -> None:
    text = answer(Intent("why", None, "why?"), ctx())
    assert text.startswith("**LoRA** is recommended: peak 16.5 GiB of 24.0 GiB, 900 ms a step")


def test_what_fits_lists_every_method_with_its_verdict() -> None:
    text = answer(parse_intent("what fits?"), ctx())
    assert "**full fine-tuning**: 61.0 GiB, does not fit" in text
    assert "**LoRA**: 16.5 GiB, fits, 900 ms/step ← recommended" in text
    assert "**QLoRA (4-bit base)**: 6.20 GiB, fits" in text


def test_nothing_fits_suggests_what_to_change() -> None:
    device = with_capacity(gpu_device("tiny GPU"), 4)
    text = answer(parse_intent("what fits?"), ctx(plan=fake_plan(capacity_gib=4), device=device))
    assert "Nothing fits in the 4.00 GiB" in text and "QLoRA (4-bit base), needs 6.20 GiB" in text


def timed(plan, steps_per_epoch: int, total_steps: int, calibration: float | None = None):
    """`plan` with a planner `TimeEstimate` on each candidate: the steps the plan counted."""
    for c in plan.candidates:
        step = c.step_seconds * (calibration or 1)
        c.step_seconds = None  # the time lives in `time`, as on a planner Candidate
        note = f"calibrated by the pre-flight: x{calibration:.2f}" if calibration else None
        c.time = TimeEstimate(
            0, 0.0, None, 0.3, step, steps_per_epoch, None, step * total_steps,
            [note] if note else [], total_steps, calibration=calibration, calibration_note=note,
        )  # fmt: skip
        c.grad_accum = 2
    return plan


def test_how_long_gives_the_plans_own_steps_and_total() -> None:
    # 1000 rows at micro-batch 4 x 2: 125 steps an epoch, 250 in two; a naive 1000 x 2 / 4
    # would say 500. The plan's figure (here 251, to tell them apart) is what is shown.
    text = answer(parse_intent("how long?"), ctx(plan=timed(fake_plan(), 125, 251), rows=1000))
    assert text.startswith("LoRA: 251 steps (1,000 rows × 3 epochs ÷ (micro-batch 4 × 2")
    assert "as the Trainer counts: 125 an epoch" in text and "× 900 ms ≈ **4 min**." in text
    assert "alibrated" not in text
    assert "Give me the data" in answer(parse_intent("how long?"), ctx(rows=None))
    assert "choose a model first" in answer(parse_intent("how long?"), ctx(plan=None))


def test_how_long_without_a_total_gives_the_step_alone() -> None:
    text = answer(parse_intent("how long?"), ctx(rows=1000, epochs=2, batch=4))
    assert text == "LoRA: about **900 ms a step** (4 rows)."


def test_how_long_follows_the_chosen_method_and_says_what_calibrated_it() -> None:
    plan = timed(fake_plan(), 63, 63, calibration=2.0)
    text = answer(parse_intent("how long?"), ctx(plan=plan, rows=1000, epochs=1, method="qlora"))
    assert text.startswith("QLoRA (4-bit base): 63 steps")
    assert "× 2.8 s ≈ **3 min**. Calibrated by the pre-flight: x2.00." in text


def test_hardware_help_and_unknown_are_never_silent() -> None:
    assert (
        "**NVIDIA GeForce RTX 4090**, 24.0 GiB free of 24.0 GiB (compute 8.9, bf16 yes)"
        in answer(parse_intent("hardware"), ctx())
    )
    no_gpu = answer(parse_intent("hardware"), ctx(hardware=hardware(gpus=False)))
    assert "No NVIDIA GPU: NVML Shared Library Not Found" in no_gpu
    # the probe's reason ends with the CLI's advice; the app says its own way instead
    from dataclasses import replace

    from affiner.planner.hardware import FALLBACK

    report = replace(hardware(gpus=False), gpu_reason=f"NVIDIA driver not found: {FALLBACK}")
    words = answer(parse_intent("hardware"), ctx(hardware=report))
    assert "--gpu" not in words and "press F3 then p" in words
    help_text = answer(parse_intent("help"), ctx())
    for phrase in ("what if I had a 4090", "use qlora", "seq 4096", "why not full?", "how long?"):
        assert phrase in help_text
    unknown = answer(parse_intent("make it better"), ctx())
    assert "I did not understand “make it better”" in unknown and "`use qlora`" in unknown


def test_questions_before_a_plan_say_what_is_missing() -> None:
    assert "tell me the model first" in answer(parse_intent("why not full?"), ctx(plan=None))


def test_setting_changed_reports_the_memory_it_moved() -> None:
    before, after = fake_plan().candidates[1], fake_plan(rank=64).candidates[1]
    text = answers.setting_changed("LoRA rank", 16, 64, before, after, gpu_device())
    assert text == (
        "LoRA rank: 16 → **64**. LoRA now peaks at **18.0 GiB** (was 16.5 GiB) of 24.0 GiB, 900 ms a step."
    )
    too_big = fake_plan(seq_len=4096).candidates[1]
    assert "no longer fits" in answers.setting_changed(
        "Maximum length", 512, 4096, before, too_big, gpu_device()
    )


def test_model_summary() -> None:
    text = answers.model_summary(model_spec())
    assert "**6.74 B parameters**" in text and "32 heads (8 KV)" in text and "context 4,096" in text


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("demo", "classify"),
        ("demo chat", "chat"),
        ("Demo classify", "classify"),
        ("run the demo chat", "chat"),
    ],
)
def test_demo_phrases_name_the_task(text: str, key: str) -> None:
    intent = parse_intent(text)
    assert (intent.kind, intent.value) == ("demo", key)
