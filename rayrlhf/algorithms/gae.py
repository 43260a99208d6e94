"""Generalised Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
Control Using Generalized Advantage Estimation", eq. 16).

Each response is one episode; its tokens are the time steps. Responses are right-padded, so
the valid tokens of a row are a prefix and the episode ends after the last of them.
"""

from __future__ import annotations

import torch


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages Â_t and value targets R_t = Â_t + V_t.

        δ_t = r_t + γ V_{t+1} − V_t            (V after the last valid token is 0: terminal)
        Â_t = δ_t + γ λ Â_{t+1}                 (Â after the last valid token is 0)

    computed by one reverse sweep over T, vectorised across the batch.

    Args:
        rewards: [B, T] per-token rewards (e.g. KL penalty plus the score at the last token).
        values:  [B, T] critic values V(s_t) of the same tokens.
        mask:    [B, T] 1 for real response tokens, 0 for right padding.
        gamma:   discount γ.
        lam:     GAE λ, trading bias (0: one-step TD) against variance (1: Monte-Carlo).

    Returns:
        (advantages, returns), both [B, T], 0 at padded positions. Inputs are used as they
        are; call under ``torch.no_grad()`` when they carry gradients.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must all be [B, T]; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    valid = mask.to(dtype=values.dtype)
    num_steps = rewards.shape[1]
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(num_steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Multiplying by the mask zeroes padding and makes the last valid token terminal:
        # whatever sits after it (padding) contributes neither value nor advantage.
        next_advantage = (delta + gamma * lam * next_advantage) * valid[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t] * valid[:, t]
    returns = (advantages + values) * valid
    return advantages, returns
