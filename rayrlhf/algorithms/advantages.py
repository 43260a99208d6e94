"""The whole PPO-Lagrangian advantage of one rollout: from scores and values to what the
actor and the two critics learn from (Safe RLHF, Dai et al. 2023, §3.3).

Composed of the pieces beside it, in the paper's order:

1. token rewards and costs: the per-token KL penalty to the reference, half on each stream,
   plus the clipped score on the last response token (``shape_rewards_and_costs``);
2. GAE on each stream with its own critic (``gae_advantages``): A_r and the reward critic's
   targets R_r, A_c and the cost critic's targets R_c;
3. the actor's advantage (A_r − λ A_c) / (1 + λ) (``combined_advantage``), 0 on padding.

Per-category constraints (``lagrange.per_category``) have K cost streams: costs [B, K], cost
values [B, T, K] and K multipliers. Each cost stream is shaped and estimated exactly as the
one scalar stream is (each carries +½ of the KL term, so the KL weight in
(A_r − Σ_k λ_k A_c,k) / (1 + Σ_k λ_k) is −½ β·KL for every λ, as with one constraint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rayrlhf.algorithms.gae import gae_advantages
from rayrlhf.algorithms.losses import combined_advantage
from rayrlhf.algorithms.rewards import shape_rewards_and_costs


@dataclass
class PPOLagAdvantages:
    """What one rollout's advantages give each trainable role. Field names match
    ``rayrlhf.types.RolloutBatch``, which carries them to the workers."""

    advantages: torch.Tensor  # [B, T] (A_r − λ A_c) / (1 + λ): the actor's signal, 0 on padding
    reward_returns: torch.Tensor  # [B, T] R_r = A_r + V_r: the reward critic's targets
    cost_returns: torch.Tensor  # [B, T] (per category [B, T, K]) R_c = A_c + V_c: the cost critic's targets


def ppo_lag_advantages(
    rewards: torch.Tensor,
    costs: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    reward_values: torch.Tensor,
    cost_values: torch.Tensor,
    mask: torch.Tensor,
    *,
    lagrange_multiplier: float | Sequence[float],
    kl_coef: float,
    clip_range_score: float,
    gamma: float,
    gae_lambda: float,
) -> PPOLagAdvantages:
    """Advantages and value targets of a rollout of B responses (T = the longest one).

    Args:
        rewards, costs: [B] reward- and cost-model scores of the whole responses (cost > 0
            means unsafe); per category, costs are [B, K].
        logprobs, ref_logprobs: [B, T] log-probs of the sampled tokens under the policy that
            sampled them and under the frozen reference.
        reward_values, cost_values: [B, T] the two critics' values of the same tokens; per
            category, cost_values are [B, T, K] (one cost value head per category).
        mask: [B, T] 1 for real response tokens (a prefix of each row), 0 for padding.
        lagrange_multiplier: λ ≥ 0 of this step (the value before this step's λ update); per
            category, the K values λ_k.
        kl_coef: β of the KL penalty; clip_range_score: scores are clipped to ±this.
        gamma, gae_lambda: the discount γ and GAE's λ.
    """
    valid = mask.float()
    per_category = costs.dim() == 2
    if per_category and cost_values.shape != (*mask.shape, costs.shape[1]):
        raise ValueError(f"per-category costs {tuple(costs.shape)} need cost values [B, T, K] = "
                         f"{(*mask.shape, costs.shape[1])}, got {tuple(cost_values.shape)}")
    cost_streams = zip(costs.unbind(-1), cost_values.unbind(-1)) if per_category else [(costs, cost_values)]
    cost_advantages, cost_returns = [], []
    for stream_costs, stream_values in cost_streams:
        token_rewards, token_costs = shape_rewards_and_costs(rewards, stream_costs, logprobs, ref_logprobs, valid,
                                                             kl_coef, clip_range_score)
        advantage, returns = gae_advantages(token_costs, stream_values, valid, gamma, gae_lambda)
        cost_advantages.append(advantage)
        cost_returns.append(returns)
    reward_advantages, reward_returns = gae_advantages(token_rewards, reward_values, valid, gamma, gae_lambda)
    if per_category:
        advantages = combined_advantage(reward_advantages, torch.stack(cost_advantages, -1), lagrange_multiplier)
        return PPOLagAdvantages(advantages=advantages * valid, reward_returns=reward_returns,
                                cost_returns=torch.stack(cost_returns, -1))
    advantages = combined_advantage(reward_advantages, cost_advantages[0], lagrange_multiplier) * valid
    return PPOLagAdvantages(advantages=advantages, reward_returns=reward_returns, cost_returns=cost_returns[0])
