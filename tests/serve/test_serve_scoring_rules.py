"""The verdict rules of the endpoints: cost sign, sigmoid probabilities, the flagged rule."""

from __future__ import annotations

import math

import pytest
import torch

from rayrlhf.serve.scoring_rules import (
    check_threshold,
    cost_body,
    flagged_from_probabilities,
    moderation_body,
    moderation_probabilities,
    reward_body,
    unsafe_from_costs,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_positive_cost_is_unsafe_and_zero_is_safe():
    assert unsafe_from_costs(torch.tensor([1.5, -0.2, 0.0, 1e-6])) == [True, False, False, True]


def test_reward_and_cost_bodies_read_the_single_column():
    scores = torch.tensor([[0.25], [-2.0]])
    assert reward_body(scores) == {"scores": [0.25, -2.0]}
    assert cost_body(scores) == {"scores": [0.25, -2.0], "unsafe": [True, False]}


def test_moderation_probabilities_are_independent_sigmoids():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    probs = moderation_probabilities(logits)[0]
    assert probs.tolist() == pytest.approx([sigmoid(0.0), sigmoid(2.0), sigmoid(-1.0)])
    assert probs.sum().item() > 1.2  # a softmax would sum to one


def test_flagged_when_the_highest_probability_exceeds_the_threshold():
    probs = torch.tensor([[0.1, 0.7], [0.5, 0.2], [0.49, 0.3]])
    assert flagged_from_probabilities(probs, 0.5) == [True, False, False]  # 0.5 is not above 0.5
    assert flagged_from_probabilities(probs, 0.45) == [True, True, True]


def test_moderation_body_names_every_category():
    logits = torch.tensor([[3.0, -3.0], [-3.0, -2.0]])
    body = moderation_body(logits, ["violence", "privacy"], 0.5)
    assert body["flagged"] == [True, False] and body["threshold"] == 0.5
    assert body["probabilities"][0] == pytest.approx({"violence": sigmoid(3.0), "privacy": sigmoid(-3.0)})
    assert body["probabilities"][1] == pytest.approx({"violence": sigmoid(-3.0), "privacy": sigmoid(-2.0)})
    with pytest.raises(ValueError, match="labels"):
        moderation_body(logits, ["violence"], 0.5)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_threshold_must_be_a_probability_strictly_inside(threshold):
    with pytest.raises(ValueError):
        check_threshold(threshold)
