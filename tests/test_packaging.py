"""What the wheel installs: one top-level name, every room inside it, nothing bare.

The rooms are top-level folders in the repository (the layout is fixed) and are installed as
``affiner.planner``, ``affiner.runner`` and ``affiner.tui`` through setuptools' ``package-dir``
mapping. Distributions named ``planner``, ``tui`` or ``Runner`` exist on the package registry;
pip does not detect a clash of top-level names, so a bare name would silently overwrite (or be
overwritten by) somebody else's package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from affiner import __version__
from tests.test_import_graph import REPO, module_files

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_package_list_names_every_folder_of_the_rooms() -> None:
    """A new sub-package that is not listed in pyproject.toml would be missing from the wheel."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert listed == on_disk


@pytest.mark.slow
def test_the_wheel_has_affiner_as_its_only_top_level_name(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q"]
    subprocess.run(
        [*pip_wheel, str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("affiner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "affiner",
        wheel.name.split("-")[0] + "-" + __version__ + ".dist-info",
    }
    expected = {
        "affiner/"
        + "/".join(name.split(".")[1:])
        + ("/__init__.py" if path.name == "__init__.py" else ".py")
        for name, path in module_files().items()
        if name != "affiner"
    }
    assert expected - set(names) == set()
    assert "affiner/__init__.py" in names and "affiner/__main__.py" in names
    assert "affiner/tui/app.tcss" in names
    top_level = next(name for name in names if name.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["affiner"]


@pytest.mark.slow
def test_importing_every_module_loads_no_bare_room(tmp_path: Path) -> None:
    """Run from a folder outside the repository, so only the installed names can be found."""
    modules = sorted(module_files())
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    if name != 'affiner.__main__':\n"
        "        importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not {"planner", "runner", "tui"} & {name.split(".")[0] for name in loaded}


def test_version_agrees_everywhere(tmp_path: Path) -> None:
    from importlib.metadata import version

    shown = subprocess.run(
        [sys.executable, "-m", "affiner", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown == ["affiner", __version__]
    assert version("affiner") == __version__
    assert _pyproject()["project"]["scripts"]["affiner"] == "affiner.tui.cli:main"
