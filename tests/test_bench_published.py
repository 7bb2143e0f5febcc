"""The published-peaks data file is sound and the bench's arithmetic is right (no GPU, no network)."""

from __future__ import annotations

import json

import pytest

from bench import memory_published as mp


@pytest.fixture(scope="module")
def data() -> dict:
    return mp.load()


def test_data_file_parses_and_every_point_is_complete(data):
    assert mp.problems(data) == []
    assert len(data["points"]) >= 30
    for p in data["points"]:
        for key in mp.REQUIRED:
            assert key in p, (p["id"], key)
        assert p["source"]["name"] and p["source"]["url"].startswith("https://")
        assert p["source"]["section"]
        assert p["confidence"] in mp.CONFIDENCE


def test_every_model_has_a_config_with_its_shape(data):
    for model_id in {p["model"] for p in data["points"]}:
        config = data["configs"][model_id]
        for key in ("model_type", "hidden_size", "vocab_size"):
            assert key in config, (model_id, key)
        assert {"num_hidden_layers", "n_layer"} & set(config), model_id  # BLOOM says n_layer


def test_problems_names_a_missing_citation_and_field(data):
    bad = json.loads(json.dumps(data))
    bad["points"][0]["source"] = {"name": "", "url": "", "section": ""}
    del bad["points"][1]["seq_len"]
    found = mp.problems(bad)
    assert any("citation" in f for f in found)
    assert any("no seq_len" in f for f in found)


def _fake(pid: str, gb: float | None) -> dict:
    measured = (
        {"outcome": "oom"}
        if gb is None
        else {"outcome": "ran", "basis": "max_memory_allocated", "value": gb, "unit": "GB"}
    )
    return {"id": pid, "measured": measured}


def test_error_median_and_worst_on_a_two_point_fake():
    a, b, c = _fake("a", 10.0), _fake("b", 20.0), _fake("c", None)
    assert mp.measured_bytes(a) == 10 * 10**9
    rows = []
    for point, pred, fits in ((a, 11 * 10**9, True), (b, 15 * 10**9, True), (c, 30 * 10**9, False)):
        ans = {"bytes": pred, "fits": fits}
        rows.append({"id": point["id"], "est": mp._score(point, ans)})
    assert rows[0]["est"]["error"] == pytest.approx(0.10)
    assert rows[1]["est"]["error"] == pytest.approx(-0.25)
    assert rows[2]["est"]["error"] is None
    s = mp.summarize(rows, "est")
    assert s["points"] == 2
    assert s["median_abs_error"] == pytest.approx(0.175)
    assert s["worst_abs_error"] == pytest.approx(0.25)
    assert s["worst_point"] == "b"
    assert s["under"] == 1
    assert (s["oom_points"], s["oom_called_right"]) == (1, 1)


def test_an_oom_point_called_fits_is_wrong():
    assert mp.oom_call(_fake("x", None), True) == "wrong"
    assert mp.oom_call(_fake("x", None), False) == "right"
    assert mp.oom_call(_fake("x", 5.0), False) is None


def test_mib_and_gb_units():
    p = {"measured": {"outcome": "ran", "basis": "nvidia-smi", "value": 14949, "unit": "MiB"}}
    assert mp.measured_bytes(p) == 14949 * 2**20


def test_the_cli_is_told_every_stated_setting(data, tmp_path):
    p = next(x for x in data["points"] if x["id"] == "litgpt/llama-2-7b/qlora")
    args, notes = mp.affiner_args(p, tmp_path)
    joined = " ".join(args)
    for flag in (
        "--targets q_proj,v_proj",
        "--lora-rank 32",
        "--quantization nf4",
        "--no-double-quant",
        "--precision bf16-pure",
        "--gradient-checkpointing off",
        "--micro-batch 2",
        "--seq-len 512",
        "--optimizer adamw",
        "--gpu A10G",
    ):
        assert flag in joined, flag
    assert notes == []


def test_hf_cache_layout(data, tmp_path):
    mp.build_hf_cache({"org/name": {"model_type": "llama"}}, tmp_path)
    repo = tmp_path / "hub" / "models--org--name"
    rev = (repo / "refs" / "main").read_text()
    assert json.loads((repo / "snapshots" / rev / "config.json").read_text()) == {
        "model_type": "llama"
    }


def test_a_sources_own_empty_process_reading_stands_for_the_cuda_context(data, monkeypatch):
    point = next(x for x in data["points"] if x["id"] == "hf-docs/bert-large/full/bs4")
    assert mp.source_context_bytes(point) == 1343 * 2**20
    args, _ = mp.affiner_args(point, mp.DATA.parent)
    assert "--task classification" in " ".join(args)
    plan = {
        "candidates": [
            {
                "method": "full",
                "peak_bytes": 13,
                "reserved_bytes": 10,
                "allocated_bytes": 9,
                "fits": True,
                "micro_batch": 4,
            }
        ]
    }

    class Done:
        returncode, stderr, stdout = 0, "", json.dumps(plan)

    monkeypatch.setattr(mp.subprocess, "run", lambda *a, **k: Done())
    answer = mp.ask_affiner(point, mp.DATA.parent)
    assert answer["bytes"] == 10 + 1343 * 2**20  # reserved + the source's context, not peak
    assert answer["basis"] == "reserved_bytes+source_context"
    assert "empty-process reading" in answer["notes"][-1]


def test_out_of_scope_points_say_why_and_stay_out_of_the_in_scope_summary(data):
    out = [p for p in data["points"] if not mp.in_scope(p)]
    assert out and all(len(p["out_of_scope"]) > 40 for p in out)
    assert all(p["id"].startswith("litgpt/") for p in out if "litgpt" in p["framework"])
    rows = [
        {"id": "in", "out_of_scope": None, "confidence": "high", "est": {"error": 0.1}},
        {
            "id": "out",
            "out_of_scope": "own model code",
            "confidence": "high",
            "est": {"error": 0.9},
        },
    ]
    sums = mp.summaries(rows, ["est"])  # the bench's own scoping, as its run() uses it
    assert sums["summary"]["est"]["median_abs_error"] == pytest.approx(0.5)
    for key in ("summary_in_scope", "summary_in_scope_without_low_confidence"):
        assert sums[key]["est"]["median_abs_error"] == pytest.approx(0.1), key
    assert sums["summary_in_scope_common_points"]["est"]["points"] == 1
    text = mp.table(
        {
            **sums,
            "rows": [
                r | {"measured_outcome": "ran", "measured_bytes": 10**9, "basis": None}
                for r in rows
            ],
            "peers_absent": None,
        }
    )
    assert "- own model code (1: out)" in text and "| out | out | high |" in text
