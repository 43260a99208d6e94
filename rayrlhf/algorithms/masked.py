"""Reductions over the valid (unpadded) tokens of a batch.

Every PPO quantity is a mean over *real* response tokens: padding must neither add to a
sum nor count in a denominator. ``mask`` may be bool or numeric (1 = valid, 0 = padding) and
broadcasts against ``x``.
"""

from __future__ import annotations

import torch


def _as_weights(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask as 0/1 numbers in ``like``'s dtype, so it can multiply ``like``."""
    return mask.to(dtype=like.dtype)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ_i m_i x_i over ``dim`` (all dimensions when None)."""
    weighted = x * _as_weights(mask, x)
    return weighted.sum() if dim is None else weighted.sum(dim=dim)


def masked_count(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of valid entries Σ_i m_i, broadcast to ``x``'s shape first."""
    weights = torch.broadcast_to(_as_weights(mask, x), x.shape)
    return weights.sum() if dim is None else weights.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ m_i x_i / Σ m_i over ``dim`` (all dimensions when None).

    A slice with no valid entry gives 0 rather than NaN, so an all-padding row cannot poison
    a loss; callers that care should check the count themselves.
    """
    count = masked_count(x, mask, dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``x`` (all dimensions pooled).

    With ``unbiased`` the sum of squares is divided by n − 1 (Bessel's correction, as
    ``torch.var`` does) when n > 1 valid entries exist, and by n otherwise, so a single valid
    token gives variance 0 instead of NaN.
    """
    mean = masked_mean(x, mask)
    squared_deviation_sum = masked_sum((x - mean) ** 2, mask)
    count = masked_count(x, mask)
    if unbiased and count.item() > 1:
        return squared_deviation_sum / (count - 1.0)
    return squared_deviation_sum / count.clamp_min(1.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + eps) with μ and σ² taken over the valid entries only.

    Whitening advantages over the batch keeps the policy-gradient step size independent of
    the reward scale. With ``shift_mean=False`` the mean is added back (only the scale is
    normalised), which keeps the sign of an all-positive signal. Padded entries are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * _as_weights(mask, x)


LOSS_AGGREGATIONS: tuple[str, ...] = ("seq_mean", "token_mean")


def aggregate_token_losses(token_losses: torch.Tensor, mask: torch.Tensor, how: str = "seq_mean") -> torch.Tensor:
    """One loss from [B, T] per-token losses over the valid tokens.

    - ``seq_mean`` (Safe RLHF's reference): each response's mean over its own tokens, then the
      mean over responses, so a short refusal weighs as much as a long answer;
    - ``token_mean``: one mean over every valid token of the batch (long responses dominate).

    Rows without a valid token are left out of ``seq_mean``'s outer mean.
    """
    if how == "token_mean":
        return masked_mean(token_losses, mask)
    if how != "seq_mean":
        raise ValueError(f"unknown loss aggregation {how!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    per_row = masked_sum(token_losses, mask, dim=-1)
    counts = masked_count(token_losses, mask, dim=-1)
    has_tokens = counts > 0
    row_means = per_row[has_tokens] / counts[has_tokens]
    return row_means.mean() if row_means.numel() else token_losses.sum() * 0.0


def aggregation_share(part_mask: torch.Tensor, whole_mask: torch.Tensor, how: str = "seq_mean") -> float:
    """The weight of a part of a batch's rows in the batch's aggregated loss, so that
    Σ_parts share(part) · loss(part) = loss(whole) for ``aggregate_token_losses``: the part's
    share of the valid tokens (``token_mean``) or of the rows with a valid token (``seq_mean``).
    This is what lets a mini-batch run as several smaller forward/backward passes."""
    if how == "token_mean":
        part, whole = part_mask.sum(), whole_mask.sum()
    elif how == "seq_mean":
        part, whole = (part_mask.sum(-1) > 0).sum(), (whole_mask.sum(-1) > 0).sum()
    else:
        raise ValueError(f"unknown loss aggregation {how!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    return float(part) / float(whole) if float(whole) > 0 else 0.0
