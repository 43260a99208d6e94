"""Token-level rewards and costs for PPO-Lagrangian, as in Safe RLHF (Dai et al. 2023).

Sign convention: a higher reward is more helpful; a cost > 0 means the response is judged
unsafe and a cost < 0 safe (the cost model is trained so that its sign classifies safety).

The KL penalty to the reference policy is split in two: half is subtracted from the reward
and half added to the cost. The actor maximises the combined advantage
(A_r − λ A_c) / (1 + λ); with the split, the KL term in that advantage is
−β·KL · (½ + ½λ) / (1 + λ) = −½ β·KL for every λ, so the KL pressure does not fade as the
Lagrange multiplier grows (Safe RLHF, the PPO-Lag trainer's KL regularisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def shape_rewards_and_costs(
    score_reward: torch.Tensor,
    score_cost: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    clip_range_score: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards and costs of right-padded responses.

        kl_t   = −β (log π(y_t) − log π_ref(y_t))        (β = ``kl_coef``, a k1 estimate)
        r_t    = ½ kl_t + [t = last] · clip(R, ±c)
        cost_t = −½ kl_t + [t = last] · clip(C, ±c)

    where "last" is the row's last valid token, index ``mask.sum(-1) − 1``, and
    c = ``clip_range_score`` (clipping bounds outlier scores of the reward/cost models).
    Unlike the Safe RLHF reference, only the scalar score is clipped, not the sum with the
    KL term, so the KL penalty is never cut off.

    Args:
        score_reward: [B] reward-model scores of the whole responses.
        score_cost:   [B] cost-model scores (> 0 means unsafe).
        logp, ref_logp: [B, T] log-probs of the response tokens under the policy that
            sampled them and under the frozen reference.
        mask: [B, T] 1 for real response tokens; valid tokens must be a prefix.

    Returns:
        (token_rewards, token_costs), both [B, T], 0 at padded positions.
    """
    if logp.shape != ref_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError("logp, ref_logp and mask must all be [B, T] of the same shape")
    batch_size = logp.shape[0]
    if score_reward.shape != (batch_size,) or score_cost.shape != (batch_size,):
        raise ValueError(f"score_reward and score_cost must be [B] = [{batch_size}]")
    valid = mask.to(dtype=logp.dtype)
    lengths = valid.sum(dim=-1).long()
    if bool((lengths < 1).any()):
        raise ValueError("every response needs at least one valid token to receive its score")
    last_index = (lengths - 1).unsqueeze(-1)  # [B, 1]

    kl_divergence_estimate = -kl_coef * (logp - ref_logp) * valid
    clipped_reward = score_reward.to(logp.dtype).clamp(-clip_range_score, clip_range_score)
    clipped_cost = score_cost.to(logp.dtype).clamp(-clip_range_score, clip_range_score)
    token_rewards = torch.scatter_add(
        0.5 * kl_divergence_estimate, dim=-1, index=last_index, src=clipped_reward.unsqueeze(-1)
    )
    token_costs = torch.scatter_add(
        -0.5 * kl_divergence_estimate, dim=-1, index=last_index, src=clipped_cost.unsqueeze(-1)
    )
    return token_rewards, token_costs


def constraint_costs(category_costs: torch.Tensor, categories: Sequence[str],
                     groups: dict[str, Sequence[str]]) -> torch.Tensor:
    """[B, K] costs of K constraints from [B, C] costs of the cost source's C categories.

    ``groups`` maps each constraint's name to the categories it covers; its cost is the
    largest of theirs, so a response violates a group when it violates any of its categories
    (for a moderation model's log-odds, max_k logit_k > 0 ⇔ some category has p_k > ½).
    """
    column = {name: i for i, name in enumerate(categories)}
    if category_costs.dim() != 2 or category_costs.shape[1] != len(column):
        raise ValueError(f"category costs must be [B, C] with C = {len(column)}, got {tuple(category_costs.shape)}")
    columns = []
    for name, members in groups.items():
        unknown = [member for member in members if member not in column]
        if unknown or not members:
            raise ValueError(f"constraint {name!r}: {unknown or 'no categories'} not among the cost source's "
                             f"categories ({', '.join(categories)})")
        columns.append(category_costs[:, [column[m] for m in members]].amax(dim=1))
    return torch.stack(columns, dim=1)
