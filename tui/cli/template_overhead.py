"""The tokens a chat template adds to a row, counted without transformers.

`affiner plan` and the data summary of `affiner train` count a row's texts with the model
folder's ``tokenizer.json`` through `tokenizers` alone (importing transformers would pull torch
into a command that needs neither). A chat template adds more than markers: SmolLM2's puts a
default system prompt of about 20 tokens before every conversation, so a max length taken from
the texts alone would cut most short chat rows. The template is therefore rendered here, the way
transformers renders it (a sandboxed Jinja environment with its ``raise_exception`` and
``tojson``), on a conversation of the row's roles with one-word contents; what the template
adds is the rendering's tokens less those words: exact for templates whose markers do not
depend on what is said, which is nearly all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: A turn's stand-in content: one short word every tokenizer has.
_FILLER = "ok"


def read_template(folder: Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template`` (its ``default`` one when it holds several); None without one."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _special_tokens(folder: Path) -> dict[str, str]:
    """``bos_token``, ``eos_token``… as a template reads them (a string or ``{"content": …}``)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    for key, value in config.items() if isinstance(config, dict) else ():
        if key.endswith("_token"):
            text = value.get("content") if isinstance(value, dict) else value
            if isinstance(text, str):
                out[key] = text
    return out


def row_roles(data: dict[str, Any], fmt: str) -> tuple[str, ...]:
    """The roles of a row's turns, as a chat client would send them: a chat row's own, and
    (system,) user, assistant for an instruction or prompt/completion row."""
    messages = data.get("messages")
    if fmt == "chat" and isinstance(messages, list):
        roles = tuple(str(m.get("role", "user")) for m in messages if isinstance(m, dict))
        return roles or ("user", "assistant")
    return (("system",) if data.get("system") else ()) + ("user", "assistant")


def template_overhead(folder: Path, tokenizer: Any) -> Callable[[tuple[str, ...]], int] | None:
    """A function from a row's roles (`row_roles`) to the tokens the folder's chat template
    adds to them, or None when the folder has no template or it cannot be rendered here.

    Args:
        folder: the model folder.
        tokenizer: its `tokenizers.Tokenizer` (padding and truncation off).
    """
    template = read_template(folder)
    if template is None:
        return None
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: ""
    try:
        compiled = env.from_string(template)
    except TemplateError:
        return None
    specials = _special_tokens(folder)
    filler = len(tokenizer.encode(_FILLER, add_special_tokens=False).ids)
    known: dict[tuple[str, ...], int] = {}

    def overhead(roles: tuple[str, ...]) -> int:
        if roles not in known:
            messages = [{"role": role, "content": _FILLER} for role in roles]
            try:
                text = compiled.render(messages=messages, add_generation_prompt=False, **specials)
            except Exception:  # a template that wants more than messages: count none
                known[roles] = 0
            else:
                ids = tokenizer.encode(text, add_special_tokens=False).ids
                known[roles] = max(0, len(ids) - filler * len(roles))
        return known[roles]

    try:
        overhead(("user", "assistant"))
    except Exception:  # a broken tokenizer: the texts alone are counted
        return None
    return overhead
