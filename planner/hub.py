"""Whether the Hugging Face hub may be reached: the one reading of ``HF_HUB_OFFLINE`` in affiner.

affiner asks before it reaches the hub (the planner fetching a ``config.json``, the runner
naming why a model or a data set cannot be found, the flash-attention check deciding whether
the ``kernels`` package may download one), and the answer must be the one huggingface_hub
itself will act on, or a hint says "nothing is downloaded" while the library downloads.
So this follows huggingface_hub's ``constants.py``: ``HF_HUB_OFFLINE`` (or, when it is unset
or empty, ``TRANSFORMERS_OFFLINE``) is true when it is one of ``1``, ``ON``, ``YES``, ``TRUE``
in any case; anything else (``0``, ``false``, ``off``, empty) leaves the hub online. The
environment is read at each call, as tests and the CLI set it after import.

Light: no huggingface_hub import (the planner must not need it installed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["TRUE_VALUES", "datasets_offline", "hub_offline", "is_true"]

#: What huggingface_hub (``ENV_VARS_TRUE_VALUES``) and datasets count as a true flag, upper-cased.
TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})


def is_true(value: str | None) -> bool:
    """A flag's value read as huggingface_hub reads it (``_is_true``): None and "" are false."""
    return value is not None and value.upper() in TRUE_VALUES


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the hub is off limits, by huggingface_hub's own rule (see the module docstring).

    Args:
        environ: the environment to read; `os.environ` (as it is now) by default.
    """
    env = os.environ if environ is None else environ
    return is_true(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE"))


def datasets_offline(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a hub data set cannot be downloaded: the hub is offline, or ``HF_DATASETS_OFFLINE`` is true.

    `datasets` downloads through huggingface_hub, so the hub's rule holds for it whatever
    ``HF_DATASETS_OFFLINE`` says; ``HF_DATASETS_OFFLINE`` can only add to it.

    Args:
        environ: the environment to read; `os.environ` (as it is now) by default.
    """
    env = os.environ if environ is None else environ
    return hub_offline(env) or is_true(env.get("HF_DATASETS_OFFLINE"))
