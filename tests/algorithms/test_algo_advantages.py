"""The whole PPO-Lag advantage against a hand-worked example."""

import torch

from rayrlhf.algorithms import ppo_lag_advantages


def test_hand_computed_two_responses():
    # β = 0.2, scores clipped to ±1, γ = 1, GAE λ = 0.5, Lagrange λ = 0.5.
    #
    # Row 0, two tokens. log π − log π_ref = [−1 − (−1.5), −2 − (−1)] = [0.5, −1]
    #   kl_t = −β (log π − log π_ref) = [−0.1, 0.2]
    #   reward score 3 -> clipped 1; cost score −0.4
    #   r = ½ kl + [last]·1    = [−0.05, 0.1 + 1]   = [−0.05, 1.1]
    #   c = −½ kl + [last]·C   = [0.05, −0.1 − 0.4] = [0.05, −0.5]
    #   V_r = [0.2, 0.4]: δ1 = 1.1 − 0.4 = 0.7              A_r1 = 0.7
    #                     δ0 = −0.05 + 0.4 − 0.2 = 0.15     A_r0 = 0.15 + 0.5·0.7 = 0.5
    #                     R_r = A_r + V_r = [0.7, 1.1]
    #   V_c = [0.1, −0.3]: δ1 = −0.5 + 0.3 = −0.2            A_c1 = −0.2
    #                      δ0 = 0.05 − 0.3 − 0.1 = −0.35     A_c0 = −0.35 + 0.5·(−0.2) = −0.45
    #                      R_c = [−0.35, −0.5]
    #   A = (A_r − 0.5 A_c) / 1.5 = [(0.5 + 0.225) / 1.5, (0.7 + 0.1) / 1.5] = [0.48333…, 0.53333…]
    #
    # Row 1, one token then padding that holds garbage (log-probs 5 / −5, values 9):
    #   kl_0 = 0; reward score −2 -> clipped −1; cost 0.3: r = [−1], c = [0.3]
    #   V_r = 0.5: A_r = −1.5, R_r = −1.0;  V_c = −0.2: A_c = 0.5, R_c = 0.3
    #   A = (−1.5 − 0.25) / 1.5 = −1.16666…; every padded position is 0.
    f64 = torch.float64
    result = ppo_lag_advantages(
        rewards=torch.tensor([3.0, -2.0], dtype=f64),
        costs=torch.tensor([-0.4, 0.3], dtype=f64),
        logprobs=torch.tensor([[-1.0, -2.0], [-0.5, 5.0]], dtype=f64),
        ref_logprobs=torch.tensor([[-1.5, -1.0], [-0.5, -5.0]], dtype=f64),
        reward_values=torch.tensor([[0.2, 0.4], [0.5, 9.0]], dtype=f64),
        cost_values=torch.tensor([[0.1, -0.3], [-0.2, 9.0]], dtype=f64),
        mask=torch.tensor([[1, 1], [1, 0]]),
        lagrange_multiplier=0.5, kl_coef=0.2, clip_range_score=1.0, gamma=1.0, gae_lambda=0.5,
    )
    torch.testing.assert_close(result.advantages, torch.tensor([[0.725 / 1.5, 0.8 / 1.5], [-1.75 / 1.5, 0.0]],
                                                               dtype=f64))
    torch.testing.assert_close(result.reward_returns, torch.tensor([[0.7, 1.1], [-1.0, 0.0]], dtype=f64))
    torch.testing.assert_close(result.cost_returns, torch.tensor([[-0.35, -0.5], [0.3, 0.0]], dtype=f64))


def test_without_a_multiplier_the_actor_follows_the_reward_stream_only():
    # λ = 0 is plain PPO on the reward: the cost stream changes nothing the actor sees.
    generator = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    inputs = dict(rewards=rand(2), logprobs=rand(2, 3), ref_logprobs=rand(2, 3), reward_values=rand(2, 3),
                  mask=mask, lagrange_multiplier=0.0, kl_coef=0.1, clip_range_score=5.0, gamma=1.0, gae_lambda=0.9)
    one = ppo_lag_advantages(costs=rand(2), cost_values=rand(2, 3), **inputs)
    other = ppo_lag_advantages(costs=rand(2) * 10, cost_values=rand(2, 3), **inputs)
    torch.testing.assert_close(one.advantages, other.advantages)
    torch.testing.assert_close(one.reward_returns, other.reward_returns)
    assert not torch.allclose(one.cost_returns, other.cost_returns)
