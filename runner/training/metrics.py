"""Evaluation metrics: perplexity for language models, accuracy/precision/recall/F1 for classes.

numpy only (no scikit-learn dependency for four numbers). The Trainer hands `compute_metrics`
the whole evaluation set's predictions at once, so `preprocess_logits_for_metrics` reduces the
logits to class ids batch by batch first: the evaluation never holds a (rows x classes) float
matrix it does not need.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: exp(loss) overflows quickly for an untrained model; the event carries this cap instead.
PERPLEXITY_CAP = 1e6


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped at `PERPLEXITY_CAP`; None when the loss is missing or not finite."""
    if loss is None or not math.isfinite(loss):
        return None
    if loss > math.log(PERPLEXITY_CAP):
        return PERPLEXITY_CAP
    return math.exp(loss)


def classification_scores(
    predictions: np.ndarray, labels: np.ndarray, num_labels: int | None = None
) -> dict[str, float]:
    """Accuracy and macro-averaged precision, recall and F1 over the classes.

    Macro averaging weighs every class equally, so a model that always answers the majority
    class scores badly even on an unbalanced set. A class that is never predicted has
    precision 0; one that never occurs has recall 0 (both still count in the macro mean when
    they appear in either the predictions or the labels).

    Args:
        predictions: predicted class ids, shape (n,).
        labels: true class ids, shape (n,); entries < 0 (ignored rows) are left out.
        num_labels: number of classes; detected from the data when None.
    """
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    keep = labels >= 0
    predictions, labels = predictions[keep], labels[keep]
    if labels.size == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    if num_labels is None:
        num_labels = int(max(predictions.max(initial=0), labels.max(initial=0))) + 1
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, np.clip(predictions, 0, num_labels - 1)), 1)
    true_pos = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    present = (predicted + actual) > 0
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    return {
        "accuracy": float(true_pos.sum() / labels.size),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }


def preprocess_logits_for_metrics(logits: Any, labels: Any) -> Any:
    """Reduce a classification batch's logits to predicted ids before the Trainer gathers them."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def make_compute_metrics(num_labels: int):
    """A `compute_metrics` for the Trainer of a classification run with `num_labels` classes."""

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.asarray(predictions)
        if predictions.ndim > 1:  # raw logits (no preprocessing was applied)
            predictions = predictions.argmax(axis=-1)
        return classification_scores(predictions, np.asarray(labels), num_labels)

    return compute_metrics


class OverfitDetector:
    """Notices the evaluation loss rising while the training loss keeps falling.

    It fires once per rising streak: when the eval loss has gone up at `patience` evaluations
    in a row and the latest training loss is below the one seen when the streak began. A
    falling training loss is what separates overfitting from a learning rate that is too high
    (where both rise).
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.train_loss: float | None = None
        self.last_eval: float | None = None
        self.rising = 0
        self.anchor_train: float | None = None
        self.fired = False

    def observe_train(self, loss: float | None) -> None:
        if loss is not None and math.isfinite(loss):
            self.train_loss = loss

    def observe_eval(self, eval_loss: float) -> bool:
        """Record an evaluation; True when this one completes an overfitting streak."""
        rose = self.last_eval is not None and eval_loss > self.last_eval
        self.last_eval = eval_loss
        if not rose:
            self.rising, self.fired = 0, False
            self.anchor_train = self.train_loss
            return False
        self.rising += 1
        if self.patience <= 0 or self.fired or self.rising < self.patience:
            return False
        falling = (
            self.train_loss is not None
            and self.anchor_train is not None
            and self.train_loss < self.anchor_train
        )
        self.fired = falling
        return falling


class EarlyStopper:
    """Stops after `patience` evaluations in a row without a new lowest eval loss (0 = never)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: float | None = None
        self.without_improvement = 0

    def observe(self, eval_loss: float) -> bool:
        """Record an evaluation; True when training should stop."""
        if self.best is None or eval_loss < self.best:
            self.best, self.without_improvement = eval_loss, 0
        else:
            self.without_improvement += 1
        return self.patience > 0 and self.without_improvement >= self.patience


def replay_history(
    history: list[dict[str, Any]], overfit: OverfitDetector, stopper: EarlyStopper
) -> None:
    """Feed a checkpoint's log history back through the detectors, so a resumed run goes on
    counting exactly where the interrupted one was (patience counters included)."""
    for entry in history:
        if "loss" in entry:
            overfit.observe_train(entry.get("loss"))
        eval_loss = entry.get("eval_loss")
        if isinstance(eval_loss, (int, float)) and math.isfinite(eval_loss):
            overfit.observe_eval(float(eval_loss))
            stopper.observe(float(eval_loss))
