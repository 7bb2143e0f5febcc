"""`export_run` on real tiny runs: merged weights equal base + adapter, the GGUF through a fake
llama.cpp converter, what is said when the converter is missing, classifiers, --force.

Each run trains 2 steps once for the module (an evaluation and a checkpoint every step, so
``checkpoints/best/`` exists); every test exports a copy of it.
"""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.runner.export import (
    CHATML_OLLAMA,
    EXIT_DONE,
    EXIT_PARTIAL,
    LLAMA_CPP_ENV,
    export_run,
    ollama_template,
)
from affiner.runner.run import RunDir
from affiner.runner.train import EXIT_FINISHED, run_training
from tests.train_helpers import make_run

pytestmark = pytest.mark.slow

TWO_STEPS = {
    "training": {"max_steps": 2},
    "eval": {"every_steps": 1},
    "checkpoint": {"every_steps": 1},
}

#: A stand-in for llama.cpp's converter: writes the out file and records its arguments.
FAKE_CONVERTER = """\
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path(args[args.index("--outfile") + 1]).write_bytes(b"GGUF fake")
Path(__file__).with_name("calls.json").write_text(json.dumps(args))
"""


def _trained(tmp: Path, model: Path, **kwargs: object) -> RunDir:
    rd = make_run(tmp, model, sections=TWO_STEPS, **kwargs)  # type: ignore[arg-type]
    assert run_training(rd.path) == EXIT_FINISHED
    return rd


@pytest.fixture(scope="module")
def trained_lora(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    return _trained(tmp_path_factory.mktemp("lora"), tiny_llama)


@pytest.fixture
def lora_run(trained_lora: RunDir, tmp_path: Path) -> RunDir:
    return RunDir(Path(shutil.copytree(trained_lora.path, tmp_path / "run")))


@pytest.fixture
def no_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither $LLAMA_CPP_DIR nor PATH has llama.cpp's converter."""
    monkeypatch.delenv(LLAMA_CPP_ENV, raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_llama_cpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "llama.cpp"
    folder.mkdir()
    (folder / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER, encoding="utf-8")
    monkeypatch.setenv(LLAMA_CPP_ENV, str(folder))
    return folder


def test_merged_weights_equal_base_plus_adapter(lora_run: RunDir, tiny_llama: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(lora_run.path)

    assert result.exit_code == EXIT_DONE and not result.missing
    assert result.which == "best" and result.step == 2 and result.source == lora_run.best
    merged = lora_run.path / "export" / "merged"
    assert result.merged == merged and (merged / "model.safetensors").exists()
    assert not (merged / "adapter_config.json").exists()
    assert [p.name for p in (lora_run.path / "export").iterdir()] == ["merged"]  # no temp left
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = torch.tensor([tokenizer("the cat sat on a mat")["input_ids"]])
    exported = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(lora_run.best)).eval()
    with torch.no_grad():
        want, got = tuned(ids).logits, exported(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change something
    assert any("--ollama" in step for step in result.next_steps)


def test_without_the_converter_the_gguf_request_says_what_is_missing(
    lora_run: RunDir, no_converter: None
) -> None:
    result = export_run(lora_run.path, what="final", ollama=True)

    assert result.exit_code == EXIT_PARTIAL
    assert result.which == "final" and result.source == lora_run.adapter
    assert result.merged is not None and result.merged.is_dir()
    assert result.gguf is None and result.modelfile is None
    (gap,) = result.missing
    assert "convert_hf_to_gguf.py was not found" in gap
    assert "git clone https://github.com/ggml-org/llama.cpp" in gap and LLAMA_CPP_ENV in gap


def test_a_converter_on_llama_cpp_dir_writes_the_gguf_and_a_modelfile(
    lora_run: RunDir, fake_llama_cpp: Path
) -> None:
    result = export_run(lora_run.path, ollama=True, quant="q8_0")

    assert result.exit_code == EXIT_DONE, result.missing
    out = lora_run.path / "export"
    assert result.gguf == out / "model.gguf" and result.gguf.read_bytes() == b"GGUF fake"
    args = json.loads((fake_llama_cpp / "calls.json").read_text())
    assert Path(args[0]).name == "merged" and args[1:] == [
        "--outfile",
        str(Path(args[0]).parent / "model.gguf"),
        "--outtype",
        "q8_0",
    ]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in modelfile
    assert f'TEMPLATE """{CHATML_OLLAMA}"""' in modelfile  # the tiny tokenizer speaks ChatML
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert any("ollama create" in step and "-f Modelfile" in step for step in result.next_steps)


def test_a_template_that_is_not_plain_chatml_is_left_out(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert ollama_template(tokenizer)[0] == CHATML_OLLAMA
    # ChatML with a default system prompt renders differently: not taken for ChatML
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe nice<|im_end|>\n{% endif %}"
        + tokenizer.chat_template
    )
    template, note = ollama_template(tokenizer)
    assert template is None and "no TEMPLATE" in note
    tokenizer.chat_template = None
    assert ollama_template(tokenizer)[0] is None


def test_an_export_is_replaced_only_with_force(lora_run: RunDir, fake_llama_cpp: Path) -> None:
    export_run(lora_run.path, gguf=True)
    out = lora_run.path / "export"
    assert (out / "model.gguf").exists()
    with pytest.raises(AffinerError, match="already has an export") as caught:
        export_run(lora_run.path)
    assert "--force" in (caught.value.hint or "")

    result = export_run(lora_run.path, force=True)  # merge only: the old GGUF must not stay
    assert result.gguf is None and sorted(p.name for p in out.iterdir()) == ["merged"]


def test_too_little_disk_space_is_said_and_leaves_nothing(
    lora_run: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        "affiner.runner.export.shutil.disk_usage", lambda _path: usage(1000, 1000, 1000)
    )
    with pytest.raises(AffinerError, match="not enough disk space for merged/"):
        export_run(lora_run.path)
    assert list((lora_run.path / "export").iterdir()) == []


def test_a_run_without_saved_weights_says_so(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(tmp_path, tiny_llama)
    with pytest.raises(AffinerError, match="has no adapter or model saved"):
        export_run(rd.path)


def test_a_classifier_is_merged_without_a_gguf(
    tiny_llama: Path, tmp_path: Path, fake_llama_cpp: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    rd = _trained(tmp_path, tiny_llama, task="classification")
    result = export_run(rd.path, ollama=True)

    assert result.exit_code == EXIT_PARTIAL and result.gguf is None and result.modelfile is None
    assert "classifier" in result.missing[0] and "no form for it" in result.missing[0]
    assert not (fake_llama_cpp / "calls.json").exists()  # the converter never ran
    model = AutoModelForSequenceClassification.from_pretrained(result.merged)
    assert model.config.num_labels == 2 and set(model.config.label2id) == {"good", "bad"}


def test_a_full_run_is_exported_as_saved(tiny_llama: Path, tmp_path: Path) -> None:
    rd = _trained(tmp_path, tiny_llama, method="full")
    result = export_run(rd.path)

    merged = result.merged
    assert result.source == rd.best and merged is not None
    assert (merged / "model.safetensors").read_bytes() == (
        rd.best / "model.safetensors"
    ).read_bytes()
    names = {p.name for p in merged.iterdir()}
    assert "tokenizer_config.json" in names and "config.json" in names
    assert not names & {"optimizer.pt", "trainer_state.json", "affiner_best.json"}


def test_a_qlora_run_is_merged_into_an_unquantized_base(tiny_llama: Path, tmp_path: Path) -> None:
    """The 4-bit base cannot hold merged weights: the export loads it again unquantized."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rd = _trained(tmp_path, tiny_llama, method="qlora", output={"merge": True})
    result = export_run(rd.path)

    exported = AutoModelForCausalLM.from_pretrained(result.merged, dtype=torch.float32).eval()
    assert not any("lora" in n or "absmax" in n for n, _ in exported.state_dict().items())
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(rd.best)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, tuned(ids).logits, atol=1e-5)
    assert (rd.merged / "model.safetensors").exists()  # [output].merge took the same path
