"""Offline models made ready on first use, in the foreground, where the user sees it.

``smollm2`` (a quantized GGUF in a registry package) must be converted once into a folder
transformers loads, and ``minilm`` copied into affiner's cache under its own name. `affiner
train` and `affiner preflight` do that here, before anything starts, with a progress bar on a
terminal and one plain line a stage in a file or a pipe: the detached worker then finds a
folder and never converts silently in the background. `affiner plan` does not convert: a plan
needs only the model's shape, which affiner carries for every offline model.

The progress display (`progress_reporter`) is the one ``affiner demo`` shows while it
provisions its model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from affiner.planner.models import OfflineModel

#: Receives a stage description and the fraction done (0.0 to 1.0), as
#: `affiner.runner.demo.provision.provision` reports them.
ProgressFn = Callable[[str, float], None]


def stderr_console() -> Any:
    """Where the foreground commands say what they do before a run exists: stderr, so stdout
    keeps only what a script reads (the run id, the tables)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress_reporter(console: Any, label: str) -> Iterator[ProgressFn]:
    """A `ProgressFn` that draws `label`'s progress: a bar on a terminal, plain lines elsewhere.

    A bar written to a file leaves only its last frame (or nothing), so a redirected log would
    not say what the minutes went on; there each new stage gets one flushed line instead.
    """
    if not console.is_terminal:
        said: list[str] = []

        def line(stage: str, done: float) -> None:
            if stage == "done" or (said and said[-1] == stage):  # "ready" says it once, below
                return
            said.append(stage)
            console.print(f"{label}: {stage} ({done:.0%})", markup=False, highlight=False)
            console.file.flush()

        yield line
        console.print(f"{label}: ready", markup=False, highlight=False)
        console.file.flush()
        return

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{label}: checking", total=1.0)

        def draw(stage: str, done: float) -> None:
            bar.update(task, completed=done, description=f"{label}: {stage}")

        yield draw
        bar.update(task, completed=1.0, description=f"{label}: ready")


def offline_model_named(ref: str, base_dir: Path | None = None) -> OfflineModel | None:
    """The offline model `ref` names (``smollm2``, ``minilm``…), or None.

    A name that is also a folder here (next to the run.toml) is that folder, as run.toml's
    own resolution treats it; a hub id whose offline package is not installed is the hub's
    (`affiner.planner.models.offline_model_for`).
    """
    from affiner.planner.models import offline_model_for

    if not ref or not ref.strip():
        return None
    path = Path(ref).expanduser()
    if path.exists() or (base_dir is not None and (base_dir / path).exists()):
        return None
    return offline_model_for(ref)


def offline_readiness(
    ref: str, base_dir: Path | None = None
) -> tuple[OfflineModel | None, Path | None]:
    """The offline model `ref` names and its loadable folder in affiner's cache (None until it
    is converted or copied); ``(None, None)`` when `ref` names no offline model.

    Raises:
        AffinerError: the package carrying the model is not installed (the install command).
    """
    from affiner.planner.models import ready_path, source_path

    model = offline_model_named(ref, base_dir)
    if model is None:
        return None, None
    source_path(model)  # not installed: the install command, before any bar is drawn
    return model, ready_path(model)


def ensure_offline_model(
    ref: str, *, console: Any = None, base_dir: Path | None = None
) -> Path | None:
    """Make the offline model `ref` names loadable if it is not yet; None when it names none.

    Returns:
        The folder a run loads (affiner's cache), converted or copied now if needed.

    Raises:
        AffinerError: the package carrying the model is not installed (with the command that
            installs it), or the conversion needs a package that is missing.
    """
    model, ready = offline_readiness(ref, base_dir)
    if model is None or ready is not None:
        return ready
    from affiner.runner.demo import provision_model

    console = console or stderr_console()
    if model.kind == "gguf":
        console.print(
            f"{model.title} is used for the first time here: converting its GGUF file once into "
            "a folder affiner trains from (about 30 s; later runs load it in a second)",
            markup=False,
            soft_wrap=True,
        )
    with progress_reporter(console, f"model {model.key}") as report:
        return provision_model(model, progress=report)


def model_of_run_toml(config_path: str | os.PathLike[str]) -> str:
    """``[model].name_or_path`` as written in a run.toml; empty when the file cannot say (its
    own checks, which run next, report what is wrong with it)."""
    from affiner.runner.config import read_raw_config

    try:
        raw = read_raw_config(Path(config_path).expanduser())
    except (OSError, ValueError):
        return ""
    model = raw.get("model")
    ref = model.get("name_or_path") if isinstance(model, dict) else None
    return ref if isinstance(ref, str) else ""


def ensure_for_run_toml(config_path: str | os.PathLike[str], *, console: Any = None) -> Path | None:
    """`ensure_offline_model` for the model a run.toml names (its relative paths read from the
    file's folder); None when it names no offline model."""
    from affiner.planner.models import ready_path

    ref = model_of_run_toml(config_path)
    base = Path(config_path).expanduser().resolve().parent
    model = offline_model_named(ref, base)
    if model is not None and ready_path(model) is None:
        _check_before_converting(config_path)
    return ensure_offline_model(ref, console=console, base_dir=base)


def _check_before_converting(config_path: str | os.PathLike[str]) -> None:
    """Report the run.toml's own mistakes (a typo, a missing package) before a half-minute
    conversion, not after it; the one error expected here is the model not converted yet."""
    from affiner.planner.models import OfflineNotReady
    from affiner.runner.config import load_config

    with contextlib.suppress(OfflineNotReady):
        load_config(config_path)
