"""Losses of Safe RLHF: the PPO-Lagrangian actor and critics, the preference-trained reward
and cost models, the moderation classifier and the pretraining (PTX) term.

The PPO losses average their per-token terms either per response then over responses
(``seq_mean``, Safe RLHF's reference and rayrlhf's default: a short refusal weighs as much as a
long answer) or over every valid token of the batch (``token_mean``, token-level PPO, where long
responses dominate); see ``aggregate_token_losses``. The LM (PTX/SFT) losses are token means.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rayrlhf.algorithms.kl import kl_estimate
from rayrlhf.algorithms.masked import aggregate_token_losses, masked_mean


def ppo_actor_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation.

        ρ_t = exp(log π(y_t) − log π_old(y_t))
        L   = −mean_t min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t)     over valid tokens

    ``aggregation`` says how the per-token terms become one loss (``aggregate_token_losses``):
    ``token_mean`` over all valid tokens, or ``seq_mean`` per response then over responses
    (Safe RLHF's reference). Returns the loss and detached stats: ``clip_fraction`` (share of valid tokens with
    |ρ − 1| > ε) and ``approx_kl`` (k3 estimate of KL(π_old ‖ π), (ρ − 1) − log ρ).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    loss = aggregate_token_losses(-torch.minimum(unclipped, clipped), mask, aggregation)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_ratio).to(logp.dtype), mask)
        approx_kl = masked_mean(kl_estimate(old_logp, logp.detach(), "k3"), mask)
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


def combined_advantage(
    adv_reward: torch.Tensor, adv_cost: torch.Tensor, lagrange_multiplier: float | Sequence[float]
) -> torch.Tensor:
    """Safe RLHF actor advantage (A_r − λ A_c) / (1 + λ).

    The Lagrangian max_θ min_λ≥0 J_r(θ) − λ (J_c(θ) − d) (Dai et al. 2023, §3.3) gives the
    policy gradient of A_r − λ A_c; dividing by 1 + λ, as the Safe RLHF PPO-Lag trainer does,
    keeps its scale bounded as λ grows.

    With K constraints E[c_k] ≤ d_k (per-category costs), the Lagrangian
    J_r − Σ_k λ_k (J_c,k − d_k) gives (A_r − Σ_k λ_k A_c,k) / (1 + Σ_k λ_k): ``adv_cost`` is
    then [..., K] and ``lagrange_multiplier`` K numbers. For K = 1 the terms are the scalar
    formula's, computed in the same order, so the result is bit-for-bit the scalar one.
    """
    if isinstance(lagrange_multiplier, numbers.Real):
        return (adv_reward - lagrange_multiplier * adv_cost) / (1.0 + lagrange_multiplier)
    lambdas = [float(value) for value in lagrange_multiplier]
    if adv_cost.shape[-1] != len(lambdas) or adv_cost.shape[:-1] != adv_reward.shape:
        raise ValueError(f"per-category cost advantages must be [..., K] beside the reward's {tuple(adv_reward.shape)} "
                         f"with K = {len(lambdas)} multipliers; got {tuple(adv_cost.shape)}")
    penalty = lambdas[0] * adv_cost[..., 0]
    for k in range(1, len(lambdas)):
        penalty = penalty + lambdas[k] * adv_cost[..., k]
    return (adv_reward - penalty) / (1.0 + sum(lambdas))


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
    aggregation: str = "token_mean",
) -> torch.Tensor:
    """½ · mean_t max((V − R)², (V_clip − R)²), V_clip = clip(V, V_old − ε, V_old + ε).

    The pessimistic max keeps the critic from moving far from the values the advantages were
    computed with (the PPO value clipping used by Safe RLHF and OpenAI baselines). The mean
    is ``aggregation`` (see ``ppo_actor_loss``).
    """
    value_change = torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    clipped_values = old_values + value_change
    squared_error = torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    return 0.5 * aggregate_token_losses(squared_error, mask, aggregation)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[B, T] entropies H(p) = −Σ_v p_v log p_v of p = softmax(logits) ([B, T, V])."""
    return torch.special.entr(torch.softmax(logits, dim=-1)).sum(dim=-1)  # entr(0) = 0: safe for −inf


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] log p(token) and entropy H(p) of p = softmax(logits) ([B, T, V] finite logits,
    [B, T] tokens), both in fp32, both differentiable; the gradient flows back in the logits'
    dtype. Equal to log_softmax-then-gather and ``token_entropy``.

    One softmax serves all three uses: log p = l_tok − lse, H = lse − Σ_v p_v l_v, and the
    backward d log p / d l = onehot(token) − p, dH/dl = −p (l − lse + H). Autograd over
    ``token_logprobs`` and ``token_entropy`` sweeps the [B, T, V] tensor about twice as often
    (SmolLM2, 16 x 64 bf16 logits, one CPU thread: ~0.9 s forward + backward against ~2.2 s)."""
    return _LogprobsAndEntropy.apply(logits, tokens)


class _LogprobsAndEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wide = logits.float()  # exact for bf16/fp16 logits; the logits themselves if fp32
        top = wide.amax(-1, keepdim=True)
        probs = torch.sub(wide, top).exp_()
        total = probs.sum(-1, keepdim=True)
        lse = top + total.log()
        probs.div_(total)
        logp = (wide.gather(-1, tokens.unsqueeze(-1)) - lse).squeeze(-1)
        entropy = lse.squeeze(-1) - torch.linalg.vecdot(probs, wide)
        ctx.save_for_backward(logits, tokens, probs, lse, entropy)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None):
        logits, tokens, probs, lse, entropy = ctx.saved_tensors
        if grad_logp is not None:
            grad = probs * grad_logp.neg().unsqueeze(-1)
            grad.scatter_add_(-1, tokens.unsqueeze(-1), grad_logp.unsqueeze(-1))
        else:
            grad = torch.zeros_like(probs)
        if grad_entropy is not None:
            centred = logits.to(torch.float32, copy=True).sub_(lse).add_(entropy.unsqueeze(-1))
            grad.addcmul_(probs, centred.mul_(grad_entropy.unsqueeze(-1)), value=-1)
        return grad.to(logits.dtype), None


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy over the valid tokens of a batch."""
    return masked_mean(token_entropy(logits), mask)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy −mean_t log p(label_t) over valid tokens (the PTX loss).

    ``logits`` [B, T, V] must already be aligned so that ``logits[:, t]`` predicts
    ``labels[:, t]``; labels at masked positions are ignored (they may hold −100 or padding).
    """
    safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))
    token_loss = F.cross_entropy(
        logits.flatten(0, -2), safe_labels.flatten(), reduction="none"
    ).view_as(labels)
    return masked_mean(token_loss, mask)


def response_nll(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning loss: −mean log p(x_t | x_<t) over the response tokens only.

    ``logits`` [B, T, V] come from ``input_ids`` [B, T] (column t predicts token t + 1);
    ``response_mask`` [B, T] is 1 on the tokens to learn (the answer) and 0 on the prompt and
    padding, so the model is never taught to write the user's side of the conversation. The
    mean runs over all response tokens of the batch (longer answers weigh more).
    """
    return lm_loss(logits[:, :-1], input_ids[:, 1:], response_mask[:, 1:])


def _l2_penalty(first: torch.Tensor, second: torch.Tensor, l2_coef: float) -> torch.Tensor:
    """l2_coef · ½ · mean(first² + second²): keeps score-model outputs near 0 (Safe RLHF)."""
    return l2_coef * 0.5 * (first.square() + second.square()).mean()


def reward_pairwise_loss(
    better_scores: torch.Tensor, worse_scores: torch.Tensor, l2_coef: float = 0.0
) -> torch.Tensor:
    """Bradley–Terry reward-model loss (Safe RLHF §3.2, the reward-model objective):

        mean −log σ(R_better − R_worse)  +  l2_coef · ½ · mean(R_better² + R_worse²)
    """
    loss = -F.logsigmoid(better_scores - worse_scores).mean()
    return loss + _l2_penalty(better_scores, worse_scores, l2_coef)


def cost_pairwise_loss(
    safer_scores: torch.Tensor,
    unsafer_scores: torch.Tensor,
    safer_is_safe: torch.Tensor,
    unsafer_is_safe: torch.Tensor,
    l2_coef: float = 0.0,
) -> torch.Tensor:
    """Safe RLHF cost-model loss (§3.2): a preference term plus a safety-classification term.

        mean [ −log σ(C_unsafer − C_safer) − log σ(s_unsafer C_unsafer) − log σ(s_safer C_safer) ]
        + l2_coef · ½ · mean(C_safer² + C_unsafer²)

    with s = +1 for a response labelled unsafe and −1 for a safe one, so the model learns
    C > 0 ⇔ unsafe, which makes "cost ≤ 0" a usable safety constraint.
    """
    safer_sign = torch.where(safer_is_safe.bool(), -1.0, 1.0).to(safer_scores.dtype)
    unsafer_sign = torch.where(unsafer_is_safe.bool(), -1.0, 1.0).to(unsafer_scores.dtype)
    losses = (
        -F.logsigmoid(unsafer_scores - safer_scores)
        - F.logsigmoid(unsafer_sign * unsafer_scores)
        - F.logsigmoid(safer_sign * safer_scores)
    )
    return losses.mean() + _l2_penalty(safer_scores, unsafer_scores, l2_coef)


def moderation_loss(logits: torch.Tensor, targets: torch.Tensor,
                    pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label binary cross-entropy over the harm categories ([B, 14]), mean over all.

    ``pos_weight`` [14] scales each category's positive term; negatives/positives per
    category counters the rarity of each single harm (otherwise the model first learns to
    flag nothing, as every category alone is rare).
    """
    if pos_weight is not None:
        pos_weight = pos_weight.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pos_weight)


def balanced_pos_weight(targets: torch.Tensor, max_weight: float = 20.0) -> torch.Tensor:
    """[14] negatives / positives per category (1 where a category never occurs), capped."""
    targets = targets.float()
    positives = targets.sum(0)
    negatives = targets.shape[0] - positives
    weight = torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives))
    return weight.clamp(min=1.0, max=max_weight)
