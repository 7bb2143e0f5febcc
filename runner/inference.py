"""Talk to a fine-tuned model next to its base model: streaming chat and classification.

The playground and the demo ask the same question twice, once of the tuned model and once
of the base. With a LoRA-family run the base is *the same loaded model* with its adapter
switched off (peft's ``disable_adapter()``), so a 7B model is loaded once, not twice. A full
or layer-freeze run saves whole weights, so there the base is loaded separately, on demand.

Generation runs in its own thread and yields text as it is produced
(`transformers.TextIteratorStreamer`); the caller iterates from wherever it likes (the TUI
does it from a thread worker and posts each piece to the screen). One generation at a time:
the adapter switch is model-wide state, so concurrent calls are serialised by a lock.

`ChatSession` loads the models in the calling process (the headless demo does, a CLI that
trains anyway). `ChatProcess` offers the same calls but loads them in a child process
(``python -m affiner.runner.chat RUN_DIR``, see `affiner.runner.chat` for the protocol), so the
TUI's playground never holds torch, the model's memory or a CUDA context, and closing it gives
all of that back.

torch, transformers and peft are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.run import child_env, exit_words, saved_weights, stop_process_group

Message = dict[str, str]


@dataclass(frozen=True)
class Prediction:
    """One text's predicted class and every class's probability (they sum to 1)."""

    label: str
    probabilities: dict[str, float]


def find_adapter(run_dir: str | Path) -> Path:
    """The weights a run left: ``adapter/``, else the best checkpoint, else the newest complete one.

    The folders and their order are `affiner.runner.run.saved_weights`'s; the first that
    holds a model (``adapter_config.json`` or ``config.json``) is the answer.

    Raises:
        AffinerError: the run has saved nothing yet.
    """
    root = Path(run_dir)
    for folder in saved_weights(root):
        if (folder / "adapter_config.json").exists() or (folder / "config.json").exists():
            return folder
    raise AffinerError(
        f"the run in {root} has no saved weights yet",
        hint="wait for the first checkpoint (or the end of training), then open the playground again",
        where=str(root),
    )


def _run_settings(run_dir: str | Path) -> dict[str, Any]:
    """What chatting with a run loads (base, weights, task, labels), read from its ``run.toml``.

    Raises:
        AffinerError: the configuration cannot be read, or the run has saved nothing yet.
    """
    from affiner.runner.config import load_config
    from affiner.runner.run import RunDir

    run = RunDir(Path(run_dir))
    cfg = load_config(run.config)
    return {
        "base": cfg.model.name_or_path,
        "adapter": find_adapter(run.path),
        "task": cfg.model.task,
        "labels": cfg.data.labels,
        "trust_remote_code": cfg.model.trust_remote_code,
    }


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

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs: Any) -> ChatSession:
        """The session for a run folder: base, task and labels from its ``run.toml``."""
        return cls(**_run_settings(run_dir), **kwargs)

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
        model = self._auto_class().from_pretrained(ref, **kwargs)
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
        """Token ids for `messages`: the chat template when the tokenizer has one, else the
        contents joined by blank lines (a base model without a template just continues text)."""
        self.load()
        if getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        else:
            text = "\n\n".join(m["content"] for m in messages)
            encoded = self.tokenizer(text, return_tensors="pt")
        return {
            k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")
        }

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


#: The module the chat process runs (`affiner.runner.chat`).
CHAT_MODULE = "affiner.runner.chat"
#: Seconds the chat process gets to leave once its stdin closes, then SIGINT, then SIGKILL.
CHAT_STOP_GRACE_SECONDS = 5.0
#: Exit codes after which the chat process's log says nothing worth keeping (it ended as
#: asked, or said why in words): 0, a load error (2), SIGINT (130, or killed by it).
_CLEAN_EXITS = (0, 2, 130, -2)


class ChatProcess:
    """`ChatSession`'s calls (`load`, `stream`, `generate`, `classify`) answered by a child process.

    The child (``python -m affiner.runner.chat RUN_DIR --exit-with-parent``) runs in its own
    session with its stdin and stdout as pipes, one JSON object a line each way; it loads the
    models once, on `load`. Its errors come back as `AffinerError` in its words; if it dies, the
    error says how, and its log (stderr, in the temporary folder) is kept and named.

    The child ends with `close` (stdin closed, then SIGINT, then SIGKILL to its group), when
    this object is garbage-collected or this interpreter exits, and, when the caller dies
    outright, because the closed stdin pipe ends a child started with ``--exit-with-parent``.

    Only the standard library is imported here: the TUI uses this.

    Args:
        run_dir: the run folder; its ``run.toml`` says the base, task and labels, and its saved
            weights (`find_adapter`) are loaded. Both are read now, so a run with nothing saved
            fails here, before a process is started.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``, for the child.
        python: the interpreter for the child (default this one).
    """

    def __init__(
        self, run_dir: str | Path, *, device: str = "auto", python: str | None = None
    ) -> None:
        self.run_dir = Path(run_dir).expanduser().resolve()
        settings = _run_settings(self.run_dir)
        self.base: str = str(settings["base"])
        self.adapter: Path | None = settings["adapter"]
        self.task: str = settings["task"]
        self.labels: list[str] = list(settings["labels"])
        self.requested_device = device
        self.device: str | None = None  # the child's, once loaded
        self.python = python
        self.log: Path | None = None
        self._ready: dict[str, Any] = {}
        self._child: subprocess.Popen[str] | None = None
        self._stopper: weakref.finalize | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # one request (and its answer) at a time
        self._closed = False

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs: Any) -> ChatProcess:
        """The same as the constructor; named as `ChatSession.from_run` is."""
        return cls(run_dir, **kwargs)

    @property
    def is_peft(self) -> bool:
        return self.adapter is not None and (self.adapter / "adapter_config.json").exists()

    @property
    def has_chat_template(self) -> bool:
        self.load()
        return bool(self._ready.get("has_chat_template"))

    @property
    def pid(self) -> int | None:
        """The child's process id, once started."""
        return self._child.pid if self._child is not None else None

    # -- the child -------------------------------------------------------------------------
    def load(self) -> ChatProcess:
        """Start the child and wait until it has loaded the models (once; later calls return).

        Raises:
            AffinerError: the child could not load them (its words), or it died.
        """
        with self._lock:
            if self._closed:
                raise AffinerError("this chat was closed", hint="open the run again")
            if self._child is None:
                self._start()
            elif self._child.poll() is not None:
                raise self._died()
        return self

    def _start(self) -> None:
        argv = [
            self.python or sys.executable,
            "-m",
            CHAT_MODULE,
            str(self.run_dir),
            "--device",
            self.requested_device,
            "--exit-with-parent",
        ]
        fd, name = tempfile.mkstemp(prefix=f"affiner-chat-{self.run_dir.name}-", suffix=".log")
        self.log = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} affiner: {' '.join(argv)}\n")
            log.flush()
            self._child = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.run_dir,
                env=child_env(),
                start_new_session=True,
                close_fds=True,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        self._stopper = weakref.finalize(self, _stop_child, self._child, self.log)
        answer = self._read()
        if answer.get("type") != "ready":
            self._closed = True
            self._stopper()
            raise _error(answer)
        self._ready = answer
        self.device = answer.get("device")

    def close(self) -> None:
        """Stop the child (if started) and give its memory back; later calls raise."""
        self._closed = True
        if self._stopper is not None:
            self._stopper()

    def __enter__(self) -> ChatProcess:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------
    def stream(
        self,
        messages: Sequence[Message],
        use_adapter: bool = True,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
    ) -> Iterator[str]:
        """Yield the reply piece by piece as the child's model writes it (see `ChatSession.stream`).

        Leaving the loop early (closing the iterator) cancels the reply: the child stops
        generating and the next request starts at once.
        """
        self.load()
        with self._lock:
            request_id = self._send(
                "stream",
                messages=[dict(m) for m in messages],
                use_adapter=use_adapter,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
            )
            finished = False
            try:
                while True:
                    answer = self._answer_to(request_id)
                    if answer["type"] == "piece":
                        yield str(answer.get("text", ""))
                    elif answer["type"] == "done":
                        finished = True
                        return
                    else:
                        finished = True
                        raise _error(answer)
            finally:
                if not finished:
                    self._abandon(request_id)

    def generate(self, messages: Sequence[Message], use_adapter: bool = True, **kwargs: Any) -> str:
        """The whole reply at once (`stream` joined)."""
        return "".join(self.stream(messages, use_adapter, **kwargs))

    def classify(self, texts: Sequence[str], use_adapter: bool = True) -> list[Prediction]:
        """Each text's predicted label with the probability of every label (see `ChatSession.classify`)."""
        self.load()
        with self._lock:
            request_id = self._send("classify", texts=list(texts), use_adapter=use_adapter)
            answer = self._answer_to(request_id)
        if answer["type"] != "predictions":
            raise _error(answer)
        return [
            Prediction(str(p["label"]), {str(k): float(v) for k, v in p["probabilities"].items()})
            for p in answer.get("predictions", [])
        ]

    # -- the pipes -------------------------------------------------------------------------
    def _send(self, op: str, **fields: Any) -> int:
        request_id = next(self._ids)
        child = self._child
        assert child is not None and child.stdin is not None
        try:
            child.stdin.write(json.dumps({"op": op, "id": request_id, **fields}) + "\n")
            child.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died() from None
        return request_id

    def _read(self) -> dict[str, Any]:
        """The child's next answer; its end (it died, or was stopped) raises `AffinerError`."""
        child = self._child
        assert child is not None and child.stdout is not None
        while True:
            try:
                line = child.stdout.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                raise self._died()
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue  # not the protocol's (the child sends only whole JSON lines)
            if isinstance(answer, dict) and "type" in answer:
                return answer

    def _answer_to(self, request_id: int) -> dict[str, Any]:
        """The next answer to `request_id` (an answer to an abandoned request is skipped)."""
        while True:
            answer = self._read()
            if answer.get("id") == request_id or answer.get("id") is None:
                return answer

    def _abandon(self, request_id: int) -> None:
        """Cancel a reply nobody reads any more and wait for its end, so the next one is clean."""
        child = self._child
        if child is None or child.stdin is None or self._closed:
            return
        with contextlib.suppress(AffinerError, BrokenPipeError, OSError, ValueError):
            child.stdin.write(json.dumps({"op": "cancel", "id": request_id}) + "\n")
            child.stdin.flush()
            while self._answer_to(request_id)["type"] == "piece":
                pass

    def _died(self) -> AffinerError:
        if self._closed:
            return AffinerError("this chat was closed", hint="open the run again")
        child = self._child
        code = None
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = child.wait(timeout=5)
        how = exit_words(code) if code is not None else "stopped answering"
        return AffinerError(
            f"the chat process {how}",
            hint=f"its log is {self.log}" if self.log is not None else None,
        )


def _error(answer: dict[str, Any]) -> AffinerError:
    """The child's ``error`` answer, raised again here as it was raised there."""
    if answer.get("type") != "error":
        return AffinerError(f"the chat process answered {answer.get('type')!r} out of turn")
    return AffinerError(
        str(answer.get("message") or "the chat process failed"),
        hint=answer.get("hint"),
        where=answer.get("where"),
    )


def _stop_child(
    child: subprocess.Popen[str], log: Path | None, grace: float = CHAT_STOP_GRACE_SECONDS
) -> None:
    """End the chat process: close its stdin (it leaves by itself), then SIGINT, then SIGKILL.

    Its log is removed when it ended cleanly, kept (for its traceback) when it did not.
    """
    with contextlib.suppress(OSError, ValueError):
        if child.stdin is not None:
            child.stdin.close()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        stop_process_group(child, grace)
    with contextlib.suppress(OSError, ValueError):
        if child.stdout is not None:
            child.stdout.close()
    if log is not None and child.poll() in _CLEAN_EXITS:
        log.unlink(missing_ok=True)
