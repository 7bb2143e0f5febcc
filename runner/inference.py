"""Talk to a fine-tuned model next to its base model: streaming chat and classification.

The playground and the demo ask the same question twice, once of the tuned model and once
of the base. With a LoRA-family run the base is *the same loaded model* with its adapter
switched off (peft's ``disable_adapter()``), so a 7B model is loaded once, not twice. A full
or layer-freeze run saves whole weights, so there the base is loaded separately, on demand.

A question is put to the model as training put its examples (`ChatSession.encode`, through
`affiner.runner.data.render.prompt_ids`): the chat template's generation prompt, or affiner's
plain ``### User:`` layout for a tokenizer without one, token for token.

Generation runs in its own thread and yields text as it is produced
(`transformers.TextIteratorStreamer`); the caller iterates from wherever it likes (the TUI
does it from a thread worker and posts each piece to the screen). One generation at a time:
the adapter switch is model-wide state, so concurrent calls are serialised by a lock.

`ChatSession` loads the models in the calling process (the headless demo does, a CLI that
trains anyway). `ChatProcess` offers the same calls but loads them in a child process
(``python -m affiner.runner.chat RUN_DIR``, see `affiner.runner.chat` for the protocol), so the
TUI's playground never holds torch, the model's memory or a CUDA context, and closing it gives
all of that back. `ChatProcess` lives in `affiner.runner.chat_client` (standard library only)
and is re-exported here, where the TUI imports it from.

torch, transformers and peft are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.chat_client import CHAT_MODULE as CHAT_MODULE
from affiner.runner.chat_client import CHAT_STOP_GRACE_SECONDS as CHAT_STOP_GRACE_SECONDS
from affiner.runner.chat_client import ChatProcess as ChatProcess
from affiner.runner.chat_client import Message as Message
from affiner.runner.chat_client import Prediction as Prediction
from affiner.runner.chat_client import _run_settings
from affiner.runner.chat_client import find_adapter as find_adapter


def _device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class ChatSession:
    """A base model and (optionally) the weights a run trained, loaded once.

    Args:
        base: the base model's folder or cached hub id.
        adapter: the run's ``adapter/`` folder (a PEFT adapter or a whole model), or None to
            chat with the base only.
        task: ``causal_lm`` (chat) or ``classification``.
        labels: class names in id order, for classification (else the model config's).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        trust_remote_code: run the model repository's own code; off unless asked for.
    """

    def __init__(
        self,
        base: str | Path,
        adapter: str | Path | None = None,
        *,
        task: str = "causal_lm",
        labels: Sequence[str] = (),
        device: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.base = str(base)
        self.adapter = Path(adapter) if adapter is not None else None
        self.task = task
        self.labels = list(labels)
        self.requested_device = device
        self.trust_remote_code = trust_remote_code
        self.tokenizer: Any = None
        self.model: Any = None
        self._base_model: Any = None  # only for whole-model runs (full, freeze)
        self._lock = threading.Lock()
        #: For a classifier: True when the base checkpoint holds no classification head, so
        #: the base side answers with a freshly initialised, random one (its scores are
        #: chance, not the base model's skill); None until known, and for chat runs.
        self.base_head_untrained: bool | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs: Any) -> ChatSession:
        """The session for a run folder: base, task and labels from its ``run.toml``.

        A classifier whose ``run.toml`` lists no labels (training detected them from the
        data) gets them from `detected_labels`, so answers name the classes, not ``LABEL_0``.
        """
        settings = _run_settings(run_dir)
        if settings["task"] == "classification" and not settings["labels"]:
            settings["labels"] = detected_labels(run_dir, settings["adapter"])
        return cls(**settings, **kwargs)

    @property
    def is_peft(self) -> bool:
        return self.adapter is not None and (self.adapter / "adapter_config.json").exists()

    @property
    def has_chat_template(self) -> bool:
        self.load()
        return bool(getattr(self.tokenizer, "chat_template", None))

    # -- loading ---------------------------------------------------------------------
    def _auto_class(self) -> Any:
        import transformers

        if self.task == "classification":
            return transformers.AutoModelForSequenceClassification
        return transformers.AutoModelForCausalLM

    def _load_plain(self, ref: str) -> Any:
        kwargs: dict[str, Any] = {
            "dtype": _dtype(self.device),
            "trust_remote_code": self.trust_remote_code,
        }
        if self.task == "classification" and self.labels:
            kwargs["num_labels"] = len(self.labels)
            kwargs["id2label"] = dict(enumerate(self.labels))
            kwargs["label2id"] = {name: i for i, name in enumerate(self.labels)}
        if self.task != "classification":
            model = self._auto_class().from_pretrained(ref, **kwargs)
            return model.to(self.device).eval()
        model, info = self._auto_class().from_pretrained(ref, output_loading_info=True, **kwargs)
        if ref == self.base:
            # weights the checkpoint lacks were initialised at random: the head, for a base
            # that was never a classifier
            self.base_head_untrained = bool(info.get("missing_keys"))
        return model.to(self.device).eval()

    def load(self) -> ChatSession:
        """Load tokenizer, base and adapter (once; later calls return at once)."""
        if self.model is not None:
            return self
        from transformers import AutoTokenizer

        self.device = _device(self.requested_device)
        tokenizer_from = self.adapter if self._has_tokenizer(self.adapter) else self.base
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(tokenizer_from), trust_remote_code=self.trust_remote_code
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.adapter is None:
            self.model = self._load_plain(self.base)
        elif self.is_peft:
            from peft import PeftModel

            base = self._load_plain(self.base)
            self.model = PeftModel.from_pretrained(base, str(self.adapter)).to(self.device).eval()
        else:
            self.model = self._load_plain(str(self.adapter))
            if self.task == "classification":
                self.base_head_untrained = not _has_classifier_head(self.base)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        return self

    @staticmethod
    def _has_tokenizer(folder: Path | None) -> bool:
        return folder is not None and (folder / "tokenizer_config.json").exists()

    @contextlib.contextmanager
    def _model_for(self, use_adapter: bool) -> Iterator[Any]:
        """The tuned model, or the base: the same model with the adapter off when it is PEFT."""
        if use_adapter or self.adapter is None:
            yield self.model
        elif self.is_peft:
            with self.model.disable_adapter():
                yield self.model
        else:
            if self._base_model is None:
                self._base_model = self._load_plain(self.base)
            yield self._base_model

    # -- chat ----------------------------------------------------------------------------
    def encode(self, messages: Sequence[Message]) -> Any:
        """Token ids for `messages`, built as training built the prompts it learned to answer.

        `affiner.runner.data.render.prompt_ids`: the chat template with its generation prompt
        when the tokenizer has one, else affiner's plain layout up to ``### Assistant:``, so a
        model tuned on chat, instruction or prompt/completion rows is asked in its training's form.

        Raises:
            AffinerError: the chat template refuses the conversation.
        """
        import torch

        from affiner.runner.data.formats import RowProblem
        from affiner.runner.data.render import prompt_ids

        self.load()
        try:
            ids = prompt_ids(list(messages), self.tokenizer)
        except RowProblem as problem:
            raise AffinerError(
                str(problem),
                hint="ask with user and assistant turns that alternate, starting with the user",
            ) from None
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def stream(
        self,
        messages: Sequence[Message],
        use_adapter: bool = True,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[str]:
        """Yield the reply to `messages` piece by piece as the model writes it.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``.
            use_adapter: False answers with the base model.
            max_new_tokens: the longest reply.
            temperature: 0 is greedy (the same answer every time); above 0 samples.
            stop: asked after every token; True ends the reply there (a cancelled question
                stops the model instead of letting it write `max_new_tokens` for nobody).
        """
        if self.task == "classification":
            raise AffinerError(
                "this run trained a classifier: it predicts labels, it does not chat",
                hint="use classify(texts)",
            )
        from transformers import TextIteratorStreamer

        with self._lock:
            inputs = self.encode(messages)
            streamer = TextIteratorStreamer(
                self.tokenizer, skip_prompt=True, skip_special_tokens=True
            )
            settings: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "do_sample": temperature > 0,
                "pad_token_id": self.tokenizer.pad_token_id,
                "streamer": streamer,
            }
            if temperature > 0:
                settings |= {"temperature": temperature, "top_p": 0.95}
            if stop is not None:
                settings["stopping_criteria"] = _stopping_criteria(stop)
            failure: list[BaseException] = []

            def generate() -> None:
                try:
                    with self._model_for(use_adapter) as model:
                        model.generate(**inputs, **settings)
                except BaseException as error:  # re-raised in the caller's thread below
                    failure.append(error)
                    streamer.end()

            thread = threading.Thread(target=generate, name="affiner-generate", daemon=True)
            thread.start()
            try:
                yield from streamer
            finally:
                thread.join()
            if failure:
                raise failure[0]

    def generate(self, messages: Sequence[Message], use_adapter: bool = True, **kwargs: Any) -> str:
        """The whole reply at once (`stream` joined)."""
        return "".join(self.stream(messages, use_adapter, **kwargs))

    # -- classification --------------------------------------------------------------------
    def classify(self, texts: Sequence[str], use_adapter: bool = True) -> list[Prediction]:
        """Each text's predicted label with the probability of every label."""
        import torch

        if self.task != "classification":
            raise AffinerError(
                "this run trained a generator, not a classifier", hint="use stream(messages)"
            )
        self.load()
        with self._lock, torch.no_grad(), self._model_for(use_adapter) as model:
            batch = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True)
            batch = {
                k: v.to(self.device)
                for k, v in batch.items()
                if k in ("input_ids", "attention_mask")
            }
            probs = torch.softmax(model(**batch).logits.float(), dim=-1).cpu()
        id2label = getattr(model.config, "id2label", None) or {}
        names = self.labels or [str(id2label.get(i, i)) for i in range(probs.shape[-1])]
        predictions = []
        for row in probs.tolist():
            scores = {names[i]: float(p) for i, p in enumerate(row)}
            predictions.append(Prediction(max(scores, key=scores.__getitem__), scores))
        return predictions


def detected_labels(run_dir: str | Path, weights: str | Path | None = None) -> list[str]:
    """A classifier's class names when ``run.toml`` lists none: as training found them.

    The saved model's ``id2label`` when it names them (a whole-model run saves its config;
    ``LABEL_0``-style names say nothing), else the labels of the run's data, read as training
    read it (`affiner.runner.data.load_rows`). Empty when neither can be read (the data moved):
    the model's own ``id2label`` is shown then.
    """
    import json

    config = Path(weights) / "config.json" if weights is not None else None
    if config is not None and config.exists():
        try:
            id2label = json.loads(config.read_text(encoding="utf-8")).get("id2label") or {}
            names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (OSError, ValueError, TypeError, AttributeError):
            names = []
        if names and not all(name == f"LABEL_{i}" for i, name in enumerate(names)):
            return names
    from affiner.runner.config import load_config
    from affiner.runner.data import load_rows

    try:
        cfg = load_config(Path(run_dir) / "run.toml")
        return list(load_rows(cfg.data, task=cfg.model.task).labels)
    except (AffinerError, OSError, ValueError):
        return []


def _has_classifier_head(base: str) -> bool:
    """Whether the base checkpoint was saved from a sequence classifier (its head is trained).

    Used where the base is not loaded yet (a whole-model run loads it for its first answer):
    its config's ``architectures`` say what class saved it.
    """
    from transformers import AutoConfig

    try:
        architectures = AutoConfig.from_pretrained(base).architectures or []
    except (OSError, ValueError):
        return False
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def _stopping_criteria(stop: Callable[[], bool]) -> Any:
    """A `transformers.StoppingCriteriaList` that ends generation once `stop()` says so."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = bool(stop())
            return torch.full(
                (input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device
            )

    return StoppingCriteriaList([_Stop()])
