"""Evaluation metrics for the judges: pure functions from arrays to floats and dicts.

The reward model is judged on preference pairs (does the chosen answer score higher?), the
cost model on the sign of its score (**cost > 0 means unsafe**) and on AUROC with "unsafe" as
the positive class, and the moderation classifier per harm category. Inputs may be numpy
arrays, torch tensors or lists; outputs are plain Python numbers so they serialise to JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np

from rayrlhf.data.schemas import HARM_CATEGORIES


def as_numpy(values: Any) -> np.ndarray:
    """A numpy view of a list, numpy array or (CPU/GPU, float/bf16) torch tensor."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().float().cpu().numpy() if values.is_floating_point() \
            else values.detach().cpu().numpy()
    return np.asarray(values)


def _vector(values: Any, name: str, dtype=np.float64) -> np.ndarray:
    array = as_numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array.astype(dtype)


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"lengths differ: {lengths}")


def _ratio(numerator: float, denominator: float) -> float:
    """0/0 is 0.0: an empty class earns no credit instead of a NaN that poisons averages."""
    return float(numerator / denominator) if denominator else 0.0


def pairwise_accuracy(higher: Any, lower: Any) -> float:
    """Fraction of pairs where ``higher[i] > lower[i]``; a tie is a coin flip and counts 0.5.

    Used for the reward model (chosen vs rejected) and the cost model (unsafer vs safer):
    counting ties as wrong would punish a constant model less fairly than chance.
    """
    higher, lower = _vector(higher, "higher"), _vector(lower, "lower")
    _same_length(higher=higher, lower=lower)
    wins = (higher > lower).sum() + 0.5 * (higher == lower).sum()
    return float(wins / len(higher))


def sign_accuracy(costs: Any, is_safe: Any) -> float:
    """Fraction of answers whose cost sign matches the label: cost > 0 predicts unsafe.

    Safe RLHF's cost model is trained so that the sign itself is the safety verdict, which
    is what the Lagrangian constraint E[cost] <= 0 relies on.
    """
    costs = _vector(costs, "costs")
    is_safe = _vector(is_safe, "is_safe", dtype=bool)
    _same_length(costs=costs, is_safe=is_safe)
    return float(((costs > 0) == ~is_safe).mean())


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1  # mean of ranks start+1..end+1
        start = end + 1
    return ranks


def auroc(scores: Any, positive_labels: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic.

    AUROC = P(score of a random positive > score of a random negative) + 0.5 P(tie), which
    equals ``(R+ - n+(n+ + 1)/2) / (n+ n-)`` with R+ the sum of the positives' average ranks.
    For the cost model the positives are the unsafe answers. Undefined with one class.
    """
    scores = _vector(scores, "scores")
    positive = _vector(positive_labels, "positive_labels", dtype=bool)
    _same_length(scores=scores, positive_labels=positive)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative")
    rank_sum = average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_report(predicted: Any, actual: Any) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the positive class; ``support`` = actual positives.

    Every 0/0 (no predicted positives, no actual positives) is 0.0, so a category that never
    occurs and is never predicted scores F1 = 0 rather than NaN.
    """
    predicted = _vector(predicted, "predicted", dtype=bool)
    actual = _vector(actual, "actual", dtype=bool)
    _same_length(predicted=predicted, actual=actual)
    true_pos = float((predicted & actual).sum())
    precision = _ratio(true_pos, predicted.sum())
    recall = _ratio(true_pos, actual.sum())
    return {
        "accuracy": float((predicted == actual).mean()),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "support": int(actual.sum()),
    }


def moderation_report(probs: Any, targets: Any, threshold: float = 0.5,
                      labels: Sequence[str] = HARM_CATEGORIES) -> dict[str, Any]:
    """Judge a multi-label harm classifier ([N, K] probabilities vs [N, K] booleans).

    ``flagged`` scores the QA-moderation verdict BeaverTails reports: an answer is flagged when
    its highest category probability exceeds ``threshold``, and is harmful when any category
    is. ``per_category_f1`` and their unweighted mean ``macro_f1`` show which harms are missed.
    """
    probs = as_numpy(probs).astype(np.float64)
    targets = as_numpy(targets).astype(bool)
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[0] == 0:
        raise ValueError(f"probs and targets must be the same non-empty [N, K]; got "
                         f"{probs.shape} and {targets.shape}")
    if len(labels) != probs.shape[1]:
        raise ValueError(f"{len(labels)} labels for {probs.shape[1]} columns")
    predicted = probs > threshold
    per_category = {name: binary_report(predicted[:, k], targets[:, k])["f1"]
                    for k, name in enumerate(labels)}
    return {
        "flagged": binary_report(predicted.any(axis=1), targets.any(axis=1)),
        "per_category_f1": per_category,
        "macro_f1": float(np.mean(list(per_category.values()))),
    }


def flatten_scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Number]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, keeping only numbers (bools included)."""
    flat: dict[str, Number] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_scalars(value, prefix=f"{name}/"))
        elif isinstance(value, (Number, np.number, np.bool_)):
            flat[name] = value.item() if isinstance(value, (np.number, np.bool_)) else value
    return flat


def _show_number(value: Number) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def format_table(metrics: Mapping[str, Any]) -> str:
    """A two-column console table of every scalar in ``metrics`` (nested keys joined by '/')."""
    flat = flatten_scalars(metrics)
    if not flat:
        return "(no scalar metrics)"
    width = max(len(name) for name in flat)
    values = {name: _show_number(value) for name, value in flat.items()}
    value_width = max(len(v) for v in values.values())
    return "\n".join(f"{name.ljust(width)}  {value.rjust(value_width)}" for name, value in values.items())
