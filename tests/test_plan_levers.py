"""The planner knows the levers: packing and the fused loss, as the run will use them.

Packing is checked against what autograd really keeps for a packed batch of a tiny Llama
(bench/memory_probe.py), the fused loss against the logits it removes on a CUDA target, and the
recommendation, the CLI flags, ``plan run.toml`` and ``--save`` against the run.toml words.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomllib

from affiner.planner.errors import AffinerError
from affiner.planner.hardware.device import DeviceTarget, target_from_catalog
from affiner.planner.memory import estimate_memory
from affiner.planner.memory.activations import estimate_activations
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import PlanRequest, longest_sequence_for, plan
from affiner.planner.settings import TrainSettings
from affiner.planner.timing import estimate_time
from tests.model_configs import LLAMA_3_8B
from tests.plan_helpers import fake_cpu_rates, plan_json, small_llama_folder

#: A long-tailed mix: one long row, the rest short (chat data looks like this).
LONG_TAIL = (512, 140, 96, 80, 64, 48, 40, 32)
#: A model whose vocabulary head dominates its memory (a 256k vocabulary on a 1k hidden size).
BIG_VOCAB = dict(
    LLAMA_3_8B,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=256000,
    tie_word_embeddings=False,
)


def _gpu(gib: float) -> DeviceTarget:
    base = target_from_catalog("RTX 4090")
    return dataclasses.replace(
        base, memory_total=int(gib * (1 << 30)), memory_free=int(gib * (1 << 30))
    )


@pytest.fixture
def liger_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """liger-kernel "installed": the planner only looks it up by name (`find_spec`)."""
    import affiner.planner.levers as levers

    monkeypatch.setattr(levers, "liger_installed", lambda: True)


def test_packed_activations_are_smaller_than_padded_for_a_long_tailed_mix() -> None:
    spec = spec_from_size("135M")
    padded = TrainSettings(method="lora", micro_batch=8, seq_len=512, padded=True)
    packed = padded.with_(padded=False, packing=True, longest_rows=LONG_TAIL)
    assert packed.micro_batch_tokens == sum(LONG_TAIL) < 8 * 512
    cuda = target_from_catalog("RTX 4090")
    for kind in ("cuda", "cpu"):
        a, b = estimate_activations(spec, packed, kind), estimate_activations(spec, padded, kind)
        assert a.kept < b.kept / 2 and a.logits_peak < b.logits_peak / 2
    assert (
        estimate_memory(spec, packed, cuda).peak_bytes
        < estimate_memory(spec, padded, cuda).peak_bytes
    )
    # with no lengths known a pack is planned as full rows: never below padding
    blind = packed.with_(longest_rows=())
    assert (
        estimate_activations(spec, blind, "cuda").kept
        >= estimate_activations(spec, padded, "cuda").kept
    )


def test_packed_memory_is_what_autograd_keeps() -> None:
    """A real packed batch (position ids restarting, no mask, no cache): the planner's figure
    is within 3% of the saved tensors, with sdpa's per-layer mask and eager's pack-wide scores."""
    torch = pytest.importorskip("torch")
    import bench.memory_probe as probe

    config = probe.tiny_config("llama")
    spec = spec_from_config(config, name="tiny-llama")
    lengths = [40, 10, 6, 8]
    ids = torch.randint(
        3, spec.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(0)
    )
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": positions, "use_cache": False}
    for attention in ("sdpa", "eager"):
        model = probe.build_model(config, attn=attention)
        model.train()
        saved = probe.saved_for_backward(model, batch)
        settings = TrainSettings(
            method="full", precision="fp32", micro_batch=4, seq_len=48, attention=attention,
            packing=True, longest_rows=tuple(sorted(lengths, reverse=True)),
        )  # fmt: skip
        est = estimate_activations(spec, settings, "cpu")
        assert abs(est.kept / saved.activations - 1) < 0.03, (
            attention,
            est.kept,
            saved.activations,
        )
        assert est.logits_saved == saved.logits


def test_packing_off_keeps_todays_figures() -> None:
    spec = spec_from_size("1B")
    device = target_from_catalog("RTX 4090")
    today = TrainSettings(method="lora", micro_batch=4, seq_len=1024, padded=True)
    off = today.with_(longest_rows=LONG_TAIL)  # lengths known, packing off: unused
    assert estimate_memory(spec, off, device) == estimate_memory(spec, today, device)
    kwargs = dict(train_rows=1000, train_tokens=150_000)
    assert estimate_time(spec, off, device, **kwargs) == estimate_time(
        spec, today, device, **kwargs
    )
    planned = plan(spec, device, PlanRequest(packing=False, loss_kernel="torch")).best
    assert planned is not None and not planned.settings.packing
    again = estimate_memory(spec, planned.settings.with_(packing=False), device)
    assert planned.peak_bytes == again.peak_bytes


def test_packed_time_computes_the_real_tokens() -> None:
    spec = spec_from_size("1B")
    device = target_from_catalog("RTX 4090")
    s = TrainSettings(method="lora", micro_batch=1, seq_len=1024, packing=True)
    padded = estimate_time(
        spec, s.with_(packing=False), device, train_rows=1000, train_tokens=256_000
    )
    packed = estimate_time(spec, s, device, train_rows=1000, train_tokens=256_000)
    assert packed.tokens_per_step == 256 and padded.tokens_per_step == 1024
    assert packed.step_seconds < padded.step_seconds / 3
    assert any("75% fewer tokens" in n for n in packed.notes)


def test_the_fused_loss_removes_most_of_the_logits_on_a_cuda_target() -> None:
    spec = spec_from_size("135M")
    s = TrainSettings(method="lora", micro_batch=4, seq_len=2048)
    torch_loss = estimate_activations(spec, s, "cuda")
    fused = estimate_activations(spec, s.with_(loss_kernel="liger"), "cuda")
    before = max(torch_loss.logits_peak, torch_loss.logits_forward)
    after = max(fused.logits_peak, fused.logits_forward)
    assert after < before * 0.05
    device = target_from_catalog("RTX 4090")
    saved = (
        estimate_memory(spec, s, device).peak_bytes
        - estimate_memory(spec, s.with_(loss_kernel="liger"), device).peak_bytes
    )
    assert saved > 0.8 * (before - after)


def test_auto_resolves_as_the_run_will(liger_here: None) -> None:
    spec = spec_from_size("135M")
    gpu = plan(spec, target_from_catalog("RTX 4090"), PlanRequest(method="lora")).best
    assert gpu.settings.packing and gpu.settings.loss_kernel == "liger"
    cpu = DeviceTarget("cpu", "CPU", "cpu", 64 << 30, 60 << 30, False, False, peak_tflops_fp32=1.0)
    on_cpu = plan(spec, cpu, PlanRequest(method="lora")).best
    assert on_cpu.settings.packing and on_cpu.settings.loss_kernel == "torch"
    classify = plan(spec, cpu, PlanRequest(method="lora", task="classification")).best
    assert not classify.settings.packing and classify.settings.loss_kernel == "torch"


def test_auto_takes_torch_where_liger_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import affiner.planner.levers as levers

    monkeypatch.setattr(levers, "find_spec", lambda name: None)
    best = plan(spec_from_size("135M"), target_from_catalog("RTX 4090"), PlanRequest()).best
    assert best.settings.loss_kernel == "torch"


@pytest.mark.parametrize(
    ("request_fields", "where", "words"),
    [
        ({"packing": True, "task": "classification"}, "--packing", "classification model"),
        ({"loss_kernel": "liger"}, "--loss-kernel", "CUDA only"),
        ({"loss_kernel": "fused"}, "--loss-kernel", "unknown loss kernel"),
    ],
)
def test_a_stated_lever_that_cannot_hold_is_refused(request_fields, where, words) -> None:
    cpu = DeviceTarget("cpu", "CPU", "cpu", 64 << 30, 60 << 30, False, False, peak_tflops_fp32=1.0)
    with pytest.raises(AffinerError) as caught:
        plan(spec_from_size("135M"), cpu, PlanRequest(**request_fields))
    assert caught.value.where == where and words in str(caught.value) and caught.value.hint


def test_the_recommendation_takes_a_better_method_because_of_the_fused_loss(
    liger_here: None,
) -> None:
    spec = spec_from_config(BIG_VOCAB, name="big-vocab")
    device = _gpu(16)
    request = PlanRequest(seq_len=4096, target_batch=8)
    with_levers = plan(spec, device, request).best
    without = plan(spec, device, dataclasses.replace(request, loss_kernel="torch")).best
    assert with_levers.method == "full" and with_levers.settings.loss_kernel == "liger"
    assert without.method == "lora"
    said = " | ".join(with_levers.reasons)
    assert "fused loss (liger) drops the 11.7 GiB logits" in said
    assert "the fused loss lets full fine-tuning fit" in said and "best that fits is LoRA" in said


def test_the_fused_loss_lets_a_longer_sequence_fit(liger_here: None) -> None:
    spec = spec_from_config(BIG_VOCAB, name="big-vocab")
    request = PlanRequest(method="lora")
    fused = longest_sequence_for(spec, _gpu(16), request, "lora")
    plain = longest_sequence_for(
        spec, _gpu(16), dataclasses.replace(request, loss_kernel="torch"), "lora"
    )
    assert fused.settings.loss_kernel == "liger" and fused.longest > 1.5 * plain.longest


def test_packing_with_known_lengths_says_how_much_it_saves() -> None:
    spec = spec_from_size("135M")
    cpu = DeviceTarget("cpu", "CPU", "cpu", 64 << 30, 60 << 30, False, False, peak_tflops_fp32=1.0)
    request = PlanRequest(
        method="lora", seq_len=512, train_rows=800, train_tokens=800 * 128, longest_rows=LONG_TAIL
    )
    best = plan(spec, cpu, request).best
    assert best.settings.packing
    assert (
        "packing removes padding: rows average 128 of 512 tokens, ~75% fewer tokens computed"
        in best.reasons
    )


def test_a_pack_wide_mask_that_costs_more_than_padding_is_said() -> None:
    """Lengths unknown, sdpa, a large micro-batch: a pack of 16 full rows keeps a
    (tokens x tokens) mask a layer, and the report says padded batches would do better."""
    spec = spec_from_size("135M")
    report = plan(spec, target_from_catalog("RTX 4090"), PlanRequest(method="full"))
    assert report.best.settings.packing
    assert any("packing off" in n and "flash_attention_2" in n for n in report.notes)
    flash = plan(
        spec,
        target_from_catalog("RTX 4090"),
        PlanRequest(method="full", attention="flash_attention_2"),
    )
    assert not any("packing off" in n for n in flash.notes)


# --- the command line ------------------------------------------------------------------------

RUN_TOML = """\
[model]
name_or_path = "model"

[method]
name = "lora"
lora_rank = 8

[data]
train = "train.jsonl"
max_seq_len = 256

[training]
micro_batch = 4
grad_accum = 2
epochs = 1
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Llama-shaped config.json folder (no weights), long-tailed chat-like data, a run.toml."""
    # long-tailed: most rows a few words, one in ten a few hundred
    rows = [
        {"instruction": f"say {i} " + "word " * (300 if i % 10 == 0 else i % 9), "output": "ok"}
        for i in range(40)
    ]
    small_llama_folder(tmp_path, monkeypatch, rows)
    _word_tokenizer(tmp_path / "model" / "tokenizer.json")
    (tmp_path / "run.toml").write_text(RUN_TOML)
    return tmp_path


def _word_tokenizer(path: Path) -> None:
    """A word-level tokenizer.json (one token a word): the plan counts lengths with it alone."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "say", "word", "ok", *(str(i) for i in range(40))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu_rates(monkeypatch)


def _best(report: dict) -> dict:
    return report["candidates"][report["recommended"]]


def test_the_flags_are_planned_as_stated(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = _best(
        plan_json(
            capsys, "--model", "model", "--vram", "24", "--packing", "off", "--loss-kernel", "torch"
        )
    )
    assert off["packing"] is False and off["loss_kernel"] == "torch"
    assert "packing" in off["stated"] and off["stated_levers"] == {
        "packing": False,
        "loss_kernel": "torch",
    }
    assert "as stated: " in " ".join(off["reasons"]) and "packing off" in " ".join(off["reasons"])
    auto = _best(plan_json(capsys, "--model", "model", "--vram", "24", "--loss-kernel", "auto"))
    assert auto["packing"] is True and auto["stated_levers"] == {"loss_kernel": "auto"}
    assert any("loss kernel auto (torch)" in r for r in auto["reasons"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ("--task", "classification", "--packing", "on", "--vram", "24"),
            "packing cannot be exact",
        ),
        (("--cpu", "--loss-kernel", "liger"), "liger's fused cross-entropy cannot run"),
    ],
)
def test_the_flags_are_refused_with_a_message(
    folder: Path,
    fake_cpu: None,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    words: str,
) -> None:
    from affiner.tui.cli.entry import main

    code = main(["plan", "--model", "model", *args])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["plan", "--model", "model", "--packing", "sometimes"])


def test_plan_run_toml_packing_false_and_absent_differ(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = plan_json(capsys, "run.toml", "--vram", "24")
    text = (
        (folder / "run.toml").read_text().replace("epochs = 1\n", "epochs = 1\npacking = false\n")
    )
    (folder / "off.toml").write_text(text)
    off = plan_json(capsys, "off.toml", "--vram", "24")
    a, b = _best(absent), _best(off)
    assert a["packing"] is True and b["packing"] is False
    assert "packing" not in a["stated_levers"] and b["stated_levers"]["packing"] is False
    # the data's rows are short: a pack computes its real tokens, padded rows 256 each
    assert (
        absent["data"]["lengths"]["mean"] < 256
        and a["time"]["tokens_per_step"] < b["time"]["tokens_per_step"]
    )
    assert a["micro_batch_tokens"] < b["micro_batch_tokens"] == 4 * 256
    assert a["breakdown"]["activations"] < b["breakdown"]["activations"]


def test_save_writes_packing_only_when_stated(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_json(
        capsys, "--model", "model", "--vram", "24", "--data", "train.jsonl", "--save", "auto.toml"
    )
    written = tomllib.loads((folder / "auto.toml").read_text())["training"]
    assert "packing" not in written and written.get("loss_kernel", "auto") == "auto"
    plan_json(capsys, "--model", "model", "--vram", "24", "--data", "train.jsonl", "--packing", "off",
          "--loss-kernel", "torch", "--save", "off.toml")  # fmt: skip
    written = tomllib.loads((folder / "off.toml").read_text())["training"]
    assert written["packing"] is False and written["loss_kernel"] == "torch"
    # from a run.toml that leaves packing out, the saved plan leaves it out too
    plan_json(capsys, "run.toml", "--vram", "24", "--save", "again.toml")
    assert "packing" not in tomllib.loads((folder / "again.toml").read_text())["training"]


def test_from_plan_reads_stated_levers_from_any_candidate() -> None:
    from types import SimpleNamespace

    from affiner.runner.config import config_from_plan

    plain = SimpleNamespace(method="lora", micro_batch=2, seq_len=128)
    cfg = config_from_plan(plain, model="m", train="t.jsonl")
    assert cfg.training.packing is None and cfg.training.loss_kernel == "auto"
    stated = SimpleNamespace(
        method="lora", micro_batch=2, seq_len=128, packing=False, loss_kernel="torch"
    )
    cfg = config_from_plan(stated, model="m", train="t.jsonl")
    assert cfg.training.packing is False and cfg.training.loss_kernel == "torch"
