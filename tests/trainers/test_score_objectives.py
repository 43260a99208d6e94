"""Pure parts of the score-model trainer: data plan, LR schedule, split, objectives."""

from __future__ import annotations

import math

import pytest
import torch

from rayrlhf.data import HARM_CATEGORIES, PreferenceRow, QAClassificationRow
from rayrlhf.trainers.score_objectives import loss_from_scores, metrics_from_scores, pairs_to_score
from rayrlhf.algorithms.schedules import lr_multiplier
from rayrlhf.trainers.ray_train import StepPlan, split_train_eval
from rayrlhf.workers.base import deepspeed_config


def pref(i: int, better: int, safer: int, safe0: bool, safe1: bool) -> PreferenceRow:
    return PreferenceRow(prompt=f"p{i}", response_0=f"a{i}", response_1=f"b{i}", is_response_0_safe=safe0,
                         is_response_1_safe=safe1, better_response_id=better, safer_response_id=safer)


def test_split_is_seeded_disjoint_and_complete():
    rows = list(range(50))
    train, held = split_train_eval(rows, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40
    assert sorted(train + held) == rows
    assert split_train_eval(rows, 0.2, seed=3) == (train, held)
    assert split_train_eval(rows, 0.2, seed=4) != (train, held)
    with pytest.raises(ValueError, match="too few"):
        split_train_eval([1], 0.5, seed=0)


def test_lr_multiplier_matches_hand_values():
    # 2 warm-up steps: 1/2, 2/2; then cosine over the remaining 8 steps.
    assert lr_multiplier(0, 10, 2, "cosine") == 0.5
    assert lr_multiplier(1, 10, 2, "cosine") == 1.0
    assert lr_multiplier(2, 10, 2, "cosine") == 1.0  # progress 0
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5)  # progress 1/2: (1+cos(pi/2))/2
    assert lr_multiplier(4, 10, 2, "linear") == pytest.approx(0.75)  # 1 - 2/8
    assert lr_multiplier(9, 10, 2, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown lr_scheduler"):
        lr_multiplier(5, 10, 0, "exponential")


def test_step_plan_reads_every_row_once_per_epoch_across_ranks():
    plan = StepPlan(num_rows=26, world_size=2, micro_batch=3, accumulation=2, epochs=2, max_steps=None, seed=7)
    assert plan.rows_per_step == 12 and plan.steps_per_epoch == 2 and plan.total_steps == 4
    for epoch in range(2):
        seen = []
        for step in range(epoch * 2, epoch * 2 + 2):
            for rank in range(2):
                micro = plan.micro_batches(step, rank)
                assert [len(m) for m in micro] == [3, 3]
                seen += [i for m in micro for i in m]
        assert len(seen) == len(set(seen)) == 24  # 2 rows left over per epoch
    # Epochs are shuffled differently, and the plan depends on the step alone (resume).
    assert plan.micro_batches(0, 0) != plan.micro_batches(2, 0)
    assert StepPlan(26, 2, 3, 2, 2, None, 7).micro_batches(3, 1) == plan.micro_batches(3, 1)
    assert StepPlan(26, 2, 3, 2, 2, 3, 7).total_steps == 3
    with pytest.raises(ValueError, match="fewer than one step"):
        _ = StepPlan(5, 2, 3, 1, 1, None, 0).steps_per_epoch


def test_deepspeed_config_maps_training_fields():
    ds = deepspeed_config(4, 2, 1.0, 2, True)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == 1.0
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(4, 2, 1.0, 4, True)


def test_pairs_to_score_orders_better_then_worse_and_safer_then_unsafer():
    rows = [pref(0, better=1, safer=0, safe0=True, safe1=False)]
    assert pairs_to_score("reward", rows) == (["p0", "p0"], ["b0", "a0"])
    assert pairs_to_score("cost", rows) == (["p0", "p0"], ["a0", "b0"])


def test_cost_loss_and_metrics_follow_the_sign_convention():
    rows = [pref(0, 1, 0, True, False), pref(1, 0, 1, False, True)]
    # Layout: safer scores first, then unsafer. Unsafe responses get positive cost here.
    scores = torch.tensor([[-1.0], [-2.0], [1.5], [0.5]])
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    expected = -(ls(1.5 + 1.0) + ls(1.5) + ls(1.0) + ls(0.5 + 2.0) + ls(0.5) + ls(2.0)) / 2
    assert loss_from_scores("cost", scores, rows).item() == pytest.approx(expected, rel=1e-6)
    m = metrics_from_scores("cost", scores, rows)
    assert m == {"accuracy": 1.0, "sign_accuracy": 1.0, "auroc": 1.0}
    flipped = metrics_from_scores("cost", -scores, rows)
    assert flipped["sign_accuracy"] == 0.0 and flipped["auroc"] == 0.0


def test_reward_loss_and_accuracy():
    rows = [pref(0, 0, 0, True, True), pref(1, 1, 1, True, True)]
    scores = torch.tensor([[2.0], [0.0], [1.0], [1.0]])  # better: 2, 0; worse: 1, 1
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    assert loss_from_scores("reward", scores, rows).item() == pytest.approx(-(ls(1.0) + ls(-1.0)) / 2)
    assert metrics_from_scores("reward", scores, rows)["accuracy"] == 0.5


def test_moderation_loss_is_bce_over_the_14_categories():
    flags = {name: False for name in HARM_CATEGORIES}
    rows = [QAClassificationRow("q", "a", dict(flags, animal_abuse=True), False),
            QAClassificationRow("q", "b", flags, True)]
    logits = torch.zeros(2, 14)
    logits[0, 0] = 3.0
    expected = (math.log(1 + math.exp(-3.0)) + 27 * math.log(2)) / 28
    assert loss_from_scores("moderation", logits, rows).item() == pytest.approx(expected, rel=1e-6)
    report = metrics_from_scores("moderation", logits, rows, threshold=0.6)
    assert report["flagged"]["accuracy"] == 1.0


def test_balanced_pos_weight_and_weighted_moderation_loss_by_hand():
    from rayrlhf.algorithms import balanced_pos_weight, moderation_loss

    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # column 0: 2 pos / 2 neg -> 1; column 1: 1 pos / 3 neg -> 3; column 2: never positive -> 1
    weight = balanced_pos_weight(targets)
    assert weight.tolist() == [1.0, 3.0, 1.0]
    logits = torch.zeros(4, 3)
    # At logit 0 every term is log 2; positives in column 1 count 3 times: (12 - 1 + 3) / 12 terms.
    expected = math.log(2) * (12 - 1 + 3) / 12
    assert moderation_loss(logits, targets, weight).item() == pytest.approx(expected, rel=1e-6)
    assert balanced_pos_weight(torch.tensor([[1.0]] + [[0.0]] * 99), max_weight=20.0).tolist() == [20.0]
