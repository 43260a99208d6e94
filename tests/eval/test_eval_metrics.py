"""Judge metrics against values counted by hand, plus a brute-force pair count for AUROC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rayrlhf.data.schemas import HARM_CATEGORIES
from rayrlhf.eval.metrics import (
    auroc,
    average_ranks,
    binary_report,
    format_table,
    moderation_report,
    pairwise_accuracy,
    sign_accuracy,
)


def auroc_by_counting_pairs(scores, positive) -> float:
    """The definition: over every (positive, negative) pair, 1 for a win, 0.5 for a tie."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    credit = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return credit / (len(pos) * len(neg))


def test_pairwise_accuracy_counts_ties_as_half():
    # pairs: 3>1 win, 1=1 tie, 2<4 loss, 5>0 win -> (1 + 0.5 + 0 + 1) / 4
    assert pairwise_accuracy([3, 1, 2, 5], [1, 1, 4, 0]) == pytest.approx(0.625)
    # torch scores (what the trainers pass): 1>0 win, 2=2 tie, 3<4 loss -> (1 + 0.5 + 0) / 3
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == pytest.approx(0.5)


def test_pairwise_accuracy_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="lengths differ"):
        pairwise_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        pairwise_accuracy([], [])


def test_sign_accuracy_reads_positive_cost_as_unsafe():
    # predicted unsafe (cost > 0): T F F F T ; actually unsafe: T F F T F
    # agree: yes yes yes no no -> 3/5. A cost of exactly 0 predicts safe.
    costs = np.array([2.0, -1.0, 0.0, -0.5, 3.0])
    is_safe = np.array([False, True, True, False, True])
    assert sign_accuracy(costs, is_safe) == pytest.approx(0.6)
    assert sign_accuracy(torch.tensor(costs), torch.tensor(is_safe)) == pytest.approx(0.6)


def test_average_ranks_share_the_mean_rank_of_ties():
    # sorted: 1.0 (rank 1), 2.0 2.0 2.0 (ranks 2,3,4 -> 3), 5.0 (rank 5)
    np.testing.assert_allclose(average_ranks(np.array([2.0, 5.0, 2.0, 1.0, 2.0])), [3, 5, 3, 1, 3])


def test_auroc_by_hand_with_a_tie():
    scores = [0.1, 0.4, 0.4, 0.8, 0.35, 0.9]
    unsafe = [False, True, False, True, False, True]
    # positives 0.4, 0.8, 0.9; negatives 0.1, 0.4, 0.35
    # 0.4: beats 0.1 and 0.35, ties 0.4 -> 2.5 ; 0.8 -> 3 ; 0.9 -> 3 ; total 8.5 of 9 pairs
    assert auroc(scores, unsafe) == pytest.approx(8.5 / 9)


def test_auroc_extremes():
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert auroc([7, 7, 7, 7, 7], [True, False, True, False, False]) == 0.5  # all pairs tie


def test_auroc_matches_the_pair_definition_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 5, size=n).astype(float)  # few distinct values: many ties
        positive = rng.random(n) < 0.4
        positive[0], positive[1] = True, False
        assert auroc(scores, positive) == pytest.approx(auroc_by_counting_pairs(scores, positive))


def test_auroc_accepts_bfloat16_tensors():
    scores = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.bfloat16)
    # positives 0.5, 2.0 vs negatives -1.0, 0.0: all four pairs won
    assert auroc(scores, torch.tensor([True, False, True, False])) == 1.0


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [True, True])


def test_binary_report_by_hand():
    predicted = [True, True, False, False, True]
    actual = [True, False, True, False, True]
    # tp = 2 (rows 0, 4), fp = 1 (row 1), fn = 1 (row 2), tn = 1 (row 3)
    report = binary_report(predicted, actual)
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(2 / 3)
    assert report["support"] == 3


def test_binary_report_defines_zero_over_zero_as_zero():
    never_predicted = binary_report([False, False], [True, False])
    assert never_predicted["precision"] == 0.0 and never_predicted["f1"] == 0.0
    assert never_predicted["recall"] == 0.0 and never_predicted["accuracy"] == 0.5
    nothing_at_all = binary_report([False, False], [False, False])
    assert nothing_at_all == {"accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_moderation_report_by_hand():
    probs = np.array([
        [0.9, 0.2, 0.1],
        [0.3, 0.6, 0.2],
        [0.4, 0.45, 0.5],  # the highest is exactly the threshold: not flagged
        [0.1, 0.7, 0.2],
    ])
    targets = np.array([
        [True, False, False],
        [False, False, False],
        [False, True, False],
        [False, True, True],
    ])
    report = moderation_report(probs, targets, threshold=0.5, labels=["a", "b", "c"])
    # a: predicted T F F F vs T F F F -> F1 1 ; b: F T F T vs F F T T -> tp 1 fp 1 fn 1 -> 0.5
    # c: never predicted, one positive -> 0
    assert report["per_category_f1"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0})
    assert report["macro_f1"] == pytest.approx(0.5)
    # flagged T T F T vs harmful T F T T -> tp 2, fp 1, fn 1, tn 0
    flagged = report["flagged"]
    assert flagged["accuracy"] == pytest.approx(0.5)
    assert flagged["precision"] == pytest.approx(2 / 3) and flagged["recall"] == pytest.approx(2 / 3)
    assert flagged["support"] == 3


def test_moderation_report_defaults_to_the_fourteen_harm_categories():
    probs = torch.zeros(2, 14)
    probs[0, 3] = 0.8
    targets = torch.zeros(2, 14, dtype=torch.bool)
    targets[0, 3] = True
    report = moderation_report(probs, targets)
    assert list(report["per_category_f1"]) == list(HARM_CATEGORIES)
    assert report["per_category_f1"][HARM_CATEGORIES[3]] == 1.0
    assert report["macro_f1"] == pytest.approx(1 / 14)  # the other 13 are 0/0 -> 0


def test_moderation_report_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        moderation_report(np.zeros((2, 14)), np.zeros((2, 13), dtype=bool))
    with pytest.raises(ValueError, match="labels"):
        moderation_report(np.zeros((2, 3)), np.zeros((2, 3), dtype=bool))


def test_format_table_aligns_scalars_and_joins_nested_keys():
    metrics = {"reward": {"accuracy": 0.75, "pairs": 12}, "cost": {"auroc": np.float32(0.5)},
               "note": "skipped", "curve": [0.1, 0.2]}
    lines = format_table(metrics).splitlines()
    assert [line.split()[0] for line in lines] == ["reward/accuracy", "reward/pairs", "cost/auroc"]
    assert [line.split()[1] for line in lines] == ["0.7500", "12", "0.5000"]
    assert len({len(line) for line in lines}) == 1  # right-aligned values: equal widths
    assert format_table({"only": "text"}) == "(no scalar metrics)"
