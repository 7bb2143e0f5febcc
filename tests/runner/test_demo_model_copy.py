"""The offline folder models reach affiner's cache as files of its own, not as a link into a venv.

The cache is shared by every virtual environment on the machine; a symbolic link into one of
them broke every other the day that one was deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.planner.locations import CACHE_ENV
from affiner.runner.demo.provision import COPY_MARKER, named_folder


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "venv" / "site-packages" / "gt_model" / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}', "utf-8")
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n", "utf-8")
    return folder


def test_the_cache_holds_its_own_files_that_outlive_the_venv(package: Path, tmp_path: Path) -> None:
    model = SimpleNamespace(key="minilm")
    named = named_folder(model, package)
    assert named == tmp_path / "cache" / "models" / "minilm"
    assert named.is_dir() and not named.is_symlink()
    assert (named / "tokenizer" / "vocab.txt").read_text("utf-8") == "a\nb\n"
    shutil.rmtree(tmp_path / "venv")  # the environment that provided it is deleted
    assert (named / "model.safetensors").stat().st_size == 4096
    assert (named / "config.json").read_text("utf-8") == '{"model_type": "bert"}'
    assert not [p for p in named.parent.iterdir() if p.name.startswith(".")], "no staging left"


def test_a_link_left_by_an_older_affiner_is_replaced(package: Path, tmp_path: Path) -> None:
    link = tmp_path / "cache" / "models" / "minilm"
    link.parent.mkdir(parents=True)
    link.symlink_to(package, target_is_directory=True)
    named = named_folder(SimpleNamespace(key="minilm"), package)
    assert named == link and not named.is_symlink() and (named / COPY_MARKER).exists()
    assert (package / "config.json").exists(), "the package's own files are untouched"


def test_a_whole_copy_is_reused_and_a_changed_package_copied_again(package: Path) -> None:
    model = SimpleNamespace(key="minilm")
    named = named_folder(model, package)
    marker = (named / COPY_MARKER).stat().st_mtime_ns
    assert named_folder(model, package) == named
    assert (named / COPY_MARKER).stat().st_mtime_ns == marker  # nothing copied twice
    (package / "model.safetensors").unlink()  # an upgrade replaces a file (a new inode)
    (package / "model.safetensors").write_bytes(b"\1" * 8192)
    assert named_folder(model, package) == named
    assert (named / "model.safetensors").read_bytes() == b"\1" * 8192
    (named / COPY_MARKER).unlink()  # a copy cut short has no marker: made again
    assert named_folder(model, package) == named and (named / COPY_MARKER).exists()
