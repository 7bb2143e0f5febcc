"""Every ``affiner COMMAND --option`` that the code mentions exists in the real parser.

Hints and docstrings once sent users to ``affiner plan --save`` (before it existed) and
``affiner runs --watch``, options that were not there. This reads every string literal under planner/, runner/ and
tui/ (docstrings, hints, f-string text), finds each ``affiner ...`` mention and checks its
command and options against `affiner.tui.cli.build_parser`, so the next such message fails here.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from affiner.tui.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("planner", "runner", "tui")

#: ``affiner`` then what follows it on the same line, up to a character that ends a command
#: in prose or markup: a backtick or quote, a bracket, a comma or semicolon, "|" or a sentence end.
MENTION = re.compile(r"\baffiner((?:[ \t]+[^\s`'\"(),;|]+)+)")
OPTION = re.compile(r"^--[a-z][a-z0-9-]*")


def _known_options(parser: argparse.ArgumentParser) -> tuple[dict[str, bool], dict[str, set[str]]]:
    """The top-level options (each: whether it takes a value) and each subcommand's own."""
    top = {s: action.nargs != 0 for action in parser._actions for s in action.option_strings}
    commands: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = {s for a in sub._actions for s in a.option_strings}
    return top, commands


def _strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal in `path` with its line (the text parts of f-strings too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _mentions(text: str) -> list[list[str]]:
    """The words after each ``affiner`` in `text`, cut at the first sentence end."""
    found = []
    for match in MENTION.finditer(text):
        words = []
        for word in match.group(1).split():
            words.append(word.rstrip(".:!?"))
            if word[-1] in ".:!?" and not OPTION.match(word):
                break
        found.append([w for w in words if w])
    return found


def _problems(words: list[str], top: dict[str, bool], commands: dict[str, set[str]]) -> list[str]:
    """What in one mention is not in the parser (empty when all of it is)."""
    problems = []
    i = 0
    while i < len(words) and words[i].startswith("-"):  # options before the command
        option = OPTION.match(words[i])
        name = option.group(0) if option else words[i]
        if name not in top:
            problems.append(f"no option {name!r}")
        i += 2 if top.get(name) and "=" not in words[i] else 1
    if i >= len(words):
        return problems
    command = words[i]
    if command not in commands:
        # Prose ("affiner plans for the CPU", "affiner 0.1's worker"): a command only when an
        # option follows it directly.
        if i + 1 < len(words) and OPTION.match(words[i + 1]):
            problems.append(f"no command {command!r}")
        return problems
    for word in words[i + 1 :]:
        option = OPTION.match(word)
        if option and option.group(0) not in commands[command]:
            problems.append(f"no option {option.group(0)!r}")
    return problems


def _all_mentions() -> list[tuple[str, list[str]]]:
    found = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            for line, text in _strings(path):
                for words in _mentions(text):
                    found.append((f"{path.relative_to(ROOT)}:{line}", words))
    return found


def test_every_mentioned_command_and_option_exists() -> None:
    top, commands = _known_options(build_parser())
    mentions = _all_mentions()
    assert any(words[:1] == ["train"] for _, words in mentions), "the scan found no mentions"
    wrong = [
        f"{where}: `affiner {' '.join(words)}`: {', '.join(problems)}"
        for where, words in mentions
        if (problems := _problems(words, top, commands))
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write one with `affiner plan --save-as`", ["no option '--save-as'"]),
        ("write one with `affiner plan --model M --data D --save run.toml`", []),
        ("(``affiner runs --watch``, the TUI)", ["no option '--watch'"]),
        ("try `affiner plans --gpu T4`", ["no command 'plans'"]),
        ("`affiner --runs-dir DIR runs --limit 3`", []),
        ("`affiner --watch`", ["no option '--watch'"]),
        ("`affiner train --resume RUN`, or `affiner stop --force ID`", []),
        ("affiner plan --model 7B --gpu=4090.", []),
        ("affiner plans for the CPU. Use --save later", []),
        ("the guard still knows affiner 0.1's runner.worker", []),
    ],
)
def test_the_scan_catches_what_it_should(text: str, expected: list[str]) -> None:
    """The checker itself: it flags a missing option or command, and leaves prose alone."""
    top, commands = _known_options(build_parser())
    got = [p for words in _mentions(text) for p in _problems(words, top, commands)]
    assert got == expected
