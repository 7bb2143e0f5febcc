"""What a typed line means: questions and commands for the guided assistant.

People type "what if I had a 4090", "use qlora", "seq 4096" or "why not full?" into the
same input line where they answer the assistant's questions. `parse_intent` turns one such
line into an `Intent`; anything it does not recognise comes back as ``unknown`` so that the
caller can either take the line as an answer (a model path, a data file) or reply with the
list of phrases it understands. Pure Python: no Textual, and of the planner only its
vocabulary (the method names a phrase maps onto), cheap to test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from affiner.planner.vocabulary import METHODS, Method

#: Every intent kind `parse_intent` returns.
KINDS = (
    "plan_for_gpu",  # value: catalog GPU name, or None for "the GPU I have"
    "use_method",  # value: a method name from METHOD_ALIASES' values
    "set_seq_len",  # value: int
    "set_batch",  # value: int
    "set_rank",  # value: int
    "set_lr",  # value: float
    "set_epochs",  # value: float
    # run.toml settings the plan then keeps as stated (`STATED_SETTINGS`):
    "set_targets",  # value: tuple of module names, or ("all-linear",)
    "set_checkpointing",  # value: True, False, or None for auto
    "set_optimizer",  # value: the word typed (the flow checks it against the vocabulary)
    "set_precision",  # value: the word typed
    "set_attention",  # value: the word typed
    "set_dropout",  # value: float
    "use_gpus",  # value: (count, strategy or None): ``use 4 gpus with fsdp``
    "why_not",  # value: method name
    "why",  # value: method name or None (the recommendation)
    "how_long",
    "what_fits",
    "hardware",
    "help",
    "back",
    "next",
    "goto",  # value: step name
    "launch",
    "preflight",
    "unknown",
)

#: Ways people name a method, mapped to run.toml's method names (`affiner.planner.vocabulary`):
#: each name itself, and the phrases below.
METHOD_ALIASES: dict[str, Method] = {
    **{method: method for method in METHODS},
    "full fine-tune": "full",
    "full finetune": "full",
    "full fine tune": "full",
    "full fine-tuning": "full",
    "full finetuning": "full",
    "fft": "full",
    "layer freeze": "freeze",
    "layer-wise freeze": "freeze",
    "layerwise freeze": "freeze",
    "frozen": "freeze",
    "q-lora": "qlora",
    "4-bit": "qlora",
    "4bit": "qlora",
    "4 bit": "qlora",
    "4-bit lora": "qlora",
    "4bit lora": "qlora",
    "lora 8": "lora8",
    "8-bit": "lora8",
    "8bit": "lora8",
    "8 bit": "lora8",
    "8-bit lora": "lora8",
    "8bit lora": "lora8",
    "lora 8-bit": "lora8",
    "lora 8bit": "lora8",
}

#: Step names `goto` understands (the assistant's steps people may jump back to).
GOTO_STEPS = ("hardware", "model", "data", "plan", "settings")

_NUMBER = r"(\d+(?:\.\d+)?(?:e-?\d+)?\s*[km]?)"


@dataclass(frozen=True)
class Intent:
    """One parsed line.

    Attributes:
        kind: one of `KINDS`.
        value: the argument (a GPU name, a method, a number), None when the kind takes none.
        text: the line as typed, stripped.
    """

    kind: str
    value: Any = None
    text: str = ""


def _number(raw: str) -> float:
    """``"4k"`` → 4096, ``"1e-4"`` → 0.0001, ``"2"`` → 2.0."""
    raw = raw.strip().lower().replace(" ", "")
    scale = 1.0
    if raw.endswith("k"):
        raw, scale = raw[:-1], 1024.0
    elif raw.endswith("m"):
        raw, scale = raw[:-1], 1024.0 * 1024.0
    return float(raw) * scale


def method_from_words(words: str) -> str | None:
    """The method a phrase names (``"4-bit lora"`` → ``qlora``), or None."""
    key = re.sub(r"\s+", " ", words.strip().lower()).strip(" ?.!")
    key = re.sub(r"^(?:the|a|an)\s+", "", key)
    key = re.sub(r"\s+(?:method|then|instead|please)$", "", key)
    return METHOD_ALIASES.get(key)


_SETTINGS: tuple[tuple[str, str, type], ...] = (
    # (intent kind, pattern before the number, value type)
    (
        "set_seq_len",
        r"(?:max(?:imum)?[ _-]?)?(?:seq(?:uence)?[ _-]?(?:len(?:gth)?)?|length|context(?: length)?|ctx|max[ _-]?len)",
        int,
    ),
    ("set_batch", r"(?:micro[ _-]?)?batch(?:[ _-]?size)?|bs|mb", int),
    ("set_rank", r"(?:lora[ _-]?)?rank|lora[ _-]?r|r", int),
    ("set_lr", r"lr|learning[ _-]?rate", float),
    ("set_epochs", r"epochs?", float),
)

_SIMPLE: tuple[tuple[str, str], ...] = (
    ("help", r"help|\?|h|commands|what can (?:i|you) (?:say|do|type)\??"),
    ("back", r"back|previous|prev|go back|undo"),
    ("next", r"|next|continue|ok|okay|yes|y|accept|go on|sounds good|looks good|fine"),
    ("how_long", r"how long(?: will (?:it|this|training) take)?|time|eta|duration|how much time"),
    (
        "what_fits",
        r"what fits|what will fit|what would fit|which fit|which methods fit|options|candidates|what are my options",
    ),
    ("hardware", r"hardware|hw|gpus?|what do i have|what hardware do i have|devices?"),
    ("launch", r"launch|start|train|go|run|start training|launch it|start it"),
    ("preflight", r"pre-?flight|check|dry run|test run|measure"),
)


#: Short LoRA target names people type (``targets q,v``), as the modules are called.
TARGET_SHORTHANDS = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}

#: (intent kind, the words before the value, the value's pattern) for the run.toml settings.
STATED_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("set_targets", r"(?:lora[ _-]?)?(?:targets|target[ _-]?modules)", r"([\w.,\s-]+)"),
    (
        "set_checkpointing",
        r"(?:gradient[ _-]?)?(?:checkpointing|ckpt)",
        r"(on|off|auto|true|false|yes|no)",
    ),
    ("set_optimizer", r"optimi[sz]er|optim", r"([\w-]+)"),
    ("set_precision", r"precision|dtype", r"([\w-]+)"),
    ("set_attention", r"attention|attn(?:[ _-]?implementation)?", r"([\w-]+)"),
    ("set_dropout", r"(?:lora[ _-]?)?dropout", r"(\d+(?:\.\d+)?)"),
)


def _stated_setting(line: str) -> Intent | None:
    """``targets q,v``, ``checkpointing off``, ``optimizer adamw8bit``... (None if not one)."""
    for kind, words, value in STATED_SETTINGS:
        match = re.fullmatch(rf"(?:set\s+)?(?:{words})\s*(?:[:=]|to|is)?\s*{value}", line)
        if not match:
            continue
        raw = match.group(1).strip()
        if kind == "set_targets":
            names = [n for n in re.split(r"[,\s]+", raw) if n]
            if names in (["all"], ["all-linear"], ["all_linear"]):
                return Intent(kind, ("all-linear",), line)
            return Intent(kind, tuple(TARGET_SHORTHANDS.get(n, n) for n in names), line)
        if kind == "set_checkpointing":
            on = {"on": True, "true": True, "yes": True, "off": False, "false": False}
            return Intent(kind, on.get(raw, None if raw == "auto" else False), line)
        if kind == "set_dropout":
            return Intent(kind, float(raw), line)
        return Intent(kind, raw, line)
    return None


def parse_intent(text: str) -> Intent:
    """Parse one typed line into an `Intent` (``unknown`` when nothing matches).

    Matching is case-insensitive and forgiving about punctuation: ``"Why not FULL?"``,
    ``"lr=1e-4"`` and ``"max length: 1024"`` all parse.
    """
    stripped = text.strip()
    line = re.sub(r"\s+", " ", stripped.lower()).strip(" .!")
    line = re.sub(r"^(?:please|pls|ok|okay|so|and|then)\s+", "", line).strip()
    bare = line.rstrip("?").strip() if line != "?" else line
    for kind, pattern in _SIMPLE:
        if re.fullmatch(pattern, bare):
            return Intent(kind, None, stripped)
    demo = re.fullmatch(
        r"(?:run |start |try )?(?:the )?demo(?: (chat|classify|classification))?", bare
    )
    if demo:
        key = "classify" if demo.group(1) in (None, "classification") else demo.group(1)
        return Intent("demo", key, stripped)

    match = re.fullmatch(r"why(?: not)?(?: use)?(?: the)?\s*(.*?)\??", line)
    if match:
        negated = line.startswith("why not")
        method = method_from_words(match.group(1)) if match.group(1) else None
        if match.group(1) and method is None:
            return Intent("unknown", None, stripped)
        if negated and method:
            return Intent("why_not", method, stripped)
        return Intent("why", method, stripped)

    match = re.fullmatch(r"(?:use|switch to|try|pick|choose|go with|method)\s*[:=]?\s*(.+)", line)
    if match and (method := method_from_words(match.group(1))):
        return Intent("use_method", method, stripped)
    if method := method_from_words(line):
        return Intent("use_method", method, stripped)

    gpus = _gpu_count(bare)
    if gpus is not None:
        return Intent("use_gpus", gpus, stripped)

    gpu = _gpu_phrase(line)
    if gpu is not None:
        return Intent("plan_for_gpu", gpu or None, stripped)

    stated = _stated_setting(line)
    if stated is not None:
        return Intent(stated.kind, stated.value, stripped)

    for kind, words, kind_type in _SETTINGS:
        number = None
        forward = re.fullmatch(rf"(?:set\s+)?(?:{words})\s*(?:[:=]|to|of|is)?\s*{_NUMBER}", line)
        backward = re.fullmatch(rf"{_NUMBER}\s*(?:{words})", line)
        if forward:
            number = forward.group(1)
        elif backward and kind in ("set_epochs", "set_seq_len"):
            number = backward.group(1)
        if number is not None:
            try:
                value = _number(number)
            except ValueError:
                return Intent("unknown", None, stripped)
            return Intent(kind, kind_type(value) if kind_type is int else value, stripped)

    match = re.fullmatch(
        r"(?:go to|goto|change(?: the)?|edit(?: the)?|back to(?: the)?)\s+(\w+)", line
    )
    if match and match.group(1) in GOTO_STEPS:
        return Intent("goto", match.group(1), stripped)
    return Intent("unknown", None, stripped)


#: The multi-GPU strategies as people type them, to run.toml's words.
STRATEGY_ALIASES = {
    "ddp": "ddp",
    "fsdp": "fsdp",
    "zero2": "zero2",
    "zero-2": "zero2",
    "zero 2": "zero2",
    "zero3": "zero3",
    "zero-3": "zero3",
    "zero 3": "zero3",
}


def _gpu_count(line: str) -> tuple[int, str | None] | None:
    """``use 4 gpus``, ``4 gpus with fsdp``, ``gpus 2``, ``use one gpu``: (count, strategy)."""
    strategies = "|".join(re.escape(k) for k in STRATEGY_ALIASES)
    tail = rf"(?:\s+(?:with|using|via|and)\s+({strategies}))?"
    lead = r"(?:(?:use|with|on|try|train on|run on|spread over)\s+)?"
    match = re.fullmatch(rf"{lead}(\d+|one|all)\s+gpus?{tail}", line) or re.fullmatch(
        rf"gpus?\s*[:=]?\s*(\d+){tail}", line
    )
    if not match:
        return None
    word = match.group(1)
    count = {"one": 1, "all": -1}.get(word)
    value = count if count is not None else int(word)
    strategy = STRATEGY_ALIASES.get(match.group(2)) if match.group(2) else None
    return value, strategy


_GPU_LEADS = (
    r"what if i had",
    r"what if i have",
    r"what if i used",
    r"what about",
    r"plan for",
    r"plan on",
    r"plan as if i had",
    r"plan with",
    r"as if i had",
    r"if i had",
    r"on",
    r"with",
    r"for",
    r"target",
    r"gpu",
    r"use",
)


def _gpu_phrase(line: str) -> str | None:
    """The GPU named in a "what if I had a 4090" phrase; ``""`` for "my GPU"; None if not one.

    Only phrases that start with one of `_GPU_LEADS` count, and the name must contain a
    digit or a known GPU family word, so "plan for success" is not taken for a GPU.
    """
    leads = "|".join(_GPU_LEADS)
    match = re.fullmatch(rf"(?:{leads})\s+(?:an?|the|one|my|this)?\s*(.+?)\s*\??", line)
    if not match:
        return None
    name = match.group(1).strip()
    name = re.sub(r"\s+(?:instead|then|gpu|card)$", "", name).strip()
    if name in (
        "gpu",
        "own gpu",
        "real gpu",
        "detected gpu",
        "machine",
        "hardware",
        "own hardware",
    ):
        return ""
    family = r"(?:rtx|gtx|tesla|quadro|a\d+|h\d+|l\d+|v100|t4|p100|k80|titan|mi\d+|b\d+|\d{4})"
    if re.search(family, name) and not method_from_words(name):
        return name
    return None
