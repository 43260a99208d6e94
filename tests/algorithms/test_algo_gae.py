"""GAE against a hand-worked example and a plain-Python sum-form reference."""

import pytest
import torch

from rayrlhf.algorithms import gae_advantages


def reference_gae(rewards, values, lengths, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} over the row's valid steps, δ with V after the end = 0.

    A double loop over the closed form (GAE paper eq. 16), not the backward recursion the
    implementation uses.
    """
    advantages = [[0.0] * len(row) for row in rewards]
    for b, length in enumerate(lengths):
        deltas = []
        for t in range(length):
            next_value = values[b][t + 1] if t + 1 < length else 0.0
            deltas.append(rewards[b][t] + gamma * next_value - values[b][t])
        for t in range(length):
            advantages[b][t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(length - t))
    return advantages


def test_hand_computed_three_step_example():
    # γ = 0.9, λ = 0.8, γλ = 0.72.
    # Row 0 (3 valid steps), r = [1, 0, 2], V = [0.5, 1.0, 1.5]:
    #   δ2 = 2 + 0.9·0   − 1.5 = 0.5     Â2 = 0.5
    #   δ1 = 0 + 0.9·1.5 − 1.0 = 0.35    Â1 = 0.35 + 0.72·0.5  = 0.71
    #   δ0 = 1 + 0.9·1.0 − 0.5 = 1.4     Â0 = 1.4  + 0.72·0.71 = 1.9112
    #   returns Â + V = [2.4112, 1.71, 2.0]
    # Row 1 (2 valid steps, then padding holding garbage r = 9, V = 7), r = [1, 3], V = [2, 1]:
    #   δ1 = 3 + 0.9·0 − 1 = 2           Â1 = 2          (episode ends: padding's V ignored)
    #   δ0 = 1 + 0.9·1 − 2 = −0.1        Â0 = −0.1 + 0.72·2 = 1.34
    #   returns [3.34, 3.0, 0]
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5], [2.0, 1.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    expected_advantages = torch.tensor([[1.9112, 0.71, 0.5], [1.34, 2.0, 0.0]], dtype=torch.float64)
    expected_returns = torch.tensor([[2.4112, 1.71, 2.0], [3.34, 3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected_advantages)
    torch.testing.assert_close(returns, expected_returns)


def test_matches_plain_python_reference_on_ragged_batch():
    generator = torch.Generator().manual_seed(1)
    lengths = [6, 3, 1, 4]
    rewards = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    values = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    gamma, lam = 0.97, 0.9
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    expected = reference_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    for b, length in enumerate(lengths):
        assert advantages[b].tolist() == pytest.approx(expected[b], abs=1e-12)
        assert returns[b, :length].tolist() == pytest.approx(
            [a + v for a, v in zip(expected[b][:length], values[b, :length].tolist())], abs=1e-12
        )
        assert torch.all(returns[b, length:] == 0)


def test_gamma_lam_one_gives_monte_carlo_returns():
    # With γ = λ = 1 the return is the undiscounted sum of the rewards still to come.
    rewards = torch.tensor([[0.5, -1.0, 2.0, 4.0]], dtype=torch.float64)
    values = torch.tensor([[3.0, -2.0, 0.25, 8.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    _, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 2.0, 0.0]], dtype=torch.float64))


def test_lambda_zero_gives_one_step_td_error():
    rewards = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 3.0]], dtype=torch.float64)
    advantages, _ = gae_advantages(rewards, values, torch.ones(1, 2), gamma=0.5, lam=0.0)
    # δ0 = 1 + 0.5·3 − 0.5 = 2.0, δ1 = 2 − 3 = −1.0
    torch.testing.assert_close(advantages, torch.tensor([[2.0, -1.0]], dtype=torch.float64))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        gae_advantages(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)
