"""bench/throughput.py's pure parts: counting real tokens, the ratios and bars, the table and
JSON, the ways each device runs, the arguments it refuses, and the SmolLM2-shaped model's config
and tokenizer. Nothing here trains or imports torch's training stack."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_throughput", ROOT / "bench" / "throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module
    spec.loader.exec_module(module)
    return module


T = _load_bench()


class _Tensor:
    """Just what `real_tokens` asks of a tensor (`sum`, `numel`): importing torch would cost
    seconds of this file's budget."""

    def __init__(self, rows):
        self.rows = rows

    def sum(self):
        return sum(map(sum, self.rows))

    def numel(self):
        return sum(len(row) for row in self.rows)


def test_real_tokens_counts_the_attention_mask_of_a_padded_batch():
    batch = {
        "input_ids": _Tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
        "attention_mask": _Tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
    }
    assert T.real_tokens(batch) == 5


def test_real_tokens_of_a_padding_free_batch_is_its_flattened_length():
    batch = {"input_ids": _Tensor([[5, 6, 7, 8, 9]]), "position_ids": _Tensor([[0, 1, 2, 0, 1]])}
    assert T.real_tokens(batch) == 5


def test_real_tokens_accepts_plain_lists():
    assert T.real_tokens({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]}) == 3
    assert T.real_tokens({"input_ids": [[1, 2, 3]]}) == 3


def _result(way, data, tokens, seconds, **kw):
    return T.WayResult(way=way, data=data, real_tokens=tokens, train_seconds=seconds, **kw)


def test_ratios_are_d_over_each_way_per_data_set_median_over_repeats():
    results = [
        _result("A", "chat", 1000, 10.0),  # 100 tok/s
        _result("A", "chat", 1000, 5.0),  # 200 tok/s
        _result("A", "chat", 1000, 20.0),  # 50 tok/s  -> median 100
        _result("C", "chat", 1000, 4.0),  # 250
        _result("D", "chat", 1000, 5.0),  # 200
    ]
    assert T.ratios(results) == {"chat": {"D/A": 2.0, "D/C": 0.8}}


def test_a_failed_way_has_no_speed_and_no_ratio():
    failed = _result("D", "chat", 0, 0.0, error="worker exited 1")
    assert failed.tokens_per_second is None
    ratios = T.ratios([_result("A", "chat", 1000, 10.0), failed])
    assert ratios == {"chat": {"D/A": None}}


def test_percentiles_and_histogram_describe_the_tail():
    lengths = [10] * 90 + [100] * 9 + [2000]
    p = T.percentiles(lengths)
    assert (p["rows"], p["p50"], p["p90"], p["p99"], p["max"]) == (100, 10, 10, 100, 2000)
    hist = T.histogram(lengths)
    assert hist["<=16"] == 90 and hist["65-128"] == 9 and hist[">1024"] == 1
    assert sum(hist.values()) == 100
    assert T.percentiles([]) == {"rows": 0}


def _report():
    results = [
        _result("A", "chat", 1000, 10.0, peak_bytes=2**31, eval_loss=2.5),
        _result("D", "chat", 1000, 5.0, peak_bytes=2**30, eval_loss=2.49),
    ]
    rows = []
    for r in results:
        row = T.asdict(r)
        row["tokens_per_second"] = r.tokens_per_second
        rows.append(row)
    speed = T.ratios(results)
    return {
        "device": "cpu",
        "results": rows,
        "ratios": speed,
        "bars": T.bars(results, speed),
        "load_average": {"before": [1, 2, 3], "after": [2, 2, 2]},
    }


def test_table_shows_each_way_and_the_ratio():
    text = T.format_table(_report())
    assert "A Trainer + peft" in text and "D affiner runner" in text
    assert "100.0" in text and "200.0" in text and "2.00" in text  # tokens/s and peak GiB
    assert "chat: D/A 2.00" in text
    assert "load average [1, 2, 3] before, [2, 2, 2] after" in text


def test_report_survives_json():
    report = _report()
    assert json.loads(json.dumps(report))["ratios"]["chat"]["D/A"] == 2.0


def test_summarize_events_reads_time_tokens_loss_and_peak_from_the_log():
    events = [
        {"type": "run_started", "t": 100.0},
        {"type": "train_log", "t": 110.0, "step": 5, "tokens_per_second": 50.0},
        {"type": "system", "t": 111.0, "process_peak_rss": 3 * 2**30, "torch_peak": 2**30},
        {"type": "system", "t": 112.0, "process_peak_rss": 2**30, "torch_peak": 5 * 2**30},
        {"type": "train_log", "t": 130.0, "step": 10, "tokens_per_second": 70.0},
        {"type": "eval", "t": 140.0, "step": 10, "loss": 2.1},
    ]
    s = T.summarize_events(events)
    assert s == {
        "train_seconds": 30.0,
        "steps": 10,
        "median_tokens_per_second": 60.0,
        "eval_loss": 2.1,
        "peak_rss_bytes": 3 * 2**30,
        "peak_cuda_bytes": 5 * 2**30,
    }


def test_run_toml_states_the_shared_numbers_in_the_runners_words():
    spec = {
        "way": "D",
        "model": "/m",
        "train": "/t.jsonl",
        "eval": "/e.jsonl",
        "seq_len": 128,
        "hyper": T.asdict(T.Hyper()),
    }
    cfg = T.run_toml(spec)
    assert cfg["training"]["micro_batch"] == 8 and cfg["training"]["epochs"] == 1.0
    assert cfg["training"]["precision"] == "fp32" and cfg["training"]["preflight"] is False
    assert cfg["data"]["max_seq_len"] == 128 and cfg["method"]["target_modules"] == "all-linear"
    assert "packing" not in cfg["training"]  # D runs the runner's own defaults


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--rows", "0"], "--rows must be at least 1"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--sets", "chat,poems"], "unknown ['poems']"),
        (["--ways", "AX"], "--ways"),
        (["--model", "/nowhere/at/all"], "no config.json"),
    ],
)
def test_bad_arguments_are_refused_with_their_name(argv, words, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    full = argv if "--model" in argv else [*argv, "--model", str(model)]
    with pytest.raises(T.BenchError, match=words.replace("[", r"\[").replace("]", r"\]")):
        T.parse_args(full)


def test_missing_trl_is_a_clear_error_for_b_and_c_only(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    with pytest.raises(T.BenchError, match=r"pip install -e '\.\[bench\]'"):
        T.require_trl(["A", "B", "D"])
    T.require_trl(["A", "D"])  # no TRL needed


def test_main_says_the_error_in_one_line_and_exits_2(capsys):
    assert T.main(["--rows", "-3"]) == 2
    assert capsys.readouterr().err.startswith("error: --rows must be at least 1")


def test_markdown_page_has_the_table_the_ratios_and_the_notes():
    report = {
        **_report(),
        "when": "2026-12-01T20:00:00Z",
        "machine": {"processor": "x86_64", "cpus": 2},
        "versions": {"torch": "2.13.0"},
        "model": "/m/smollm2",
        "hyper": T.asdict(T.Hyper()),
        "rows": {"chat": 16},
        "eval_rows": 8,
        "data": {"chat": {"seq_len": 128, "truncated": 0, "percentiles": {}, "histogram": {}}},
        "token_mismatch": [],
        "load_average": {"chat": {"before": [5, 5, 5], "after": [4, 4, 4]}},
        "notes": ["two invocations"],
    }
    page = T.markdown(report)
    assert "| chat | A Trainer + peft (docs recipe) | 1000 | 10.0 | 100.0 | 2.00 | 2.5000 |" in page
    assert "- chat: D/A 2.0" in page
    assert "chat: [5, 5, 5] before, [4, 4, 4] after" in page
    assert page.rstrip().endswith("- two invocations")


# ---------------------------------------------------------------- ablations, devices and bars
def test_ratios_cover_the_ablations_e_and_f_in_way_order():
    results = [
        _result("F", "chat", 1000, 8.0),  # 125
        _result("A", "chat", 1000, 10.0),  # 100
        _result("E", "chat", 1000, 4.0),  # 250
        _result("D", "chat", 1000, 2.0),  # 500
        _result("C", "chat", 1000, 5.0),  # 200
    ]
    assert list(T.ratios(results)["chat"].items()) == [
        ("D/A", 5.0),
        ("D/C", 2.5),
        ("D/E", 2.0),
        ("D/F", 4.0),
    ]


def _bar(report_bars, data, name):
    return next(b for b in report_bars if b["data"] == data and b["bar"].startswith(name))


def test_bars_pass_fail_and_not_measured_per_data_set():
    results = [
        _result("A", "chat", 1000, 10.0, eval_loss=2.00),  # 100 tok/s
        _result("C", "chat", 1000, 5.0, eval_loss=2.10),  # 200
        _result("D", "chat", 1000, 6.0, eval_loss=2.03),  # 166.7: D/A 1.67, D/C 0.83
        _result("A", "debates", 1000, 10.0, eval_loss=3.00),
        _result("D", "debates", 1000, 12.5, eval_loss=3.02),  # D/A 0.8, no C
    ]
    out = T.bars(results, T.ratios(results))
    assert len(out) == 6  # three bars per data set
    assert _bar(out, "chat", "D/A")["passed"] is True
    assert _bar(out, "chat", "D/C")["passed"] is False
    chat_loss = _bar(out, "chat", "|loss")
    assert chat_loss["value"] == 0.015 and chat_loss["passed"] is False  # 1.5% over A's
    assert _bar(out, "debates", "D/A")["passed"] is False
    assert _bar(out, "debates", "D/C") == {
        "data": "debates",
        "bar": "D/C >= 1.0",
        "value": None,
        "passed": None,
    }
    assert _bar(out, "debates", "|loss")["passed"] is True  # 0.67%


def test_the_loss_bar_takes_medians_over_repeats_and_ignores_failed_ways():
    results = [
        _result("A", "chat", 1000, 10.0, eval_loss=2.0),
        _result("A", "chat", 1000, 10.0, eval_loss=2.2),
        _result("A", "chat", 1000, 10.0, eval_loss=2.4),  # median 2.2
        _result("D", "chat", 1000, 5.0, eval_loss=2.21),
        _result("D", "chat", 0, 0.0, error="worker exited 1"),
    ]
    loss = _bar(T.bars(results, T.ratios(results)), "chat", "|loss")
    assert loss["value"] == 0.0045 and loss["passed"] is True
    failed = [_result("A", "chat", 1000, 10.0, eval_loss=2.0), _result("D", "chat", 0, 0.0)]
    assert _bar(T.bars(failed, T.ratios(failed)), "chat", "|loss")["passed"] is None


def test_table_and_json_carry_the_bars_and_the_peak_meter():
    report = _report()
    text = T.format_table(report)
    assert "peak GiB (RSS)" in text
    assert "bar chat: D/A >= 1.5: 2.00 pass" in text
    assert "bar chat: D/C >= 1.0: - not measured" in text
    assert "bar chat: |loss D - loss A| / loss A <= 1%: -0.40% pass" in text
    assert json.loads(json.dumps(report))["bars"][0]["passed"] is True
    cuda = T.format_table({**report, "device": "cuda", "notes": ["F ran"]})
    assert "peak GiB (CUDA reserved)" in cuda and "note: F ran" in cuda


def _model_dir(tmp_path):
    model = tmp_path / "m"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    return str(model)


def test_cuda_is_refused_where_torch_sees_no_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(T, "cuda_available", lambda: False)
    with pytest.raises(T.BenchError, match=r"--device cuda: torch sees no CUDA device"):
        T.parse_args(["--device", "cuda", "--model", _model_dir(tmp_path)])
    assert T.main(["--device", "cuda", "--model", _model_dir(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda") and err.count("\n") == 1  # no traceback


def test_default_ways_by_device(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "cuda_available", lambda: True)
    model = _model_dir(tmp_path)
    cpu = T.parse_args(["--model", model])
    assert cpu.ways == list("ABCDE") and cpu.notes == [] and cpu.device == "cpu"
    cuda = T.parse_args(["--model", model, "--device", "cuda"])
    assert cuda.ways == list("ABCDEF") and cuda.notes == []


def test_f_is_skipped_on_the_cpu_with_a_note_not_run(tmp_path):
    args = T.parse_args(["--model", _model_dir(tmp_path), "--ways", "DEF"])
    assert args.ways == ["D", "E"]
    assert len(args.notes) == 1 and args.notes[0].startswith("F (D with loss_kernel")
    with pytest.raises(T.BenchError, match="nothing left to run on cpu"):
        T.parse_args(["--model", _model_dir(tmp_path / "y"), "--ways", "F"])


def test_defaults_train_several_steps_per_way():
    args = T.parse_args(["--model", T.SHAPE_MODEL])  # the shape model needs no folder
    assert (args.rows, args.long_rows, args.micro_batch, args.repeats) == (64, 48, 8, 1)
    assert args.rows // args.micro_batch >= 6 and args.long_rows // args.micro_batch >= 6


def _spec(way, device="cpu"):
    return {
        "way": way,
        "device": device,
        "model": "/m",
        "train": "/t.jsonl",
        "eval": "/e.jsonl",
        "seq_len": 128,
        "hyper": T.asdict(T.Hyper()),
    }


def test_each_runner_way_states_only_its_lever():
    d, e, f = (T.run_toml(_spec(w))["training"] for w in "DEF")
    assert "packing" not in d and "loss_kernel" not in d
    assert e["packing"] is False and "loss_kernel" not in e
    assert f["loss_kernel"] == "torch" and "packing" not in f
    assert {k: v for k, v in e.items() if k != "packing"} == d


def test_on_cuda_the_runner_trains_on_the_gpu_in_bf16():
    training = T.run_toml(_spec("D", "cuda"))["training"]
    assert (training["device"], training["precision"]) == ("cuda", "bf16")
    assert T.base_dtype("cuda") == "bfloat16" and T.base_dtype("cpu") == "float32"
    assert T.peak_label("cuda") == "peak GiB (CUDA reserved)"


def test_runner_notes_say_when_an_ablation_measured_nothing():
    d_padded = _result("D", "chat", 1000, 5.0, settings={"packing": False, "loss_kernel": "torch"})
    d_packed = _result("D", "chat", 1000, 5.0, settings={"packing": True, "loss_kernel": "torch"})
    assert T.runner_notes([d_packed], "cpu") == []
    cpu = T.runner_notes([d_padded], "cpu")
    assert len(cpu) == 1 and "D/E is noise" in cpu[0]
    cuda = T.runner_notes([d_packed, d_packed], "cuda")
    assert len(cuda) == 1 and "D and F trained alike" in cuda[0]


def test_the_workers_keep_the_callers_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/affiner-site")
    assert T._pythonpath().split(":") == [str(ROOT), "/tmp/affiner-site"]
    monkeypatch.delenv("PYTHONPATH")
    assert T._pythonpath() == str(ROOT)


# ---------------------------------------------------------------- the SmolLM2-shaped model
def test_the_shape_config_is_smollm2_135m():
    from affiner.planner.models import spec_from_config
    from bench.shape_model import SMOLLM2_135M

    spec = spec_from_config(SMOLLM2_135M, name="smollm2-shape")
    assert spec.params_total == 134_515_008  # SmolLM2-135M's count, embeddings tied to the head
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads) == (30, 576, 3)
    assert spec.vocab_size == 49152 and spec.tied_embeddings


def test_the_shape_tokenizer_has_the_configs_special_ids_and_a_chat_template(tmp_path):
    from affiner.runner.data import encode_causal
    from bench.shape_model import SMOLLM2_135M, row_texts, train_tokenizer

    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("what is the sun", "a star"), ("who are you", "a bench model")] * 20
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer(tmp_path / "tok", row_texts([data]))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == tuple(
        SMOLLM2_135M[k] for k in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
    )
    assert len(tok) < SMOLLM2_135M["vocab_size"]  # every id fits the head
    enc = encode_causal(rows[0], "chat", tok, 64)
    learned = tok.decode([t for t in enc.labels if t != -100])
    assert learned.startswith("a star") and "what is the sun" not in learned


def test_save_writes_both_pages_whole_and_marks_a_partial_run(tmp_path):
    report = {
        **_report(),
        "partial": True,
        "when": "2026-12-01T20:00:00Z",
        "machine": {"processor": "x86_64", "cpus": 2},
        "versions": {"torch": "2.13.0"},
        "model": "/m/smollm2",
        "hyper": T.asdict(T.Hyper()),
        "rows": {"chat": 64},
        "eval_rows": 16,
        "data": {},
        "token_mismatch": [],
    }
    T.save(report, str(tmp_path / "out" / "throughput_cpu"))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["throughput_cpu.json", "throughput_cpu.md"]  # no .tmp left behind
    assert json.loads((tmp_path / "out" / "throughput_cpu.json").read_text())["partial"] is True
    page = (tmp_path / "out" / "throughput_cpu.md").read_text()
    assert "**Partial**" in page and "| peak GiB (RSS) |" in page
    assert "- chat: D/A >= 1.5: 2.00 pass" in page
