"""``affiner export RUN``: merged safetensors, and a GGUF with an Ollama Modelfile, from a run.

The export loads torch and the model, so it runs in a child process, ``python -m
affiner.runner.export RUN_DIR --json`` (that module documents what it writes and its exit
codes), and this module reads its JSON lines: `run_export_child` is what the command and the
runs screen's ``e`` both call. Errors that need no model (an unknown run, a run still
training) are caught here before anything starts.

Exit codes are the child's: 0 all asked for was written, 2 nothing was (the message says
why), 4 ``merged/`` was written but a GGUF or Modelfile asked for was not (no llama.cpp
converter, a classifier, the converter failed: the message says what is missing and how to
get it), 1 a crash (the child's log is named).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.run import child_env, resolve_run, summarize

#: The module the export child runs (`affiner.runner.export`).
EXPORT_MODULE = "affiner.runner.export"
EXIT_CRASH, EXIT_USER_ERROR, EXIT_PARTIAL = 1, 2, 4


def register(subparsers: Any) -> None:
    """Add ``export`` to the ``affiner`` parser."""
    export = subparsers.add_parser(
        "export",
        help="merge a run's adapter into safetensors; --gguf/--ollama for llama.cpp and Ollama",
        description=(
            "Write RUN/export/merged/ (the base with the adapter folded in, or a full run's "
            "model, as safetensors with the tokenizer), from the best checkpoint when the run "
            "kept one. With --gguf (or --ollama, or --quant) also RUN/export/model.gguf through "
            "llama.cpp's convert_hf_to_gguf.py (--llama-cpp DIR, $LLAMA_CPP_DIR or PATH); with "
            "--ollama an Ollama Modelfile beside it. Exit code 4: merged/ was written but a "
            "GGUF or Modelfile asked for was not (the message says what is missing)."
        ),
    )
    export.add_argument("run", metavar="RUN", help="run id, unique part of one, or its folder")
    export.add_argument(
        "--final", action="store_true", help="export the final adapter/, not the best checkpoint"
    )
    export.add_argument("--gguf", action="store_true", help="also write model.gguf (llama.cpp)")
    export.add_argument(
        "--ollama", action="store_true", help="also write an Ollama Modelfile (implies --gguf)"
    )
    export.add_argument(
        "--quant",
        metavar="TYPE",
        help="GGUF type for llama.cpp's converter: f16 (default), bf16, f32, q8_0, ...",
    )
    export.add_argument("--llama-cpp", metavar="DIR", help="llama.cpp's folder ($LLAMA_CPP_DIR)")
    export.add_argument("--force", action="store_true", help="replace an existing export")
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    export.set_defaults(func=cmd_export)


@dataclass
class ExportOutcome:
    """What the export child said: its result or its error, and its exit code."""

    exit_code: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    log: Path | None = None
    progress: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return list((self.result or {}).get("missing") or [])


def check_exportable(run_dir: Path) -> None:
    """Refuse, before a child starts, a run that is still training.

    Raises:
        AffinerError: the run is live.
    """
    summary = summarize(run_dir)
    if summary.live:
        raise AffinerError(
            f"run {summary.run_id} is still training: its weights are still changing",
            hint=f"wait for it to finish, or `affiner stop {summary.run_id}`, then export",
        )


def run_export_child(
    run_dir: str | os.PathLike[str],
    *,
    final: bool = False,
    gguf: bool = False,
    ollama: bool = False,
    quant: str | None = None,
    llama_cpp: str | None = None,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> ExportOutcome:
    """Run ``python -m affiner.runner.export RUN_DIR --json`` and read its answer.

    Its stderr (library warnings, a crash's traceback) goes to a temporary log, removed when
    the child ended in words and kept (and named) when it crashed.
    """
    run_dir = Path(run_dir).resolve()  # the child runs in the run folder
    argv = [sys.executable, "-m", EXPORT_MODULE, str(run_dir), "--json"]
    argv += ["--final"] * final + ["--gguf"] * gguf + ["--ollama"] * ollama + ["--force"] * force
    if quant:
        argv += ["--quant", quant]
    if llama_cpp:
        argv += ["--llama-cpp", str(Path(llama_cpp).expanduser().resolve())]
    fd, name = tempfile.mkstemp(prefix=f"affiner-export-{run_dir.name}-", suffix=".log")
    log = Path(name)
    outcome = ExportOutcome(exit_code=EXIT_CRASH, log=log)
    with os.fdopen(fd, "w", encoding="utf-8") as err:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=run_dir,
            env=child_env(),
            text=True,
            encoding="utf-8",
        )
        assert child.stdout is not None
        for line in child.stdout:
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = answer.pop("type", None)
            if kind == "progress":
                outcome.progress.append(str(answer.get("message")))
                if on_progress is not None:
                    on_progress(str(answer.get("message")))
            elif kind == "result":
                outcome.result = answer
            elif kind == "error":
                outcome.error = answer
        outcome.exit_code = child.wait()
    if outcome.result is None and outcome.error is None:
        outcome.error = {"message": f"the export process ended with exit code {outcome.exit_code}"}
    if outcome.exit_code != EXIT_CRASH:
        log.unlink(missing_ok=True)
        outcome.log = None
    elif outcome.error is not None:
        outcome.error["hint"] = f"its log, with the traceback, is {log}"
    return outcome


def cmd_export(args: Any) -> int:
    run = resolve_run(args.run)
    check_exportable(run.path)
    to_screen = sys.stderr if args.json else sys.stdout
    outcome = run_export_child(
        run.path,
        final=args.final,
        gguf=args.gguf,
        ollama=args.ollama,
        quant=args.quant,
        llama_cpp=args.llama_cpp,
        force=args.force,
        on_progress=lambda message: print(f"  {message}", file=to_screen, flush=True),
    )
    if outcome.error is not None:
        error = outcome.error
        raise _Failed(
            str(error.get("message")),
            hint=error.get("hint"),
            where=error.get("where"),
            exit_code=outcome.exit_code,
        )
    result = outcome.result or {}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(describe(result)))
    return outcome.exit_code


class _Failed(AffinerError):
    """The child's error, with the child's exit code."""

    def __init__(self, message: str, *, exit_code: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.exit_code = exit_code


def describe(result: dict[str, Any]) -> list[str]:
    """The export's result in lines: what was written where, what is missing, what next."""
    step = f" (step {result['step']})" if result.get("step") is not None else ""
    which = f"the best checkpoint{step}" if result.get("which") == "best" else "the final adapter/"
    lines = [f"Exported {which} of {Path(str(result.get('run_dir'))).name}:"]
    for label, key in (("merged", "merged"), ("GGUF", "gguf"), ("Modelfile", "modelfile")):
        if result.get(key):
            extra = f" ({result['gguf_type']})" if key == "gguf" else ""
            lines.append(f"  {label:<10} {result[key]}{extra}")
    lines += [f"note: {note}" for note in result.get("notes") or []]
    lines += [f"missing: {gap}" for gap in result.get("missing") or []]
    lines += [f"next: {step}" for step in result.get("next_steps") or []]
    return lines
