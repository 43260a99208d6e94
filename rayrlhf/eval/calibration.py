"""Calibrating the moderation judge's "flagged" decision on held-out rows.

The moderation head is trained with each category's positives up-weighted by
negatives/positives (rare harms would otherwise never be predicted), which shifts every
probability upwards: 0.5 is no longer the point where harm becomes likelier than not, and
"any of 14 categories above 0.5" flags nearly every answer. The decision threshold is
therefore chosen on held-out rows, on the score the verdict uses (the highest category
probability of an answer):

    t* = argmax_t F1(flagged = score > t)   subject to   FPR(t) <= max_false_positive_rate

where FPR is the share of *safe* held-out answers flagged. The cap keeps the judge from
buying recall with false alarms, which would make every policy look unsafe. The threshold is
saved in the model's metadata (``rayrlhf_score_model.json``) and used by evaluation and Serve
alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayrlhf.eval.metrics import as_numpy, binary_report


def any_harm_scores(probs: Any) -> np.ndarray:
    """[N, K] category probabilities -> [N] the highest per answer (what "flagged" tests)."""
    probs = as_numpy(probs).astype(np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probabilities must be a non-empty [N, K] array, got shape {probs.shape}")
    return probs.max(axis=1)


def false_positive_rate(flagged: np.ndarray, harmful: np.ndarray) -> float:
    """Share of the safe answers that are flagged (0 when there is no safe answer)."""
    safe = ~harmful
    return float(flagged[safe].mean()) if safe.any() else 0.0


def choose_flag_threshold(scores: Any, harmful: Any, max_false_positive_rate: float = 0.10) -> float:
    """The threshold t (flagged = score > t) with the best F1 among those whose false-positive
    rate on the safe rows is at most ``max_false_positive_rate``.

    Candidates are midpoints between neighbouring distinct scores plus one below the lowest
    and the highest score itself (flags nothing, FPR 0), so a feasible threshold always exists.
    Ties in F1 go to the higher threshold (fewer false alarms).
    """
    scores = as_numpy(scores).astype(np.float64)
    harmful = as_numpy(harmful).astype(bool)
    if scores.ndim != 1 or scores.shape != harmful.shape or scores.size == 0:
        raise ValueError(f"scores and harmful must be the same non-empty [N]; got {scores.shape} and {harmful.shape}")
    if not 0.0 <= max_false_positive_rate <= 1.0:
        raise ValueError(f"max_false_positive_rate must lie in [0, 1], got {max_false_positive_rate}")
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1]]])
    best_t, best_f1 = float(distinct[-1]), -1.0
    for t in candidates[::-1]:  # high to low: ties keep the higher threshold
        flagged = scores > t
        if false_positive_rate(flagged, harmful) > max_false_positive_rate:
            continue
        f1 = binary_report(flagged, harmful)["f1"]
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


def calibration_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows that choose the threshold (even) and those that test it (odd).

    The held-out rows come already shuffled by the trainer's seeded split, so alternating
    rows gives two halves with the same mix; reporting on rows that did not choose the
    threshold keeps the reported F1 honest.
    """
    if n < 2:
        raise ValueError(f"calibration needs at least 2 held-out rows, got {n}")
    index = np.arange(n)
    return index[0::2], index[1::2]


def calibrate_and_report(probs: Any, targets: Any, max_false_positive_rate: float = 0.10) -> dict[str, Any]:
    """Choose the flag threshold on one half of the held-out rows, report on the other half.

    Returns ``threshold`` and, on the test half, ``flagged`` (precision/recall/F1 of the
    any-harm verdict), ``false_positive_rate`` (flagged share of safe answers) and
    ``test_rows``. ``targets`` is [N, K] booleans (harmful = any category).
    """
    scores = any_harm_scores(probs)
    harmful = as_numpy(targets).astype(bool).any(axis=1)
    choose, test = calibration_split(len(scores))
    threshold = choose_flag_threshold(scores[choose], harmful[choose], max_false_positive_rate)
    flagged = scores[test] > threshold
    return {"threshold": threshold, "flagged": binary_report(flagged, harmful[test]),
            "false_positive_rate": false_positive_rate(flagged, harmful[test]), "test_rows": int(len(test))}
