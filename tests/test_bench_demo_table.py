"""bench/demo_time.py writes the README's demo table: held-out before → after, time, machine, load."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_demo_time", ROOT / "bench" / "demo_time.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_demo_time"] = module
    spec.loader.exec_module(module)
    return module


RESULT = {
    "machine": "x86_64, 2 logical cores, Linux",
    "date": "2026-12-01",
    "demos": [
        {"demo": "classify", "metric": "accuracy", "before": {"accuracy": 0.483, "f1": 0.48},
         "after": {"accuracy": 0.8, "f1": 0.79}, "wall_seconds": 400.2, "train_seconds": 350.0,
         "load_before": 0.2, "load_after": 1.1},
        {"demo": "chat", "metric": "loss", "before": {"loss": 3.257}, "after": {"loss": 2.029},
         "wall_seconds": 59.0, "train_seconds": 41.0, "load_before": 0.3, "load_after": 0.9},
        {"demo": "broken", "failed": ["it fell over"]},
    ],
}  # fmt: skip


def test_the_table_says_what_came_out_and_where_it_was_measured() -> None:
    text = _bench().readme_table(RESULT)
    assert "x86_64, 2 logical cores" in text and "load average classify 0.2 → 1.1" in text
    assert "| `classify` | 6 min 40 s (5 min 50 s) | accuracy 0.48 → 0.80, F1 0.48 → 0.79 |" in text
    assert "| `chat` | 59 s (41 s) | loss 3.26 → 2.03 (−38%) |" in text
    assert "broken" not in text  # a demo that failed has no row to show


def test_only_the_block_between_the_markers_is_rewritten(tmp_path: Path) -> None:
    bench = _bench()
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# intro\n{bench.README_BEGIN}\nold table\n{bench.README_END}\nafter\n", "utf-8"
    )
    bench.write_readme(readme, "new table")
    assert readme.read_text("utf-8") == (
        f"# intro\n{bench.README_BEGIN}\nnew table\n{bench.README_END}\nafter\n"
    )
    real = (ROOT / "README.md").read_text("utf-8")
    assert real.count(bench.README_BEGIN) == 1 and real.count(bench.README_END) == 1
