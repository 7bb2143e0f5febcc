"""Reading, checking and writing ``run.toml``.

A run configuration is written by the planner, by the TUI or by a person with an editor, so
every mistake is reported the way an editor would want it: the file, the line, the key
(``[method].lora_rank``), what was found and what is allowed. Checks that need the machine
(is there a bitsandbytes backend for this device? does this CPU do bf16?) stay cheap: nothing
here imports bitsandbytes or torch.

Relative paths in a ``run.toml`` (the model folder, the data files) are resolved against the
folder that holds the ``run.toml``, so a run folder can be moved or shared as a whole.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.vocabulary import default_learning_rate
from affiner.runner.config import checks as config_checks
from affiner.runner.config.raw import tomllib
from affiner.runner.config.schema import RunConfig

__all__ = [
    "ConfigError",
    "config_from_dict",
    "dumps_config",
    "load_config",
    "loads_config",
    "save_config",
    "set_config_values",
    "validate_config",
]

SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]
_SECTION_TYPES = typing.get_type_hints(RunConfig)

# Data file endings that make a relative reference a local path even before it exists
# (so a missing file is reported as a missing file, not as an unknown hub data set).
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".gguf", ".safetensors")


class ConfigError(AffinerError):
    """A ``run.toml`` that cannot be used as written.

    Attributes:
        file: the configuration file (or ``"plan"`` / ``"run.toml"`` when there is none).
        line: the 1-based line of the offending key, when it could be found.
        key: the key at fault, ``[method].lora_rank`` style.
        problems: every problem found, as ``where: message`` lines (the first is the message).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        where = _where(file, line, key)
        super().__init__(message, hint=hint, where=where or None)
        self.file = file
        self.line = line
        self.key = key
        self.problems = problems or [f"{where}: {message}" if where else message]


def _where(file: str | None, line: int | None, key: str | None) -> str:
    place = f"{file}:{line}" if file and line else (file or "")
    return " ".join(part for part in (place, key) if part)


# ---------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read, check and return the ``run.toml`` at `path` (relative paths resolved from its folder).

    Raises:
        ConfigError: the file is missing, is not TOML, or holds unknown keys, wrong types,
            values outside their allowed set or an impossible combination.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "run configuration not found",
            file=str(file),
            hint=(
                "check the path; write one with `affiner plan --model M --data train.jsonl"
                " --save run.toml`, by hand (see the README's run.toml section), copy an"
                " earlier run's runs/<id>/run.toml, or run `affiner` and accept a plan"
            ),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the run configuration: {exc}", file=str(file)) from None
    return loads_config(text, base_dir=file.resolve().parent, source=str(file))


def loads_config(
    text: str, *, base_dir: str | os.PathLike[str] | None = None, source: str = "run.toml"
) -> RunConfig:
    """Parse TOML text into a checked `RunConfig`; `source` names the text in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+), column (\d+)", str(exc))
        line = (
            int(found.group(1))
            if found
            else max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        )
        reason = re.sub(r"\s*\(at [^)]*\)$", "", str(exc))
        raise ConfigError(
            f"not valid TOML: {reason}",
            file=source,
            line=line,
            hint='values need quotes for text (name = "lora"), sections look like [method]',
        ) from None
    return config_from_dict(data, base_dir=base_dir, source=source, text=text)


def config_from_dict(
    data: dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "run.toml",
    text: str | None = None,
) -> RunConfig:
    """Build and check a `RunConfig` from parsed TOML (`text`, when given, locates lines)."""
    lines = key_lines(text) if text else {}
    problems = _Problems(source, lines)
    cfg = RunConfig()
    for section_name, values in data.items():
        if section_name not in SECTIONS:
            problems.add(
                section_name,
                f"unknown section [{section_name}]",
                _allowed_hint(section_name, list(SECTIONS), "sections"),
            )
            continue
        if not isinstance(values, dict):
            problems.add(
                section_name, f"[{section_name}] must be a table (a [{section_name}] header)"
            )
            continue
        section = getattr(cfg, section_name)
        hints = typing.get_type_hints(type(section))
        for key, value in values.items():
            dotted = f"{section_name}.{key}"
            if key not in hints:
                problems.add(
                    dotted,
                    f"unknown key {key!r} in [{section_name}]",
                    _allowed_hint(key, list(hints), "keys"),
                )
                continue
            ok, converted, expected = convert_value(value, hints[key])
            if not ok:
                problems.add(dotted, f"expected {expected}, got {_describe(value)}")
                continue
            setattr(section, key, converted)
    problems.raise_if_any()
    training = data.get("training")
    if not (isinstance(training, dict) and "learning_rate" in training):
        cfg.training.learning_rate = default_learning_rate(cfg.method.name)
    if base_dir is not None:
        resolve_paths(cfg, base_dir)
    validate_config(cfg, where=source, lines=lines)
    return cfg


def resolve_paths(cfg: RunConfig, base_dir: str | os.PathLike[str]) -> None:
    """Make relative local paths absolute against `base_dir`; hub ids are left alone."""
    from affiner.planner.models import offline_folder

    base = Path(base_dir)
    # An offline model's name (smollm2, minilm) stands for its converted folder.
    offline = offline_folder(cfg.model.name_or_path)
    cfg.model.name_or_path = offline or resolve_reference(cfg.model.name_or_path, base)
    cfg.data.train = resolve_reference(cfg.data.train, base)
    cfg.data.eval = resolve_reference(cfg.data.eval, base)


def resolve_reference(ref: str, base: Path) -> str:
    """`ref` made absolute when it names something local, unchanged when it looks like a hub id."""
    if not ref:
        return ref
    path = Path(ref).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base / path
    looks_local = (
        ref.startswith((".", "~")) or ref.lower().endswith(_LOCAL_SUFFIXES) or ref.count("/") > 1
    )
    if candidate.exists() or looks_local:
        return str(candidate.resolve())
    return ref


def key_lines(text: str) -> dict[str, int]:
    """Map ``section`` and ``section.key`` to the 1-based line that defines them.

    A plain scan, not a parser: good enough to point an editor at a key, and it never fails.
    """
    lines: dict[str, int] = {}
    table = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[\s*([^\[\]]+?)\s*\]", line)
        if header:
            table = header.group(1).replace('"', "").replace(" ", "")
            lines.setdefault(table, number)
            continue
        assignment = re.match(r"^([A-Za-z0-9_\-\"'. ]+?)\s*=", line)
        if assignment:
            key = assignment.group(1).replace('"', "").replace("'", "").replace(" ", "")
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


# ---------------------------------------------------------------------------- types


def convert_value(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """Check `value` against a field's type; ints are fine where floats are, bools never are numbers."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        names = []
        for option in options:
            if option is type(None):
                continue
            ok, converted, name = convert_value(value, option)
            if ok:
                return True, converted, name
            names.append(name)
        return False, value, " or ".join(names)
    if hint is bool:
        return isinstance(value, bool), value, "true or false"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "a whole number"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value, "a number"
    if hint is str or origin is typing.Literal:
        # A Literal's words are checked by `config_checks`, which names the allowed ones.
        return isinstance(value, str), value, "text in quotes"
    if origin is list:
        (item,) = typing.get_args(hint)
        ok = isinstance(value, list) and all(convert_value(v, item)[0] for v in value)
        return ok, list(value) if ok else value, 'a list of text, like ["a", "b"]'
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return ok, dict(value) if ok else value, 'a table of text, like {text = "review"}'
    return True, value, str(hint)


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "a whole number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a table",
    }
    return f"{kind.get(type(value), type(value).__name__)} ({value!r})"


def _allowed_hint(word: str, allowed: list[str], what: str) -> str:
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.5)
    prefix = f"did you mean {close[0]!r}? " if close else ""
    return f"{prefix}valid {what}: {', '.join(allowed)}"


# ---------------------------------------------------------------------------- validation


class _Problems:
    """Collects every problem so one run of `affiner train` reports them all, first one first."""

    def __init__(self, file: str, lines: dict[str, int]) -> None:
        self.file = file
        self.lines = lines
        self.items: list[tuple[str, str, str | None]] = []

    def add(self, dotted: str, message: str, hint: str | None = None) -> None:
        self.items.append((dotted, message, hint))

    def _key(self, dotted: str) -> str:
        section, _, key = dotted.partition(".")
        return f"[{section}].{key}" if key else f"[{section}]"

    def _line(self, dotted: str) -> int | None:
        return self.lines.get(dotted) or self.lines.get(dotted.partition(".")[0])

    def raise_if_any(self) -> None:
        if not self.items:
            return
        texts = [f"{_where(self.file, self._line(d), self._key(d))}: {m}" for d, m, _ in self.items]
        dotted, message, hint = self.items[0]
        if len(self.items) > 1:
            message += f" (and {len(self.items) - 1} more: " + "; ".join(texts[1:]) + ")"
        raise ConfigError(
            message,
            hint=hint,
            file=self.file,
            line=self._line(dotted),
            key=self._key(dotted),
            problems=texts,
        )


def validate_config(
    cfg: RunConfig, *, where: str = "run.toml", lines: dict[str, int] | None = None
) -> list[str]:
    """Check values and combinations; return warnings, raise `ConfigError` for errors.

    Args:
        cfg: the configuration to check.
        where: the file (or ``"plan"``) named in messages.
        lines: ``section.key`` → line, from `key_lines`, to point at the line.

    Returns:
        Warnings a person should see but that do not stop a run (e.g. bf16 on a CPU without it).
    """
    problems = _Problems(where, lines or {})
    warnings: list[str] = []
    for dotted, message, hint in config_checks.find_problems(cfg):
        problems.add(dotted, message, hint)
    problems.raise_if_any()
    for dotted, message in config_checks.find_warnings(cfg):
        section, _, key = dotted.partition(".")
        line = (lines or {}).get(dotted)
        warnings.append(f"{_where(where, line, f'[{section}].{key}')}: {message}")
    return warnings


def check_for_this_machine(
    cfg: RunConfig, *, where: str = "run.toml", lines: dict[str, int] | None = None
) -> None:
    """Refuse what this machine cannot run (`affiner.runner.config.checks.machine_problems`),
    at the key's line; a launch asks, reading a file does not.

    Raises:
        ConfigError: this machine lacks the GPUs or the library the file asks for.
    """
    problems = _Problems(where, lines or {})
    for dotted, message, hint in config_checks.machine_problems(cfg):
        problems.add(dotted, message, hint)
    problems.raise_if_any()


# ---------------------------------------------------------------------------- writing


def dumps_config(cfg: RunConfig) -> str:
    """TOML text for `cfg`: one commented section at a time; None values are left out."""
    import tomli_w

    parts = [
        "# affiner run configuration: what this run does, and the only file the training",
        "# process reads. Edit freely; `affiner train run.toml` checks it before starting.",
        "# Relative paths are read from the folder that holds this file.",
        "",
    ]
    for name in SECTIONS:
        section = getattr(cfg, name)
        values = {k: v for k, v in dataclasses.asdict(section).items() if v is not None}
        # Tables inside a section (only [data].columns) are written inline, next to their key.
        inline = {k: values.pop(k) for k in list(values) if isinstance(values[k], dict)}
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        parts.append(f"# {doc}")
        parts.append(tomli_w.dumps({name: values}).rstrip("\n"))
        for key, table in inline.items():
            items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
            parts.append(f"{key} = {{{items}}}" if items else f"{key} = {{}}")
        parts.append("")
    return "\n".join(parts)


def _toml_value(value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def save_config(cfg: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Write `cfg` to `path` atomically (a reader never sees half a file); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = dumps_config(cfg)
    handle, temp = tempfile.mkstemp(prefix=".run-", suffix=".toml", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def set_config_values(path: str | os.PathLike[str], section: str, values: dict[str, Any]) -> Path:
    """Set `values` in one section of the ``run.toml`` at `path`, atomically; returns the path.

    What the training process learns and later readers need (the class names it detected,
    the batch that fits) belongs in the run's ``run.toml``, the one place a run's settings
    live. The file is read raw, so every other value stays as it was written (relative paths
    stay relative, nothing is resolved), checked as a whole, and rewritten by `save_config`.

    Raises:
        ConfigError: the result is not a valid configuration (the file is left unchanged).
        OSError: the file cannot be read or written.
    """
    from affiner.runner.config.raw import read_raw_config

    target = Path(path)
    data = read_raw_config(target)
    data.setdefault(section, {}).update(values)
    return save_config(config_from_dict(data, source=str(target)), target)
