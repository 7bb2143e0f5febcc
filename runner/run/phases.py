"""The silent phases a run's ``progress`` events name, and their words.

Between training logs a run can go quiet for minutes: reading the data, loading the model,
the base model's evaluation, an evaluation mid-run, a checkpoint, the final save. The worker
names each phase in a `affiner.runner.run.events.Progress` event; the monitor, ``affiner
attach`` and the foreground log say it in the same words, from this one table.
"""

from __future__ import annotations

#: Phases a `Progress` event names: the untouched model's evaluation before the first step,
#: one during training, a checkpoint being written. A reader shows an unknown one by its name.
BASE_EVAL, EVAL, SAVE = "base_eval", "eval", "save"
#: The worker's own silent phases before training and after it (counted by nothing: 0 of 0).
PREPARE_DATA, LOAD_MODEL, SAVE_OUTPUTS = "prepare_data", "load_model", "save_outputs"
PHASES = (PREPARE_DATA, LOAD_MODEL, BASE_EVAL, EVAL, SAVE, SAVE_OUTPUTS)
#: Not a silent phase (train logs say how it goes) and never in a `Progress` event: the words
#: ``status.json``'s message carries while the optimizer steps run, between the phases above.
TRAIN = "train"
#: The worker's pre-flight before a long run, as ``status.json``'s message names it.
PREFLIGHT = "preflight"
#: The pre-flight's phases (`affiner.runner.run.preflight`), in its child's progress events and,
#: when the worker runs it before a long run, in the run's own log. `PREFLIGHT_START` is its
#: caller's: the child has said nothing yet while Python and the libraries load.
PREFLIGHT_START = "preflight_start"
PREFLIGHT_LOAD = "preflight_load"
PREFLIGHT_TRAIN = "preflight_train"
PREFLIGHT_EVAL = "preflight_eval"
PREFLIGHT_SAVE = "preflight_save"
PREFLIGHT_PHASES = (
    PREFLIGHT_START,
    PREFLIGHT_LOAD,
    PREFLIGHT_TRAIN,
    PREFLIGHT_EVAL,
    PREFLIGHT_SAVE,
)
#: Each phase in words, for the monitor, ``affiner attach`` and the worker's own log: what is
#: happening (``{step}`` is the event's step) and what its count counts. An unknown phase is
#: shown by its name.
PHASE_WORDS: dict[str, tuple[str, str]] = {
    PREPARE_DATA: ("reading and tokenizing the data", ""),
    TRAIN: ("training", ""),
    PREFLIGHT: ("pre-flight check: measuring memory and step time before the long run", ""),
    LOAD_MODEL: ("loading the model", ""),
    BASE_EVAL: ("evaluating the base model", "batches"),
    EVAL: ("evaluating at step {step}", "batches"),
    SAVE: ("saving the checkpoint of step {step}", ""),
    SAVE_OUTPUTS: ("saving the trained weights and the model card", ""),
    PREFLIGHT_START: ("pre-flight: starting the check (Python and the libraries load first)", ""),
    PREFLIGHT_LOAD: ("pre-flight: loading the tokenizer, the data and the model", ""),
    PREFLIGHT_TRAIN: ("pre-flight: timing real steps", "micro-batches"),
    PREFLIGHT_EVAL: ("pre-flight: evaluating one batch", ""),
    PREFLIGHT_SAVE: ("pre-flight: saving a test checkpoint (then removed)", ""),
}


def phase_words(phase: str, step: int = 0) -> tuple[str, str]:
    """What `phase` is doing in words, and the unit of its count ("" when nothing is counted)."""
    what, unit = PHASE_WORDS.get(phase, (phase.replace("_", " "), ""))
    return what.format(step=step), unit
