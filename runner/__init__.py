"""affiner's runner: the only place that trains.

Its contract with everything else is the run folder: ``run.toml`` says what to do,
``events.jsonl`` says what happened, ``status.json`` says where it stands. The TUI and the CLI
import only the faces of the rooms below (and `inference`); importing them is cheap, and torch
and its friends load in the training process only.

Rooms:
    run: the run folder and the worker process (layout, events, status, summaries, launch,
        stop, resume, checkpoints).
    config: ``run.toml`` (its shape, reading and writing, checks, the run.toml a plan becomes).
    data: reading, validating and rendering training data.
    training: the training process's parts (model loading, Trainer setup, callbacks, metrics,
        the pre-flight check); the only room that imports torch at module level.
    demo: the offline demos and the conversion of packaged models.
Modules:
    worker: ``python -m affiner.runner.worker RUN_DIR [--resume] [--preflight-only]``.
    train: the recipe, top to bottom (`run_training`).
    inference: chatting with the base model and the tuned one: `ChatSession` in this process
        (the demo), `ChatProcess` through a child (the playground).
    chat: that child, ``python -m affiner.runner.chat RUN_DIR [--exit-with-parent]``.
    export: ``python -m affiner.runner.export RUN_DIR``: merged safetensors, a GGUF and an
        Ollama Modelfile from a finished run (`export_run`); the CLI and the TUI start it as a child.
    export_gguf: llama.cpp's converter (found, run) and the Ollama Modelfile, for `export`.
    baseline: ``python -m affiner.runner.baseline``: the child that measures what a CPU
        training process holds before its model exists (the planner's CPU baseline).
    chat_client: `ChatProcess`, the TUI's client for that child (standard library only;
        `inference` re-exports it).
"""

__all__ = [
    "chat",
    "chat_client",
    "config",
    "data",
    "demo",
    "export",
    "inference",
    "run",
    "train",
    "training",
    "worker",
]
