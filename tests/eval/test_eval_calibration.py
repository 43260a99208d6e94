"""Calibration of the moderation judge's flag threshold, checked by hand and on a judge with a
known upward bias (what class-balanced training does to the probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from rayrlhf.eval.calibration import (
    any_harm_scores, calibrate_and_report, calibration_split, choose_flag_threshold, false_positive_rate,
)
from rayrlhf.trainers.score_objectives import metrics_from_scores

SAFE = [0.46, 0.48, 0.50, 0.52, 0.54, 0.56, 0.58, 0.60, 0.62, 0.64]
HARMFUL = [0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.99]


def test_threshold_by_hand():
    scores = np.array(SAFE + HARMFUL)
    harmful = np.array([False] * 10 + [True] * 10)
    # At 0.5, 7 of 10 safe answers are flagged.
    assert false_positive_rate(scores > 0.5, harmful) == pytest.approx(0.7)
    # With at most 1 of 10 safe flagged: t in (0.62, 0.64) flags 1 safe + 8 harmful (F1 0.842);
    # t in (0.64, 0.65) flags 0 safe + 8 harmful (P 1, R 0.8, F1 0.889), the best; higher t
    # loses true positives. The midpoint of that gap is chosen.
    assert choose_flag_threshold(scores, harmful, 0.10) == pytest.approx(0.645)
    # No cap: the best F1 overall. t in (0.54, 0.55) flags all 10 harmful and 5 safe (F1 0.8);
    # t in (0.64, 0.65) still gives 0.889, which no lower threshold beats.
    assert choose_flag_threshold(scores, harmful, 1.0) == pytest.approx(0.645)
    # A cap of 0: nothing safe may be flagged.
    assert choose_flag_threshold(scores, harmful, 0.0) >= 0.64


def test_a_judge_that_cannot_tell_flags_nothing():
    scores = np.full(8, 0.73)  # a head whose bias alone moved every probability to 0.73
    harmful = np.array([True, False] * 4)
    threshold = choose_flag_threshold(scores, harmful, 0.10)
    assert false_positive_rate(scores > threshold, harmful) == 0.0


def test_known_bias_is_undone_on_rows_that_did_not_choose_it():
    """Probabilities of a separable judge pushed up by +1.5 logits in every category: at 0.5
    it flags most safe answers; calibrated, the held-out half keeps its false alarms near the
    cap while recall stays high."""
    rng = np.random.default_rng(0)
    n, k = 400, 14
    harmful = rng.random(n) < 0.4
    targets = np.zeros((n, k), dtype=bool)
    targets[harmful, rng.integers(0, k, harmful.sum())] = True
    logits = rng.normal(-2.0, 1.0, (n, k)) + 3.0 * targets + 1.5  # +1.5: the known bias
    probs = 1 / (1 + np.exp(-logits))
    assert false_positive_rate(any_harm_scores(probs) > 0.5, harmful) > 0.5
    report = calibrate_and_report(probs, targets, max_false_positive_rate=0.10)
    assert report["test_rows"] == n // 2
    assert report["false_positive_rate"] <= 0.15
    assert report["flagged"]["recall"] > 0.6 and report["threshold"] > 0.5


def test_calibration_halves_are_disjoint_and_cover_the_rows():
    choose, test = calibration_split(7)
    assert set(choose).isdisjoint(test) and sorted([*choose, *test]) == list(range(7))
    with pytest.raises(ValueError, match="at least 2"):
        calibration_split(1)


def test_score_trainer_metrics_calibrate_unless_a_threshold_is_given():
    import torch

    from rayrlhf.data import HARM_CATEGORIES, QAClassificationRow

    def row(harmful: bool) -> QAClassificationRow:
        return QAClassificationRow.from_dict({
            "prompt": "p", "response": "r", "is_safe": not harmful,
            "category": {c: (harmful and i == 0) for i, c in enumerate(HARM_CATEGORIES)}})

    rows = [row(h) for h in [False, True] * 10]
    # Safe rows score 0.6 in every category, harmful ones 0.9 in the first: all above 0.5.
    probs = torch.full((20, 14), 0.6)
    probs[1::2, 0] = 0.9
    logits = torch.log(probs / (1 - probs))
    fixed = metrics_from_scores("moderation", logits, rows, threshold=0.5)
    assert fixed["false_positive_rate"] == 1.0 and fixed["threshold"] == 0.5
    calibrated = metrics_from_scores("moderation", logits, rows, threshold=None)
    assert 0.6 < calibrated["threshold"] < 0.9
    assert calibrated["false_positive_rate"] == 0.0 and calibrated["flagged"]["f1"] == 1.0
