"""What a run was made with, and the one command that makes it again.

A fine-tune that cannot be reproduced is hard to trust: ``versions.json`` pins the library
versions (and CUDA/driver when there is a GPU), ``command.txt`` holds the headless command.
Versions are read from package metadata, so nothing heavy is imported just to learn a number.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from affiner.runner.run import RunDir

#: Distributions whose versions decide what a run does.
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "affiner",
)


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "affiner":
            return _affiner_source_version()
        return None


def _affiner_source_version() -> str | None:
    """affiner run from a source tree (not pip-installed): the version pyproject.toml names."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        for line in pyproject.read_text(encoding="utf-8").splitlines():
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"') + "+source"
    except OSError:
        return None
    return None


def collect_versions() -> dict[str, Any]:
    """Python, platform, library versions and, when torch sees a GPU, CUDA and driver versions."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }
    for name in PACKAGES:
        info[name] = package_version(name)
    info.update(_cuda_versions())
    return info


def _cuda_versions() -> dict[str, Any]:
    """CUDA runtime, cuDNN, device names (torch) and the driver (NVML); empty without a GPU."""
    found: dict[str, Any] = {}
    torch = sys.modules.get("torch")  # only when the training process has already paid for it
    if torch is not None and torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
        found["cudnn"] = torch.backends.cudnn.version()
        found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            found["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver: a CPU machine
        pass
    return found


def write_versions(run_dir: RunDir) -> Path:
    """Write ``versions.json`` into the run folder."""
    run_dir.versions.write_text(json.dumps(collect_versions(), indent=2) + "\n", encoding="utf-8")
    return run_dir.versions


def reproduce_command(run_dir: RunDir) -> str:
    """The exact headless command that trains this run again from its ``run.toml``."""
    return f"affiner train {shlex.quote(os.fspath(run_dir.config))} --foreground"


def write_command(run_dir: RunDir) -> Path:
    """Write ``command.txt`` (the headless reproduce command) unless the launcher already did.

    `affiner.runner.run.launch` writes a fuller one (with the worker's own command line) when it creates
    the folder; a run started in-process, without the launcher, gets this one line.
    """
    if not run_dir.command.exists():
        run_dir.command.write_text(reproduce_command(run_dir) + "\n", encoding="utf-8")
    return run_dir.command
