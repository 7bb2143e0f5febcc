"""affiner: plan, run and monitor the fine-tuning of language models from a terminal.

This is the top of the installed namespace. Its three rooms are ``affiner.planner`` (hardware,
model shapes, memory and time, recommendation), ``affiner.runner`` (the only place that trains;
its contract is the run folder) and ``affiner.tui`` (the Textual app and the CLI).

The repository keeps those rooms as top-level folders, so this package's own two files live in
``tui/_root/``; ``pyproject.toml`` maps them (setuptools ``package-dir``). Importing ``affiner``
costs nothing: it names the version and nothing else.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
