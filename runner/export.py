"""Export a finished run: merged safetensors, and a GGUF with an Ollama Modelfile when possible.

``python -m affiner.runner.export RUN_DIR [--final] [--gguf] [--ollama] [--quant TYPE]
[--llama-cpp DIR] [--force] [--json]`` (what ``affiner export`` and the runs screen's ``e``
start: this module loads torch, so the TUI runs it as a child). It writes, under
``RUN_DIR/export/``:

* ``merged/``: the base with the adapter folded in (`affiner.runner.training.merge_adapter`,
  the function ``[output].merge`` uses; a QLoRA or 8-bit base is loaded again unquantized
  first), as safetensors with the tokenizer. Full and freeze runs have no adapter: their saved
  model is taken as it is. The weights are the best checkpoint's when the run kept one
  (``checkpoints/best/``), else the final ``adapter/``; ``--final`` always takes ``adapter/``.
* ``model.gguf``: llama.cpp's ``convert_hf_to_gguf.py`` run on ``merged/`` (``--outtype``
  from ``--quant``, default f16), when that script is found: ``--llama-cpp DIR``, then
  ``$LLAMA_CPP_DIR``, then ``PATH``. When it is not, the result says what is missing and how
  to get it. ``--quant`` and ``--ollama`` imply ``--gguf``.
* ``Modelfile``: for Ollama, next to the GGUF (``FROM ./model.gguf``, a ``PARAMETER stop`` for
  the end-of-sequence token, and a ``TEMPLATE`` only when the chat template is one this module
  can write in Ollama's template language faithfully: ChatML, checked by rendering).

A classifier is merged only: llama.cpp and Ollama run text generators, and a sequence
classifier's head has no GGUF form. Everything is written in a temporary folder inside
``export/`` and renamed into place; an existing export is replaced only with ``--force``.
Nothing is appended to ``events.jsonl``: its schema describes training, and an export is not.

Exit codes: 0 everything asked for was written; 2 nothing was written, the reason is the
user's to fix (unknown run, still training, no saved weights, an export already there, not
enough disk space, an unknown --quant); 4 ``merged/`` was written but a GGUF or Modelfile
that was asked for was not (the result's ``missing`` says why: no converter, a classifier, the
converter failed); 1 a crash (its traceback on stderr).

With ``--json`` stdout carries JSON lines only: ``{"type": "progress", "message": ...}`` as
it goes, then one ``{"type": "result", ...}`` (`ExportResult.to_dict`) or ``{"type":
"error", "message": ..., "hint": ..., "where": ...}``. Nothing secret is written: no
environment, no tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from affiner.planner.errors import AffinerError
from affiner.runner.config import RunConfig, load_config
from affiner.runner.export_gguf import (
    CHATML_OLLAMA,  # noqa: F401 (re-exported)
    CONVERTER,  # noqa: F401 (re-exported)
    CONVERTER_MISSING,
    DEFAULT_GGUF_TYPE,
    GGUF_FILE,
    GGUF_TYPES,
    LLAMA_CPP_ENV,
    MERGED,
    GgufType,  # noqa: F401 (re-exported)
    _check_space,
    _write_gguf,
    find_converter,
    modelfile_text,
    ollama_template,  # noqa: F401 (re-exported)
)
from affiner.runner.run import RunDir, summarize
from affiner.runner.run.checkpoints import BEST_INFO, TRAINER_STATE

#: Which weights to export: the best checkpoint (when kept) or the final ``adapter/``.
Which = Literal["best", "final"]

EXPORT_DIR, MODELFILE = "export", "Modelfile"
EXIT_DONE, EXIT_CRASH, EXIT_USER_ERROR, EXIT_PARTIAL = 0, 1, 2, 4
#: Files of a checkpoint that only resuming needs (plus ``rng_state*``), left out of an export.
_NOT_MODEL = {"optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", TRAINER_STATE}
_NOT_MODEL |= {BEST_INFO}

CLASSIFIER_NO_GGUF = (
    "GGUF/Ollama: this run trained a classifier (a class head, no vocabulary head); llama.cpp "
    "and Ollama run text generators and have no form for it, so only merged/ was written. "
    "Load it with transformers' AutoModelForSequenceClassification."
)


@dataclass
class ExportResult:
    """What an export wrote, from which weights, and what it could not write and why.

    Attributes:
        run_dir: the run folder.
        source: the folder the weights came from; which: ``best`` or ``final``.
        step: the best checkpoint's step (None for the final weights).
        merged, gguf, modelfile: what was written (None: not written).
        notes: what the user should know (a fallback taken, a TEMPLATE left out).
        missing: what was asked for and not written, each with the reason and the remedy.
        next_steps: commands to run next.
    """

    run_dir: Path
    source: Path
    which: Which
    step: int | None = None
    merged: Path | None = None
    gguf: Path | None = None
    gguf_type: str | None = None
    modelfile: Path | None = None
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.missing else EXIT_DONE

    def to_dict(self) -> dict[str, Any]:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        data["exit_code"] = self.exit_code
        return data


def export_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where a run's exports go: ``RUN_DIR/export``."""
    return Path(run_dir) / EXPORT_DIR


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    what: Which = "best",
    gguf: bool = False,
    ollama: bool = False,
    quant: str | None = None,
    llama_cpp: str | os.PathLike[str] | None = None,
    force: bool = False,
    device: str = "auto",
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the run in `run_dir` (see the module docstring); returns what was written.

    Raises:
        AffinerError: nothing can be exported (the run is unknown or live, it saved no weights,
            an export exists and `force` is off, an unknown `quant`, too little disk space).
    """
    say = on_progress or (lambda _message: None)
    rd = RunDir(Path(run_dir).resolve())
    if not rd.config.exists():
        raise AffinerError(f"{rd.path} is not a run folder (it has no run.toml)")
    if summarize(rd).live:
        raise AffinerError(
            f"run {rd.run_id} is still training: its weights are still changing",
            hint=f"wait for it to finish, or `affiner stop {rd.run_id}`, then export",
        )
    cfg = load_config(rd.config)
    gguf = gguf or ollama or quant is not None
    gguf_type = (quant or DEFAULT_GGUF_TYPE).lower()
    if gguf and gguf_type not in GGUF_TYPES:
        raise AffinerError(
            f"{quant!r} is not a type llama.cpp's converter writes",
            hint=f"use one of {', '.join(GGUF_TYPES)}; for k-quants such as Q4_K_M, export "
            "f16 and run llama.cpp's `llama-quantize model.gguf model-q4_k_m.gguf Q4_K_M`",
            where="--quant",
        )
    source, which, step, notes = choose_weights(rd, what)
    result = ExportResult(rd.path, source, which, step, notes=notes)
    out = export_dir(rd.path)
    existing = [out / name for name in (MERGED, GGUF_FILE, MODELFILE) if (out / name).exists()]
    if existing and not force:
        raise AffinerError(
            f"run {rd.run_id} already has an export ({', '.join(p.name for p in existing)} in "
            f"{out})",
            hint=f"pass --force to replace it: `affiner export {rd.run_id} --force`",
        )
    if gguf and cfg.model.task == "classification":
        result.missing.append(CLASSIFIER_NO_GGUF)
        gguf = ollama = False
    converter = find_converter(llama_cpp) if gguf else None
    if gguf and converter is None:
        result.missing.append(CONVERTER_MISSING)

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        params = _write_merged(cfg, rd, source, tmp / MERGED, device, say)
        made = [MERGED]
        if converter is not None:
            failure = _write_gguf(converter, tmp, gguf_type, params, say)
            if failure:
                result.missing.append(failure)
            else:
                made.append(GGUF_FILE)
                result.gguf_type = gguf_type
                if ollama:
                    tokenizer = _load_tokenizer(cfg, [tmp / MERGED])
                    text, note = modelfile_text(tokenizer, rd.run_id)
                    (tmp / MODELFILE).write_text(text, encoding="utf-8")
                    made.append(MODELFILE)
                    if note:
                        result.notes.append(note)
        say("installing the export")
        _install(tmp, out, made)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.merged = out / MERGED
    result.gguf = out / GGUF_FILE if GGUF_FILE in made else None
    result.modelfile = out / MODELFILE if MODELFILE in made else None
    result.next_steps = _next_steps(result, rd, cfg.model.task, asked_gguf=gguf)
    return result


def choose_weights(rd: RunDir, what: Which) -> tuple[Path, Which, int | None, list[str]]:
    """The folder to export: ``best/`` when kept (unless `what` is ``final``), else ``adapter/``.

    Returns (folder, which, best step or None, notes).

    Raises:
        AffinerError: the run has saved no weights there.
    """
    notes: list[str] = []
    if what == "best":
        if _has_weights(rd.best) and (rd.best / BEST_INFO).exists():
            try:
                step = int(json.loads((rd.best / BEST_INFO).read_text(encoding="utf-8"))["step"])
            except (OSError, ValueError, KeyError, TypeError):
                step = None
            return rd.best, "best", step, notes
        notes.append("The run kept no best checkpoint (no evaluation ran): exported adapter/.")
    if _has_weights(rd.adapter):
        return rd.adapter, "final", None, notes
    hint = (
        "export the best checkpoint instead (leave out --final)"
        if what == "final" and _has_weights(rd.best)
        else f"let the run finish (or `affiner train --resume {rd.run_id}`), then export"
    )
    raise AffinerError(f"run {rd.run_id} has no adapter or model saved in {rd.adapter}", hint=hint)


def _has_weights(folder: Path) -> bool:
    return (folder / "adapter_config.json").exists() or (folder / "config.json").exists()


def _write_merged(
    cfg: RunConfig, rd: RunDir, source: Path, target: Path, device: str, say: Callable[[str], None]
) -> int:
    """Write the merged model (or the whole model, as saved) to `target`; returns its
    parameter count. A whole model is copied file by file: no tokenizer or weights loaded."""
    if not (source / "adapter_config.json").exists():
        say(f"copying the saved model from {source}")
        files = [f for f in source.iterdir() if f.is_file() and _is_model_file(f.name)]
        _check_space(target.parent, sum(f.stat().st_size for f in files), "merged/")
        target.mkdir()
        for file in files:
            shutil.copy2(file, target / file.name)
        if not (target / "tokenizer_config.json").exists():
            _load_tokenizer(cfg, [rd.adapter]).save_pretrained(str(target))
        return _count_params(target)

    from affiner.runner.training import (
        merge_adapter,
        resolve_device,
        resolve_precision,
        save_merged,
    )

    device = resolve_device(device)
    precision = resolve_precision(cfg.training.precision, device)
    labels = _labels(cfg) if cfg.model.task == "classification" else []
    tokenizer = _load_tokenizer(cfg, [source, rd.adapter])
    say(f"merging the adapter in {source} into {cfg.model.name_or_path} ({precision.name})")
    model = merge_adapter(cfg, source, tokenizer, device=device, precision=precision, labels=labels)
    params = sum(p.numel() for p in model.parameters())
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    _check_space(target.parent, need, "merged/")
    say("saving merged/ (safetensors)")
    save_merged(model, tokenizer, target)
    return params


def _load_tokenizer(cfg: RunConfig, folders: list[Path]) -> Any:
    """The tokenizer saved in the first of `folders` that has one, else the base model's."""
    found = next((f for f in folders if (f / "tokenizer_config.json").exists()), None)
    if found is None:
        from affiner.runner.training import load_tokenizer

        return load_tokenizer(cfg)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(found), trust_remote_code=bool(cfg.model.trust_remote_code)
    )


def _is_model_file(name: str) -> bool:
    return name not in _NOT_MODEL and not name.startswith("rng_state")


def _labels(cfg: RunConfig) -> list[str]:
    """A classifier's class names: ``[data].labels``, else as training found them in the data."""
    if cfg.data.labels:
        return list(cfg.data.labels)
    from affiner.runner.data import load_rows

    return list(load_rows(cfg.data, task=cfg.model.task).labels)


def _count_params(folder: Path) -> int:
    """Parameters in a folder's safetensors, read from their headers (no weights loaded)."""
    total = 0
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info.get("shape", []):
                    count *= int(dim)
                total += count
    return total


def _install(tmp: Path, out: Path, made: list[str]) -> None:
    """Rename what `tmp` holds into `out`; a previous export's files go, so none is left stale."""
    for name in (MERGED, GGUF_FILE, MODELFILE):
        old = out / name
        if old.exists():
            os.replace(old, tmp / f".old-{name}")
    for name in made:
        os.replace(tmp / name, out / name)


def _next_steps(result: ExportResult, rd: RunDir, task: str, *, asked_gguf: bool) -> list[str]:
    steps = []
    kind = (
        "AutoModelForSequenceClassification" if task == "classification" else "AutoModelForCausalLM"
    )
    steps.append(f"load it: transformers.{kind}.from_pretrained({str(result.merged)!r})")
    if result.modelfile is not None:
        name = re.sub(r"[^a-z0-9._-]+", "-", rd.run_id.lower()).strip("-") or "affiner"
        steps.append(f"cd {result.modelfile.parent} && ollama create {name} -f {MODELFILE}")
    elif result.gguf is not None:
        steps.append(f"run it: llama-cli -m {result.gguf}")
    elif not asked_gguf and task != "classification":
        steps.append(f"for llama.cpp and Ollama: affiner export {rd.run_id} --ollama --force")
    return steps


# ---------------------------------------------------------------------------- the child
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m affiner.runner.export",
        description="Merge a run's adapter into safetensors; optionally a GGUF and a Modelfile.",
    )
    parser.add_argument("run_dir", help="the run folder")
    parser.add_argument("--final", action="store_true", help="the final adapter/, not the best")
    parser.add_argument("--gguf", action="store_true", help="also write model.gguf (llama.cpp)")
    parser.add_argument(
        "--ollama", action="store_true", help="also write a Modelfile (implies --gguf)"
    )
    parser.add_argument("--quant", metavar="TYPE", help=f"GGUF type: {', '.join(GGUF_TYPES)}")
    parser.add_argument(
        "--llama-cpp", metavar="DIR", help=f"llama.cpp's folder (else ${LLAMA_CPP_ENV})"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing export")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: IO[str] = sys.stdout
    if args.json:  # only the protocol reaches stdout; a library's print goes to stderr
        out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(kind: str, **fields: Any) -> None:
        if args.json:
            out.write(json.dumps({"type": kind, **fields}, ensure_ascii=False) + "\n")
            out.flush()
        elif kind == "progress":
            print(fields["message"], file=sys.stderr, flush=True)

    try:
        result = export_run(
            args.run_dir,
            what="final" if args.final else "best",
            gguf=args.gguf,
            ollama=args.ollama,
            quant=args.quant,
            llama_cpp=args.llama_cpp,
            force=args.force,
            device=args.device,
            on_progress=lambda message: send("progress", message=message),
        )
    except AffinerError as exc:
        if not args.json:
            print(f"affiner export: {exc}", file=sys.stderr)
        send("error", message=exc.message, hint=exc.hint, where=exc.where)
        return EXIT_USER_ERROR
    except Exception as exc:
        traceback.print_exc()
        if not args.json:
            print(f"affiner export: crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
        send("error", message=f"the export crashed: {type(exc).__name__}: {exc}", hint=None)
        return EXIT_CRASH
    if args.json:
        send("result", **result.to_dict())
    else:
        print(json.dumps(result.to_dict(), indent=2))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
