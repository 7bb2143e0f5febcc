"""Token-length statistics on known lengths, and the data modules' import cost."""

from __future__ import annotations

import json
import subprocess
import sys

from affiner.runner.data.stats import histogram, percentile, token_stats


def test_stats_on_known_lengths() -> None:
    lengths = list(range(1, 101))  # 1..100
    stats = token_stats(lengths, max_seq_len=90)
    assert (stats.count, stats.total, stats.min, stats.max) == (100, 5050, 1, 100)
    assert stats.mean == 50.5 and stats.p50 == 50 and stats.p95 == 95
    assert stats.truncated == 10 and stats.truncated_fraction == 0.1
    assert [b[2] for b in stats.histogram] == [10] * 10
    assert stats.histogram[0] == (1, 11, 10) and stats.histogram[-1] == (91, 101, 10)
    assert stats.to_json()["histogram"][0] == [1, 11, 10]


def test_percentiles_are_observed_values() -> None:
    assert percentile([3, 7, 200], 50) == 7 and percentile([3, 7, 200], 95) == 200
    assert percentile([], 50) == 0


def test_histogram_edges_cover_every_value() -> None:
    bins = histogram([5, 5, 5, 6, 40], bins=4)
    assert sum(n for _, _, n in bins) == 5
    assert bins[0][0] == 5 and bins[-1][1] == 41
    assert histogram([7, 7]) == [(7, 8, 2)]


def test_empty_split_has_zero_stats() -> None:
    stats = token_stats([], max_seq_len=512)
    assert stats.count == 0 and stats.histogram == [] and stats.max_seq_len == 512


def test_data_and_config_modules_import_without_heavy_libraries() -> None:
    code = "import sys, json, affiner.runner.data.prepare, affiner.runner.config.io; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    heavy = {"torch", "transformers", "datasets", "bitsandbytes", "pyarrow", "textual"}
    assert not heavy & loaded
