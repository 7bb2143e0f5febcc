"""``affiner export`` from the command line: its errors in words, and the export child it starts
(``python -m affiner.runner.export``) on a full run, with and without llama.cpp's converter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affiner.runner.run import RunDir, RunStatus, write_status
from affiner.tui.cli import main
from tests.train_helpers import make_run

pytestmark = pytest.mark.slow

FAKE_CONVERTER = """\
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path(args[args.index("--outfile") + 1]).write_bytes(b"GGUF fake")
Path(__file__).with_name("calls.json").write_text(json.dumps(args))
"""


def saved_full_run(root: Path, model: Path) -> RunDir:
    """A finished full fine-tune as far as export cares: run.toml and the model in adapter/."""
    rd = make_run(root, model, method="full")
    shutil.copytree(model, rd.adapter)
    write_status(rd.path, RunStatus(run_id=rd.run_id, state="finished", step=30))
    return rd


def test_unknown_and_live_runs_are_refused_in_words(
    runs_dir: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "nosuch"]) == 2
    assert "no run matches 'nosuch'" in capsys.readouterr().err

    rd = make_run(runs_dir, tiny_llama)
    assert main(["export", str(rd.path)]) == 2  # nothing saved yet
    assert "has no adapter or model saved" in capsys.readouterr().err

    # A process whose command line is this run's worker: the run counts as training.
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "affiner.runner.worker", str(rd.path)]
    )
    try:
        write_status(rd.path, RunStatus(run_id=rd.run_id, state="running", pid=worker.pid))
        time.sleep(0.2)
        assert main(["export", rd.run_id]) == 2
        err = capsys.readouterr().err
        assert "still training" in err and f"affiner stop {rd.run_id}" in err
    finally:
        worker.kill()
        worker.wait()


def test_export_writes_and_says_what_is_missing(
    runs_dir: Path,
    tiny_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rd = saved_full_run(runs_dir, tiny_llama)
    llama = tmp_path / "llama.cpp"
    llama.mkdir()
    (llama / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER, encoding="utf-8")

    assert main(["export", rd.run_id, "--ollama", "--llama-cpp", str(llama)]) == 0
    out = capsys.readouterr().out
    export = rd.path / "export"
    assert f"Modelfile  {export / 'Modelfile'}" in out and "(f16)" in out
    assert f"cd {export} && ollama create run -f Modelfile" in out
    assert (export / "model.gguf").read_bytes() == b"GGUF fake"

    assert main(["export", rd.run_id]) == 2
    assert "--force" in capsys.readouterr().err

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["export", rd.run_id, "--gguf", "--force", "--json"]) == 4
    result = json.loads(capsys.readouterr().out)
    assert result["merged"] == str(export / "merged") and result["gguf"] is None
    assert "convert_hf_to_gguf.py was not found" in result["missing"][0]
    assert sorted(p.name for p in export.iterdir()) == ["merged"]
