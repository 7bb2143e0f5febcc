"""What the assistant says and shows is true (issue 12, points 1-3 for the assistant).

- The token-mask preview counts the loss-carrying tokens of a real rendered row (it said
  "0 of 1 tokens" for every row), says where a classifier's loss is, and shows a typical
  row rather than the first (the chat demo's first is "how far is the sun" / "it").
- Who chose the method is said ("The demo uses LoRA: …"), `why not full?` is about full,
  `use qlora` is compared with the recommendation (★), only methods the plan has are
  suggested, a missing one is explained, an impractical plan says so, small times are not
  "0 ms".
- A re-plan of the same settings gives the same numbers, after a what-if and after a
  pre-flight alike.

The real planner is used wherever numbers matter; nothing here needs a terminal.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from affiner.planner.hardware.device import DeviceTarget, target_from_catalog
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import plan
from affiner.planner.units import format_duration
from affiner.runner.data.prepare import RenderedExample
from affiner.runner.run.events import Preflight
from affiner.tui.assistant import answers
from affiner.tui.assistant.flow import AssistantFlow, DataPreview, Reply
from affiner.tui.assistant.preview import typical_example, with_spacing
from affiner.tui.screens.assistant import placeholder
from affiner.tui.widgets.example_view import loss_line, render_example, shown_of
from affiner.tui.widgets.plan_bars import render_bars
from tests.assistant_fakes import GIB, hardware

# -- the token-mask preview ----------------------------------------------------------------


def rendered(tokens: list[tuple[str, bool]], fmt: str = "chat", label: str | None = None) -> Any:
    return RenderedExample(
        text="".join(t for t, _ in tokens),
        tokens=tokens,
        input_ids=list(range(len(tokens))),
        labels=[],
        length=len(tokens),
        truncated=False,
        format=fmt,
        label=label,
    )


def test_the_preview_counts_the_rendered_rows_loss_tokens() -> None:
    example = rendered([("<|im_start|>user\n", False), ("hi", False), ("hello", True), ("!", True)])
    shown = shown_of(example)
    assert shown.pieces[2] == ("hello", True) and shown.label is None
    text = render_example(shown)
    assert "2 of 4 tokens carry loss (underlined)" in text.plain
    underlined = [text.plain[s.start : s.end] for s in text.spans if "underline" in str(s.style)]
    assert "hello" in underlined and "!" in underlined and "hi" not in underlined


def test_a_classifier_example_says_its_loss_is_on_the_label() -> None:
    example = rendered(
        [("[CLS]", False), (" great", False), ("[SEP]", False)], "classification", "fresh"
    )
    line = loss_line(shown_of(example))
    assert (
        line
        == "3 tokens, all read as input; the loss is on the label “fresh”, through the classification head."
    )
    assert "0 of" not in render_example(shown_of(example)).plain


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.tiny_models import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def chat(question: str, reply: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
        ]
    }


def test_the_example_shown_is_a_typical_row_not_the_first(tokenizer: Any, tmp_path: Path) -> None:
    import json

    from affiner.runner.config import DataSection
    from affiner.runner.data import load_rows

    rows = [chat("how far is the sun", "it")]  # the chat demo's first row, as it is
    rows += [
        chat(f"what is your name {n}", "my name is affiner and I am fine thank you")
        for n in range(5)
    ]
    rows += [chat("tell me a story", "the sun rises in the east " * 12)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_rows(DataSection(train=str(path), max_seq_len=512), task="causal_lm")
    example, where = typical_example(loaded, tokenizer, 512)
    shown = shown_of(example)
    trained = "".join(t for t, flag in shown.pieces if flag)
    assert "my name is affiner" in trained
    assert where in {f"train.jsonl:{line}" for line in range(2, 7)}  # one of the typical rows
    assert loss_line(shown).split(" of ")[0] == str(sum(f for _, f in shown.pieces))
    assert int(loss_line(shown).split(" of ")[0]) > 2


def test_token_pieces_join_into_the_decoded_text(tokenizer: Any) -> None:
    from affiner.runner.data import render_example as render_row

    row = render_row(chat("what is your name", "my name is affiner"), "chat", tokenizer, 512)
    spaced = with_spacing(row, tokenizer)
    assert "".join(t for t, _ in spaced.tokens) == tokenizer.decode(row.input_ids)
    assert [f for _, f in spaced.tokens] == [f for _, f in row.tokens]


# -- the words -----------------------------------------------------------------------------


def texts(reply: Reply) -> str:
    return "\n".join(say.text for say in reply.messages)


def run(flow: AssistantFlow, reply: Reply) -> Reply:
    """Run a reply's plan and target tasks with the real planner and catalog, as the screen's
    workers do; the replies they bring are added to `reply`."""
    for task in reply.tasks:
        if task.kind == "plan":
            reply += run(flow, flow.plan_ready(plan(flow.spec, flow.device, flow.plan_request())))
        elif task.kind == "target":
            reply += run(flow, flow.set_target(target_from_catalog(task.arg) if task.arg else None))
    return reply


def planned_flow(
    size: str, device: DeviceTarget, *, preset: dict[str, Any] | None = None
) -> AssistantFlow:
    flow = AssistantFlow()
    flow.hardware_ready(hardware(), device)
    if preset is not None:
        flow.demo_ready(preset)
    flow.submit(size)
    run(flow, flow.model_ready(spec_from_size(size)))
    lengths = [120] * 80 + [400] * 20
    run(
        flow,
        flow.data_ready(DataPreview(path="train.jsonl", format="chat", rows=1001, lengths=lengths)),
    )
    return flow


def cpu() -> DeviceTarget:
    """A CPU with fixed figures (a measured one would make the numbers the machine's)."""
    return DeviceTarget(
        kind="cpu",
        name="CPU (Test CPU)",
        source="cpu",
        memory_total=64 * GIB,
        memory_free=48 * GIB,
        bf16=True,
        fp16=False,
        peak_tflops_bf16=0.3,
        peak_tflops_fp32=0.3,
        measured=True,
        process_baseline=GIB,
    )


DEMO = {
    "default_model": "1B",
    "default_data": "train.jsonl",
    "settings": {"method": "lora", "epochs": 3.0, "learning_rate": 2e-4},
}


def test_the_demo_says_it_chose_the_method_and_why() -> None:
    flow = planned_flow("1B", target_from_catalog("A100 80GB"), preset=DEMO)
    assert answers.recommended(flow.plan).method == "full"
    shown = texts(flow._enter("plan"))
    assert "The demo uses **LoRA**: its learning rate and settings were tuned with it" in shown
    assert "You chose" not in shown and "`use full` follows the recommendation" in shown
    why = texts(flow.submit("why not full?"))
    assert "Full fine-tuning **is** the recommendation" in why
    assert "but the demo uses **LoRA**" in why and "`use full` switches" in why


def test_a_users_choice_is_theirs() -> None:
    flow = planned_flow("1B", target_from_catalog("A100 80GB"))
    flow.submit("use qlora")
    shown = texts(flow._enter("plan"))
    assert "You chose **QLoRA (4-bit base)**." in shown and "demo" not in shown
    assert "but you chose **QLoRA (4-bit base)**." in texts(flow.submit("why not full?"))


def test_use_qlora_is_compared_with_the_recommendation_not_the_last_choice() -> None:
    flow = planned_flow("7B", target_from_catalog("4090"))
    assert answers.recommended(flow.plan).method == "lora"
    said = texts(flow.submit("use qlora"))
    assert "Using **QLoRA (4-bit base)** (the recommendation is LoRA)." in said
    assert "was the recommendation" not in said
    assert "Using **LoRA**, the recommendation." in texts(flow.submit("use lora"))


def test_only_methods_the_plan_has_are_suggested_and_a_missing_one_is_explained() -> None:
    flow = planned_flow("1B", target_from_catalog("4090"))
    flow.spec = dataclasses.replace(flow.spec, is_decoder=False, name="a-bert")
    run(flow, flow.submit("rank 8"))  # re-plan for the encoder: no quantized base
    methods = {c.method for c in flow.plan.candidates}
    assert "qlora" not in methods and "lora8" not in methods
    hint = placeholder(flow.plan, flow.method)
    question = texts(flow._enter("plan"))
    for text in (hint, question):
        assert "qlora" not in text and "lora8" not in text
        assert any(f"use {m}" in text for m in methods)
    said = texts(flow.submit("use qlora"))
    assert "it is not a decoder" in said and "a-bert" in said


def test_an_impractical_plan_says_so() -> None:
    flow = planned_flow("7B", cpu())
    best = answers.recommended(flow.plan)
    assert best is not None and not best.time.practical
    shown = texts(flow._enter("plan"))
    assert "⚠ **Impractical here**" in shown and "impractical on a CPU" in shown
    bars = render_bars(flow.plan, flow.device, None, 76).plain
    assert "slow" in bars
    assert "fits but impractical here" in texts(flow.submit("what fits?"))


def test_small_times_are_not_zero() -> None:
    assert format_duration(0.0002) == "<1 ms"
    assert format_duration(0.0006) == "1 ms"
    assert answers.run_time(0.2) == "under a second"
    assert answers.run_time(42) == "42 s"
    assert answers.per_step(0.0002) == "<1 ms/step"
    flow = planned_flow("135M", target_from_catalog("H100 SXM"))
    for candidate in flow.plan.candidates:
        candidate.time.step_seconds = 0.0003
    bars = render_bars(flow.plan, flow.device, None, 76).plain
    assert "<1 ms/step" in bars and " 0 ms" not in bars


# -- one source of numbers -----------------------------------------------------------------


def numbers(flow: AssistantFlow) -> list[tuple[Any, ...]]:
    """Every figure of the plan: each method's memory, step, steps, total and verdict."""
    return [
        (
            c.method,
            c.peak_bytes,
            c.fits,
            c.time.step_seconds,
            c.time.total_steps,
            c.time.total_seconds,
            c.settings.micro_batch,
            c.settings.grad_accum,
        )
        for c in flow.plan.candidates
    ] + [flow.plan.recommended]


def test_a_re_plan_after_a_what_if_gives_the_same_numbers() -> None:
    flow = planned_flow("7B", target_from_catalog("4090"))
    before = numbers(flow)
    run(flow, flow.submit("what if I had an A100 80GB"))
    assert numbers(flow) != before  # another GPU, other numbers
    run(flow, flow.submit("plan for my GPU"))
    assert numbers(flow) == before


@pytest.mark.parametrize("adjusted", [False, True], ids=["measured", "measured-and-adjusted"])
def test_a_re_plan_after_a_pre_flight_and_a_what_if_gives_the_same_numbers(adjusted: bool) -> None:
    flow = planned_flow("1B", target_from_catalog("4090"))
    run(flow, flow.submit("use lora"))
    s = flow.candidate().settings
    event = Preflight(
        device="NVIDIA GeForce RTX 4090",
        measured_peak_bytes=8 * GIB,
        measured_step_seconds=2.5,
        micro_batch=max(1, s.micro_batch // 2) if adjusted else s.micro_batch,
        grad_accum=s.grad_accum * 2 if adjusted else s.grad_accum,
        adjusted=adjusted,
    )
    run(flow, flow.preflight_ready(event))
    calibrated = numbers(flow)
    assert flow.candidate().time.step_seconds == pytest.approx(2.5)
    run(flow, flow.submit("what if I had an A100 80GB"))
    run(flow, flow.submit("plan for my GPU"))
    assert numbers(flow) == calibrated
    run(flow, flow.submit("use qlora"))  # another method: the model's time, every method
    assert len(flow.plan.candidates) > 1 and flow.candidate().time.calibration is None
    run(flow, flow.submit("use lora"))  # the measured one again: the measured numbers again
    assert numbers(flow) == calibrated
    assert "measured 2.5 s/step" in render_bars(flow.plan, flow.device, flow.method, 76).plain


def test_after_a_pre_flight_every_time_shown_is_the_measured_one() -> None:
    flow = planned_flow("1B", target_from_catalog("4090"))
    run(flow, flow.submit("use lora"))
    s = flow.candidate().settings
    event = Preflight(
        device="NVIDIA GeForce RTX 4090",
        measured_peak_bytes=8 * GIB,
        measured_step_seconds=11.0,
        micro_batch=s.micro_batch,
        grad_accum=s.grad_accum,
    )
    run(flow, flow.preflight_ready(event))
    steps = flow.candidate().time.total_steps
    assert "11 s a step (measured)" in texts(flow.submit("why?"))
    fits = texts(flow.submit("what fits?"))
    assert "11 s/step measured" in fits
    assert fits.count("This plan is for LoRA alone (the pre-flight measured it)") == 1
    said = texts(run(flow, flow.submit("epochs 1")))
    new_steps = flow.candidate().time.total_steps
    assert new_steps < steps and f"{new_steps} steps (" in said and "× 11 s ≈" in said
    assert "Calibrated by the pre-flight" in said
    assert "Using **LoRA**" in texts(run(flow, flow.submit("use lora")))


def test_what_fits_says_why_a_method_is_missing() -> None:
    flow = planned_flow("1B", target_from_catalog("4090"))
    assert "The planner" not in texts(flow.submit("what fits?"))  # every method is there
    flow.spec = dataclasses.replace(flow.spec, is_decoder=False, name="/models/a-bert")
    run(flow, flow.submit("rank 8"))
    said = texts(flow.submit("what fits?"))
    assert "The planner leaves QLoRA (4-bit base) out for a-bert: it is not a decoder" in said
    assert "LoRA on an 8-bit base out for a-bert" in said


def test_after_a_pre_flight_the_peak_shown_and_recorded_is_the_measured_one() -> None:
    from types import SimpleNamespace

    from affiner.tui.screens.assistant import AssistantScreen

    flow = planned_flow("1B", target_from_catalog("4090"))
    run(flow, flow.submit("use lora"))
    s = flow.candidate().settings
    event = Preflight(
        device="NVIDIA GeForce RTX 4090",
        measured_peak_bytes=8 * GIB,
        measured_step_seconds=2.5,
        micro_batch=s.micro_batch,
        grad_accum=s.grad_accum,
    )
    run(flow, flow.preflight_ready(event))
    line = AssistantScreen.summary_line(SimpleNamespace(flow=flow))
    assert "→ peak 8.00 GiB measured," in line and "(measured step)" in line
    config = flow.build_config()
    assert config.plan.measured_peak_bytes == 8 * GIB
    assert config.plan.measured_step_seconds == 2.5
    run(flow, flow.submit("use qlora"))  # another method: its planned peak, nothing measured
    line = AssistantScreen.summary_line(SimpleNamespace(flow=flow))
    assert "measured" not in line
    assert flow.build_config().plan.measured_peak_bytes is None


def test_a_cpu_pre_flight_below_the_plan_says_the_heap_grows_over_the_run() -> None:
    """The CPU plan is the whole run's peak; a few pre-flight steps peak lower (issue 12)."""
    from affiner.tui.assistant.text import preflight_summary

    def summary(device: str, measured: int) -> str:
        event = Preflight(
            device=device,
            measured_peak_bytes=measured,
            predicted_peak_bytes=2 * GIB,
            measured_step_seconds=1.0,
        )
        return preflight_summary(event, None)

    assert "new batch shapes" in summary("cpu", int(1.5 * GIB))
    assert "new batch shapes" not in summary("cpu", int(2.1 * GIB))  # above: nothing to explain
    assert "new batch shapes" not in summary("NVIDIA H100", int(1.5 * GIB))
