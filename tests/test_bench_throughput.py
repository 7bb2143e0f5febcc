"""bench/throughput.py's pure parts: counting real tokens, the ratios, the table and JSON, and
the arguments it refuses. Nothing here trains or imports torch's training stack."""

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
        _result("A", "chat", 1000, 10.0, peak_rss_bytes=2**31, eval_loss=2.5),
        _result("D", "chat", 1000, 5.0, peak_rss_bytes=2**30, eval_loss=2.49),
    ]
    rows = []
    for r in results:
        row = T.asdict(r)
        row["tokens_per_second"] = r.tokens_per_second
        rows.append(row)
    return {
        "results": rows,
        "ratios": T.ratios(results),
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
        {"type": "system", "t": 111.0, "process_peak_rss": 3 * 2**30},
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
    }


def test_run_toml_states_the_shared_numbers_in_the_runners_words():
    spec = {
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
