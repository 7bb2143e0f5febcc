"""The llama.cpp and Ollama half of an export: the GGUF types, finding and running llama.cpp's
converter, and the Ollama Modelfile (with its chat TEMPLATE when one can be written faithfully).

It exists because `affiner.runner.export` grew past the house's 500 lines; the export module
keeps the merge, the run folder's rules and the child's command line, and imports this one
(never the other way). The disk-space check lives here because the GGUF writer needs it too;
`affiner.runner.export` re-exports the public names, so importing them from there still works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_bytes

#: What llama.cpp's ``convert_hf_to_gguf.py --outtype`` accepts.
GgufType = Literal["f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0", "auto"]
GGUF_TYPES: tuple[str, ...] = get_args(GgufType)
DEFAULT_GGUF_TYPE: GgufType = "f16"
#: Bytes a parameter takes in the GGUF, per outtype (q8_0: 34 bytes a block of 32).
_GGUF_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "tq1_0": 0.25}
_GGUF_BYTES |= {"tq2_0": 0.3, "auto": 2.0}

MERGED, GGUF_FILE = "merged", "model.gguf"
CONVERTER = "convert_hf_to_gguf.py"
LLAMA_CPP_ENV = "LLAMA_CPP_DIR"
#: Free space kept on top of what an export needs.
_SPACE_MARGIN = 64 * 1024**2

CONVERTER_MISSING = (
    f"GGUF: llama.cpp's {CONVERTER} was not found (looked in --llama-cpp, ${LLAMA_CPP_ENV} "
    "and PATH), so no model.gguf or Modelfile was written. To get it: "
    "`git clone https://github.com/ggml-org/llama.cpp`, "
    "`pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt`, then "
    f"`export {LLAMA_CPP_ENV}=$PWD/llama.cpp` (or pass --llama-cpp DIR) and export again "
    "with --force."
)


def find_converter(llama_cpp: str | os.PathLike[str] | None = None) -> Path | None:
    """llama.cpp's ``convert_hf_to_gguf.py``: in `llama_cpp`, else ``$LLAMA_CPP_DIR``, else PATH."""
    for folder in (llama_cpp, os.environ.get(LLAMA_CPP_ENV)):
        if folder:
            script = Path(folder).expanduser() / CONVERTER
            if script.is_file():
                return script.resolve()
    for name in (CONVERTER, CONVERTER.removesuffix(".py")):
        found = shutil.which(name)
        if found:
            return Path(found).resolve()
    return None


def _check_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need + _SPACE_MARGIN:
        raise AffinerError(
            f"not enough disk space for {what}: it needs about {format_bytes(need)} and "
            f"{folder} has {format_bytes(free)} free",
            hint="free some space on that disk, then export again",
            where=str(folder),
        )


def _write_gguf(
    converter: Path, tmp: Path, gguf_type: str, params: int, say: Callable[[str], None]
) -> str | None:
    """Run llama.cpp's converter on ``tmp/merged``; returns None, or why no GGUF was written."""
    need = int(params * _GGUF_BYTES.get(gguf_type, 4.0))
    _check_space(tmp, need, GGUF_FILE)
    out = tmp / GGUF_FILE
    python = [sys.executable] if converter.suffix == ".py" else []
    argv = [*python, str(converter), str(tmp / MERGED), "--outfile", str(out)]
    argv += ["--outtype", gguf_type]
    say(f"writing {GGUF_FILE} ({gguf_type}) with {converter}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"GGUF: {converter} could not be started ({exc}); no model.gguf was written."
    if done.returncode != 0 or not out.is_file():
        tail = " | ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])
        return (
            f"GGUF: {converter} failed (exit code {done.returncode}): {tail or 'no output'}. "
            "merged/ was written; fix the converter's environment (its requirements file) "
            "and export again with --force."
        )
    return None


#: The one chat template written in Ollama's language: ChatML, message by message.
CHATML_OLLAMA = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
_PROBES = (
    [
        {"role": "system", "content": "S1"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ],
    [{"role": "user", "content": "U1"}],
)


def _chatml(messages: list[dict[str, str]]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def ollama_template(tokenizer: Any) -> tuple[str | None, str]:
    """The tokenizer's chat template in Ollama's language, when it can be written faithfully.

    The template is rendered for a few conversations and compared with what ChatML gives, so
    a template that adds a default system prompt, a BOS token or anything else is not taken
    for ChatML. Returns (template or None, a note saying why it was left out).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None, "The tokenizer has no chat template: the Modelfile has no TEMPLATE."
    try:
        same = all(
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            == _chatml(m)
            for m in _PROBES
        )
    except Exception:  # a template may raise on a system turn, or on anything
        same = False
    if same:
        return CHATML_OLLAMA, ""
    return None, (
        "The chat template is not ChatML, the one form affiner writes in Ollama's template "
        "language faithfully, so the Modelfile has no TEMPLATE: Ollama falls back to what it "
        "reads from the GGUF. Check it with `ollama show NAME --template`."
    )


def modelfile_text(tokenizer: Any, run_id: str) -> tuple[str, str]:
    """The Modelfile next to ``model.gguf``; returns (text, a note about TEMPLATE or "")."""
    template, note = ollama_template(tokenizer)
    lines = [f"# Written by affiner export from run {run_id}.", f"FROM ./{GGUF_FILE}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    stops = [tokenizer.eos_token] + (["<|im_end|>"] if template else [])
    for stop in dict.fromkeys(s for s in stops if s and '"' not in s):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n", note
