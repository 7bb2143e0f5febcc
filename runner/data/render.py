"""Rows rendered to token ids with a loss mask: what the model reads, and what it learns from.

A row is first rendered to text plus the character spans that carry loss; tokenizing the whole
text at once (never piece by piece, which can merge differently) and mapping tokens back to
characters through the tokenizer's offsets gives the mask. Tokenizers without offsets fall back
to counting the tokens of text prefixes.

Train as served: chat, instruction and prompt/completion rows are all rendered as the
conversation the playground and `affiner.runner.inference.ChatSession` will later send
(`conversation`): instruction (and input) or prompt as the user turn, output or completion as
the assistant's, loss on the assistant's text only. `generation_prompt` builds the prompt at
inference with the same code, so the tokens a tuned model is asked with are the tokens it was
trained to answer after.

With a chat template, the assistant spans are found by rendering prefixes of the conversation:
the text added between ``messages[:i]`` with the generation prompt and ``messages[:i + 1]`` is
turn ``i``'s answer and its end-of-turn token. When the template rewrites history (so prefixes
do not line up) the answer is searched for in the full text instead.

A tokenizer without a chat template gets this one plain layout, for every conversational format
and at inference alike (the prompt ends with the assistant header, where the reply begins)::

    ### System:\\n{content}\\n\\n### User:\\n{content}\\n\\n### Assistant:\\n{content}<eos>\\n\\n

``text`` rows are the one format trained as written (loss on every token): a data set meant as
raw continuation, prompt and completion joined with no layout, belongs in a ``text`` column.
Every causal example ends with EOS (learned) unless the template already put it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affiner.runner.data.formats import RowProblem

IGNORE = -100
PLAIN_HEADERS = {
    "system": "### System:\n",
    "user": "### User:\n",
    "assistant": "### Assistant:\n",
    "tool": "### Tool:\n",
}

#: What ends every turn of the plain layout (after the assistant's EOS too).
PLAIN_SEPARATOR = "\n\n"
#: The formats rendered as a conversation (`conversation`); ``text`` is trained as written.
CONVERSATIONAL_FORMATS = ("chat", "instruction", "prompt_completion")


@dataclass
class Rendered:
    """Text to tokenize, the character spans that carry loss, and how to tokenize it."""

    text: str
    spans: list[tuple[int, int]]
    add_special_tokens: bool
    has_eos: bool = False


@dataclass
class Encoded:
    """One tokenized example.

    Attributes:
        input_ids: token ids after truncation.
        labels: per-token targets (``-100`` where no loss) for causal LM; the class id for
            classification.
        loss_mask: True for tokens that carry loss (all False for classification).
        length: tokens before truncation.
        truncated: True when `length` exceeded `max_seq_len`.
        text: the rendered text (EOS included when appended).
    """

    input_ids: list[int]
    labels: list[int] | int
    loss_mask: list[bool]
    length: int
    truncated: bool
    text: str


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def instruction_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """An Alpaca row as a conversation: instruction and input as the user turn."""
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input", "").strip() else "")
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [
        *messages,
        {"role": "user", "content": user},
        {"role": "assistant", "content": row["output"]},
    ]


def conversation(row: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    """A chat, instruction or prompt/completion row as the messages a chat client would send.

    A prompt/completion row is the question a user types and the answer wanted, so it is one
    user turn and one assistant turn: trained that way, the model answers the playground's
    question in the form it learned.
    """
    if fmt == "chat":
        return row["messages"]
    if fmt == "instruction":
        return instruction_messages(row)
    if fmt == "prompt_completion":
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    raise RowProblem(f"format {fmt!r} is not a conversation")


def render(row: dict[str, Any], fmt: str, tokenizer: Any) -> Rendered:
    """The text for `row` and its loss spans (see the module docstring for the layouts)."""
    if fmt == "text":
        return Rendered(row["text"], [(0, len(row["text"]))], True)
    if fmt not in CONVERSATIONAL_FORMATS:
        raise RowProblem(f"format {fmt!r} has no causal LM rendering")
    messages = conversation(row, fmt)
    if has_chat_template(tokenizer):
        return _render_chat(messages, tokenizer)
    return _render_plain(messages, tokenizer)


def _render_plain(messages: list[dict[str, str]], tokenizer: Any) -> Rendered:
    eos = getattr(tokenizer, "eos_token", None) or ""
    text, spans = "", []
    for message in messages:
        text += PLAIN_HEADERS[message["role"]]
        if message["role"] == "assistant":
            spans.append((len(text), len(text) + len(message["content"]) + len(eos)))
            text += message["content"] + eos + PLAIN_SEPARATOR
        else:
            text += message["content"] + PLAIN_SEPARATOR
    return Rendered(text, spans, True, has_eos=bool(eos))


def generation_prompt(messages: list[dict[str, str]], tokenizer: Any) -> Rendered:
    """The text a model is asked with to answer `messages`, rendered as training renders them.

    Through the chat template with its generation prompt when the tokenizer has one, else the
    plain layout up to the assistant header. The text is exactly the part of a training
    example that precedes the reply, so its tokens are the tokens training put before the loss.

    Raises:
        RowProblem: the chat template refuses the conversation.
    """
    if has_chat_template(tokenizer):
        return Rendered(_apply(tokenizer, list(messages), True), [], False)
    history = _render_plain(list(messages), tokenizer).text
    return Rendered(history + PLAIN_HEADERS["assistant"], [], True)


def prompt_ids(messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Token ids of `generation_prompt`, tokenized as training tokenizes its examples.

    Special tokens the tokenizer adds at the end of a text (an EOS some tokenizers append) are
    left out: in training they follow the whole example, never the prompt, and a prompt that
    ended with EOS would ask the model to stop before it starts.
    """
    rendered = generation_prompt(messages, tokenizer)
    ids = list(
        tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"]
    )
    if not rendered.add_special_tokens:
        return ids
    bare = list(tokenizer(rendered.text, add_special_tokens=False)["input_ids"])
    for start in range(len(ids) - len(bare) + 1):
        if ids[start : start + len(bare)] == bare:
            return ids[: start + len(bare)]
    return ids


def _apply(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja's own errors (raise_exception in templates) and TemplateError
        raise RowProblem(
            f"the chat template refused this conversation: {exc}",
            kind="refused by the chat template",
        ) from None


def _render_chat(messages: list[dict[str, str]], tokenizer: Any) -> Rendered:
    full = _apply(tokenizer, messages)
    eos = getattr(tokenizer, "eos_token", None) or ""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply(tokenizer, messages[:index], True) if index else ""
        upto = _apply(tokenizer, messages[: index + 1])
        if index and full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(upto)
        else:
            start = full.find(message["content"], cursor)
            if start < 0:
                raise RowProblem(
                    "the chat template changes the assistant's text, so its tokens cannot be found"
                )
            end = start + len(message["content"])
            if eos and full.startswith(eos, end):
                end += len(eos)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
        cursor = end
    has_eos = bool(eos) and bool(spans) and eos in full[spans[-1][0] : spans[-1][1]]
    return Rendered(full, spans, False, has_eos=has_eos)


def _mask_from_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """A token carries loss when its characters overlap a loss span (tokens the tokenizer added have none).

    Offsets and spans both run left to right, so one sweep does it.
    """
    ordered = sorted(spans)
    mask = []
    k = 0
    for start, end in offsets:
        while k < len(ordered) and ordered[k][1] <= start:
            k += 1
        mask.append(end > start and k < len(ordered) and ordered[k][0] < end)
    return mask


def _mask_from_prefixes(tokenizer: Any, rendered: Rendered, count: int) -> list[bool]:
    mask = [False] * count
    for s_start, s_end in rendered.spans:
        first = len(
            tokenizer(rendered.text[:s_start], add_special_tokens=rendered.add_special_tokens)[
                "input_ids"
            ]
        )
        last = len(
            tokenizer(rendered.text[:s_end], add_special_tokens=rendered.add_special_tokens)[
                "input_ids"
            ]
        )
        for i in range(first, min(last, count)):
            mask[i] = True
    return mask


def encode_causal(row: dict[str, Any], fmt: str, tokenizer: Any, max_seq_len: int) -> Encoded:
    """`row` as input ids and labels with loss only where `fmt` says, truncated to `max_seq_len`."""
    rendered = render(row, fmt, tokenizer)
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(
            rendered.text,
            add_special_tokens=rendered.add_special_tokens,
            return_offsets_mapping=True,
        )
        ids = list(encoding["input_ids"])
        mask = _mask_from_offsets([tuple(o) for o in encoding["offset_mapping"]], rendered.spans)
    else:
        ids = list(
            tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"]
        )
        mask = _mask_from_prefixes(tokenizer, rendered, len(ids))
    eos_id = getattr(tokenizer, "eos_token_id", None)
    text = rendered.text
    if eos_id is not None and not rendered.has_eos:
        if ids and ids[-1] == eos_id:  # the tokenizer added EOS itself: it still has to be learned
            mask[-1] = True
        else:
            ids.append(eos_id)
            mask.append(True)
            text += tokenizer.eos_token
    length = len(ids)
    ids, mask = ids[:max_seq_len], mask[:max_seq_len]
    labels = [token if keep else IGNORE for token, keep in zip(ids, mask, strict=True)]
    return Encoded(ids, labels, mask, length, length > max_seq_len, text)


def encode_classification(text: str, label_id: int, tokenizer: Any, max_seq_len: int) -> Encoded:
    """`text` as input ids (with the tokenizer's special tokens) and its class id."""
    ids = list(tokenizer(text)["input_ids"])
    length = len(ids)
    if length > max_seq_len:  # let the tokenizer truncate, so a closing special token survives
        ids = list(tokenizer(text, truncation=True, max_length=max_seq_len)["input_ids"])
    return Encoded(ids, label_id, [False] * len(ids), length, length > max_seq_len, text)
