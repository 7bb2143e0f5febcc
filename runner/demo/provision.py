"""Turn an offline model into a folder transformers loads in a second.

SmolLM2 arrives as a quantized GGUF file. transformers can read it (dequantizing, ~20 s),
but a GGUF-loaded model refuses `save_pretrained`, and training wants plain weights.
So the first use converts it once: read the GGUF, copy its weights into a plain model of the
same config, and save that with the tokenizer as safetensors in affiner's cache. Later runs
load the folder directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from affiner.planner.errors import AffinerError
from affiner.planner.locations import cache_dir
from affiner.planner.models import (
    COPY_MARKER,
    OfflineModel,
    converted_dir,
    find_offline_model,
    ready_path,
    source_path,
)

#: Called with a stage description and the fraction done (0.0 to 1.0).
ProgressFn = Callable[[str, float], None]

_STAGES = (
    "reading the tokenizer from the GGUF file",
    "dequantizing the GGUF weights",
    "building a plain model",
    "writing safetensors",
)


def provision(ref: str | OfflineModel, *, progress: ProgressFn | None = None) -> Path:
    """The loadable folder of an offline model, converting it first if needed.

    Args:
        ref: an offline model key or alias (see `affiner.planner.models.offline`), or the model itself.
        progress: receives ``(stage, fraction)`` as the conversion goes.

    Returns:
        A folder with ``config.json``, safetensors weights and the tokenizer.
    """
    model = ref if isinstance(ref, OfflineModel) else find_offline_model(ref)
    if model is None:
        raise AffinerError(f"{ref!r} is not one of affiner's offline models")
    if model.kind == "folder":  # raises the "not installed" error with the install command
        report = progress or (lambda stage, done: None)
        report("copying into affiner's cache", 0.0)
        return named_folder(model, source_path(model))
    ready = ready_path(model)
    if ready is not None:
        return ready
    if model.kind != "gguf":
        source_path(model)
        raise AffinerError(f"{model.title} has no loadable folder")
    return _convert_gguf(model, progress or (lambda stage, done: None))


def named_folder(model: OfflineModel, folder: Path) -> Path:
    """`folder`'s files under the model's own name in affiner's cache: hard links where the
    cache and the package share a filesystem, copies elsewhere.

    A folder model lives inside its package as ``.../model``; runs, the runs list and the model
    card name a model by its folder, so ``all-minilm-l6-v2`` reads better than ``model``. It is
    never a symbolic link into the package: the cache is shared by every virtual environment,
    and a link into one of them breaks the others the day that one is deleted (a link left by
    an older affiner is replaced). The copy is made in a temporary folder and renamed into
    place, so a reader never sees half of it. Where nothing can be written, the package folder
    itself is returned.
    """
    import json

    target = cache_dir() / "models" / model.key
    manifest = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    try:
        if target.is_dir() and not target.is_symlink():
            marker = target / COPY_MARKER
            with contextlib.suppress(OSError, ValueError):
                if json.loads(marker.read_text("utf-8")).get("files") == manifest:
                    return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model.key}-", dir=target.parent))
        try:
            for name in manifest:
                source, copy = folder / name, staging / name
                copy.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, copy)  # same filesystem: no second copy of the bytes
                except OSError:
                    shutil.copy2(source, copy)
            record = {"source": str(folder), "files": manifest}
            (staging / COPY_MARKER).write_text(json.dumps(record, indent=1), "utf-8")
            if target.is_symlink() or target.is_file():
                target.unlink()  # a link left by an older affiner
            elif target.exists():
                shutil.rmtree(target)  # a copy of another version, or a cut one
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
    except OSError:
        return folder


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep transformers' load reports, progress bars and library warnings off the demo's
    screen (the worker's own output goes to ``train.log`` as usual)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        bnb.setLevel(bnb_level)


def _convert_gguf(model: OfflineModel, progress: ProgressFn) -> Path:
    with quiet_libraries(), _no_gguf_bar():
        return _convert_quietly(model, progress)


@contextlib.contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar (not behind its logging switch);
    our caller draws the progress, so that bar is turned off while converting."""
    import functools

    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:
        yield
        return
    original = getattr(reader, "tqdm", None)
    if original is None:
        yield
        return
    reader.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


def _convert_quietly(model: OfflineModel, progress: ProgressFn) -> Path:
    gguf = source_path(model)
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise AffinerError(
            f"reading {gguf.name} needs the 'gguf' package", hint="pip install gguf"
        ) from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(_STAGES[0], 0.0)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    progress(_STAGES[1], 0.15)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    progress(_STAGES[2], 0.75)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    config.name_or_path = model.title
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    progress(_STAGES[3], 0.85)
    scratch = Path(tempfile.mkdtemp(prefix=f".{model.key}.", dir=target.parent))
    try:
        plain.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        if target.exists():  # a concurrent conversion finished first
            shutil.rmtree(scratch)
        else:
            scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    progress("done", 1.0)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m affiner.runner.demo.provision NAME``: make an offline model loadable, printing progress."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m affiner.runner.demo.provision",
        description="Convert an offline model (smollm2, minilm) into a folder affiner trains from.",
    )
    parser.add_argument("name", help="an offline model's name, e.g. smollm2")
    args = parser.parse_args(argv)

    def report(stage: str, done: float) -> None:
        print(f"{done:4.0%}  {stage}", file=sys.stderr, flush=True)

    try:
        print(provision(args.name, progress=report))
    except AffinerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
