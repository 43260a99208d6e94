"""Safe RLHF reward/cost shaping on a hand-computed 2×4 batch."""

import pytest
import torch

from rayrlhf.algorithms import combined_advantage, shape_rewards_and_costs

# β = 0.1, score clip c = 5.
# Row 0 (4 valid tokens): logp − ref = [0.5, 0, −0.5, −2]
#   kl_t = −β(logp − ref) = [−0.05, 0, 0.05, 0.2]
#   rewards = ½ kl = [−0.025, 0, 0.025, 0.1]  + clip(7.0) = 5   at t = 3  →  [−0.025, 0, 0.025, 5.1]
#   costs  = −½ kl = [0.025, 0, −0.025, −0.1] + clip(−1.5) = −1.5 at t = 3
#          → [0.025, 0, −0.025, −1.6]
# Row 1 (2 valid tokens; padding holds garbage): logp − ref = [1, 0] → kl = [−0.1, 0]
#   rewards = [−0.05, 0] + clip(−0.5) = −0.5 at t = 1  →  [−0.05, −0.5, 0, 0]
#   costs  = [0.05, 0]  + clip(8.0) = 5     at t = 1  →  [0.05, 5.0, 0, 0]
LOGP = [[-1.0, -2.0, -1.0, -3.0], [-1.0, -1.0, -9.0, -9.0]]
REF_LOGP = [[-1.5, -2.0, -0.5, -1.0], [-2.0, -1.0, -1.0, -1.0]]
MASK = [[1, 1, 1, 1], [1, 1, 0, 0]]
EXPECTED_REWARDS = [[-0.025, 0.0, 0.025, 5.1], [-0.05, -0.5, 0.0, 0.0]]
EXPECTED_COSTS = [[0.025, 0.0, -0.025, -1.6], [0.05, 5.0, 0.0, 0.0]]


def _shape(score_reward=(7.0, -0.5), score_cost=(-1.5, 8.0), kl_coef=0.1, clip=5.0):
    f64 = torch.float64
    return shape_rewards_and_costs(
        torch.tensor(score_reward, dtype=f64),
        torch.tensor(score_cost, dtype=f64),
        torch.tensor(LOGP, dtype=f64),
        torch.tensor(REF_LOGP, dtype=f64),
        torch.tensor(MASK),
        kl_coef=kl_coef,
        clip_range_score=clip,
    )


def test_hand_computed_batch():
    token_rewards, token_costs = _shape()
    torch.testing.assert_close(token_rewards, torch.tensor(EXPECTED_REWARDS, dtype=torch.float64))
    torch.testing.assert_close(token_costs, torch.tensor(EXPECTED_COSTS, dtype=torch.float64))


def test_scores_land_on_last_valid_token_only():
    with_scores, _ = _shape(score_reward=(1.0, 2.0))
    without_scores, _ = _shape(score_reward=(0.0, 0.0))
    difference = with_scores - without_scores
    expected = torch.tensor([[0, 0, 0, 1.0], [0, 2.0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(difference, expected)


@pytest.mark.parametrize("lagrange_multiplier", [0.0, 0.5, 3.0, 100.0])
def test_combined_signal_carries_half_the_kl_penalty_for_every_lambda(lagrange_multiplier):
    # Away from the last token, (r − λc)/(1 + λ) = ½·kl for any λ: the KL pressure never fades.
    token_rewards, token_costs = _shape(score_reward=(0.0, 0.0), score_cost=(0.0, 0.0))
    combined = combined_advantage(token_rewards, token_costs, lagrange_multiplier)
    half_kl = [[-0.025, 0.0, 0.025, 0.1], [-0.05, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(combined, torch.tensor(half_kl, dtype=torch.float64))


def test_row_without_valid_tokens_raises():
    with pytest.raises(ValueError, match="at least one valid token"):
        shape_rewards_and_costs(
            torch.zeros(1), torch.zeros(1), torch.zeros(1, 3), torch.zeros(1, 3),
            torch.zeros(1, 3), kl_coef=0.1, clip_range_score=1.0,
        )
