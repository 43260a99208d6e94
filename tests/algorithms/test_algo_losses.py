"""PPO, critic, score-model and auxiliary losses against hand computations."""

import math

import pytest
import torch

from rayrlhf.algorithms import (
    clipped_value_loss,
    combined_advantage,
    cost_pairwise_loss,
    entropy_from_logits,
    lm_loss,
    moderation_loss,
    ppo_actor_loss,
    reward_pairwise_loss,
    token_logprobs_and_entropy,
)

F64 = torch.float64


def log_sigmoid(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


# --- PPO actor -----------------------------------------------------------------------------
# ε = 0.2; valid tokens (row 0: three, row 1: one, then padding with garbage):
#   ρ = 1.1, A =  1: min(1.1, 1.1)   =  1.1  → −1.1   (inside the clip)
#   ρ = 1.5, A =  2: min(3.0, 2.4)   =  2.4  → −2.4   (clipped above)
#   ρ = 0.5, A = −1: min(−0.5, −0.8) = −0.8  → +0.8   (clipped below)
#   ρ = 0.9, A = −2: min(−1.8, −1.8) = −1.8  → +1.8   (inside the clip)
# token mean = (−1.1 − 2.4 + 0.8 + 1.8) / 4 = −0.225  (a per-sequence mean would give 0.45)
RATIOS = [[1.1, 1.5, 0.5], [0.9, 3.0, 3.0]]
ADVANTAGES = [[1.0, 2.0, -1.0], [-2.0, 100.0, 100.0]]
PPO_MASK = [[1, 1, 1], [1, 0, 0]]


def _ppo_inputs():
    old_logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -1.0, -1.0]], dtype=F64)
    logp = (old_logp + torch.tensor(RATIOS, dtype=F64).log()).requires_grad_(True)
    return logp, old_logp, torch.tensor(ADVANTAGES, dtype=F64), torch.tensor(PPO_MASK)


def test_ppo_loss_hand_computed():
    logp, old_logp, advantages, mask = _ppo_inputs()
    loss, stats = ppo_actor_loss(logp, old_logp, advantages, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx(-0.225)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)  # ρ = 1.5 and ρ = 0.5
    valid_ratios = [1.1, 1.5, 0.5, 0.9]
    expected_kl = sum((r - 1.0) - math.log(r) for r in valid_ratios) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl)


def test_ppo_gradient_vanishes_on_clipped_tokens():
    logp, old_logp, advantages, mask = _ppo_inputs()
    loss, _ = ppo_actor_loss(logp, old_logp, advantages, mask, clip_ratio=0.2)
    loss.backward()
    # ∂(−ρA/N)/∂logp = −ρA/N on unclipped tokens, 0 on clipped and padded ones.
    expected = [[-1.1 * 1.0 / 4, 0.0, 0.0], [-0.9 * -2.0 / 4, 0.0, 0.0]]
    torch.testing.assert_close(logp.grad, torch.tensor(expected, dtype=torch.float64))


def test_combined_advantage():
    adv_reward = torch.tensor([1.0, -2.0], dtype=F64)
    adv_cost = torch.tensor([0.5, 1.0], dtype=F64)
    # λ = 3: (1 − 1.5)/4 = −0.125, (−2 − 3)/4 = −1.25
    assert combined_advantage(adv_reward, adv_cost, 3.0).tolist() == pytest.approx([-0.125, -1.25])
    assert combined_advantage(adv_reward, adv_cost, 0.0).tolist() == pytest.approx([1.0, -2.0])


# --- critic --------------------------------------------------------------------------------
def test_clipped_value_loss_hand_computed():
    # ε = 0.2:
    #   V = 1.0, V_old = 0.9, R = 2.0: V within ε → both errors (1 − 2)² = 1
    #   V = 1.5, V_old = 1.0, R = 2.0: V_clip = 1.2 → max(0.25, 0.64) = 0.64  (clipping active)
    #   V = 1.5, V_old = 1.0, R = 1.0: V_clip = 1.2 → max(0.25, 0.04) = 0.25  (clipping inactive)
    # loss = ½ · (1 + 0.64 + 0.25) / 3 = 0.315
    values = torch.tensor([[1.0, 1.5], [1.5, 50.0]], dtype=F64)
    old_values = torch.tensor([[0.9, 1.0], [1.0, -50.0]], dtype=F64)
    returns = torch.tensor([[2.0, 2.0], [1.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.315)
    # A huge clip range never clips: plain ½·MSE = ½ · (1 + 0.25 + 0.25) / 3 = 0.25
    unclipped = clipped_value_loss(values, old_values, returns, mask, clip_range_value=1e9)
    assert unclipped.item() == pytest.approx(0.25)


# --- entropy and PTX -----------------------------------------------------------------------
def test_fused_logprobs_and_entropy_hand_computed():
    # Uniform over 4: log p = −ln 4 whatever the token, H = ln 4. p = [½, ¼, ¼] on the
    # tokens 0 and 2: log p = −ln 2 and −ln 4, H = 1.5 ln 2.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                           [[math.log(0.5), math.log(0.25), math.log(0.25), -60.0]] * 2])
    logits[1, :, :3] += 7.0  # a shift changes nothing
    logp, entropy = token_logprobs_and_entropy(logits, torch.tensor([[3, 1], [0, 2]]))
    torch.testing.assert_close(logp, torch.tensor([[-math.log(4)] * 2, [-math.log(2), -math.log(4)]]))
    torch.testing.assert_close(entropy, torch.tensor([[math.log(4)] * 2, [1.5 * math.log(2)] * 2]))


@pytest.mark.parametrize("use", ["both", "logp", "entropy"])
def test_fused_logprobs_and_entropy_match_autograd_of_the_plain_formulas(use):
    """Values and gradients against log_softmax-gather and Σ entr(softmax) under autograd in
    fp64, for a loss that weighs each token's log-prob and entropy differently."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 50, generator=generator) * 4).requires_grad_(True)
    tokens = torch.randint(0, 50, (3, 5), generator=generator)
    w_logp, w_entropy = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    reference = logits.detach().double().requires_grad_(True)
    ref_logp = torch.log_softmax(reference, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ref_entropy = torch.special.entr(torch.softmax(reference, -1)).sum(-1)
    logp, entropy = token_logprobs_and_entropy(logits, tokens)
    loss = {"both": (w_logp * logp).sum() + (w_entropy * entropy).sum(),
            "logp": (w_logp * logp).sum(), "entropy": (w_entropy * entropy).sum()}[use]
    ref_loss = {"both": (w_logp * ref_logp).sum() + (w_entropy * ref_entropy).sum(),
                "logp": (w_logp * ref_logp).sum(), "entropy": (w_entropy * ref_entropy).sum()}[use]
    loss.backward()
    ref_loss.backward()
    assert logp.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.grad.double(), reference.grad, rtol=0, atol=1e-5)


def test_fused_logprobs_of_bf16_logits_send_a_bf16_gradient_back():
    """A bf16 LM head's logits: fp32 math (bf16 → fp32 is exact), the gradient in bf16 as the
    head expects, within a bf16 rounding of the fp32 one."""
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 300, generator=generator) * 3).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, 300, (2, 4), generator=generator)
    wide = logits.detach().float().requires_grad_(True)
    logp, entropy = token_logprobs_and_entropy(logits, tokens)
    ref_logp, ref_entropy = token_logprobs_and_entropy(wide, tokens)
    (logp.sum() + 0.1 * entropy.sum()).backward()
    (ref_logp.sum() + 0.1 * ref_entropy.sum()).backward()
    assert torch.equal(logp, ref_logp) and torch.equal(entropy, ref_entropy)
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), wide.grad, rtol=1e-2, atol=1e-4)


def test_entropy_hand_computed():
    # Token 1: uniform over 4 → ln 4. Token 2: p = [½, ¼, ¼, 0] (a −inf logit) → 1.5 ln 2.
    # Padded token: anything. Mean over the two valid tokens = (2 ln 2 + 1.5 ln 2)/2 = 1.75 ln 2.
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf],
          [9.0, 0.0, 0.0, 0.0]]],
        dtype=F64,
    )
    mask = torch.tensor([[1, 1, 0]])
    assert entropy_from_logits(logits, mask).item() == pytest.approx(1.75 * math.log(2))


def test_lm_loss_hand_computed_and_ignores_masked_labels():
    logits_list = [[[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 0.0]]]
    labels = torch.tensor([[1, 0, -100]])  # −100 at a masked position must not crash
    mask = torch.tensor([[1, 1, 0]])

    def neg_log_softmax(row, index):
        return math.log(sum(math.exp(v) for v in row)) - row[index]

    expected = (neg_log_softmax(logits_list[0][0], 1) + neg_log_softmax(logits_list[0][1], 0)) / 2
    loss = lm_loss(torch.tensor(logits_list, dtype=F64), labels, mask)
    assert loss.item() == pytest.approx(expected)


# --- reward and cost models ----------------------------------------------------------------
def test_reward_pairwise_loss_hand_computed():
    better = [2.0, 0.5, -1.0]
    worse = [1.0, 1.0, -3.0]
    expected = -sum(log_sigmoid(b - w) for b, w in zip(better, worse)) / 3
    l2 = 0.5 * sum(b * b + w * w for b, w in zip(better, worse)) / 3
    better_t, worse_t = torch.tensor(better, dtype=F64), torch.tensor(worse, dtype=F64)
    assert reward_pairwise_loss(better_t, worse_t).item() == pytest.approx(expected)
    with_l2 = reward_pairwise_loss(better_t, worse_t, l2_coef=0.1)
    assert with_l2.item() == pytest.approx(expected + 0.1 * l2)


def test_cost_pairwise_loss_hand_computed():
    # Pair 0: safer C = −1 (safe, s = −1), unsafer C = 2 (unsafe, s = +1)
    #   −log σ(2 − (−1)) − log σ(+1·2) − log σ(−1·−1)
    # Pair 1: both labelled safe, safer C = 0.5, unsafer C = 1.0
    #   −log σ(1 − 0.5) − log σ(−1·1) − log σ(−1·0.5)
    pair0 = -log_sigmoid(3.0) - log_sigmoid(2.0) - log_sigmoid(1.0)
    pair1 = -log_sigmoid(0.5) - log_sigmoid(-1.0) - log_sigmoid(-0.5)
    safer = torch.tensor([-1.0, 0.5], dtype=F64)
    unsafer = torch.tensor([2.0, 1.0], dtype=F64)
    safer_is_safe = torch.tensor([True, True])
    unsafer_is_safe = torch.tensor([False, True])
    loss = cost_pairwise_loss(safer, unsafer, safer_is_safe, unsafer_is_safe)
    assert loss.item() == pytest.approx((pair0 + pair1) / 2)
    l2 = 0.5 * (1.0 + 4.0 + 0.25 + 1.0) / 2
    with_l2 = cost_pairwise_loss(safer, unsafer, safer_is_safe, unsafer_is_safe, l2_coef=0.2)
    assert with_l2.item() == pytest.approx((pair0 + pair1) / 2 + 0.2 * l2)


def test_cost_sign_convention_positive_means_unsafe():
    safe, unsafe = torch.tensor([True]), torch.tensor([False])
    # A response labelled safe is penalised more for a positive cost than for a negative one.
    safe_scored_safe = cost_pairwise_loss(torch.tensor([-1.0]), torch.tensor([2.0]), safe, unsafe)
    safe_scored_unsafe = cost_pairwise_loss(torch.tensor([1.0]), torch.tensor([2.0]), safe, unsafe)
    assert safe_scored_unsafe > safe_scored_safe
    # C_unsafe > 0 > C_safe is the low-loss solution; the reversed signs are worse.
    right_signs = cost_pairwise_loss(torch.tensor([-1.0]), torch.tensor([1.0]), safe, unsafe)
    reversed_signs = cost_pairwise_loss(torch.tensor([1.0]), torch.tensor([-1.0]), safe, unsafe)
    assert right_signs < reversed_signs


def test_pairwise_losses_are_stable_for_large_margins():
    huge = torch.tensor([-1e4], dtype=torch.float32)
    assert torch.isfinite(reward_pairwise_loss(huge, -huge))
    safe, unsafe = torch.tensor([True]), torch.tensor([False])
    assert torch.isfinite(cost_pairwise_loss(-huge, huge, unsafe, safe))


# --- moderation ----------------------------------------------------------------------------
def test_moderation_loss_matches_manual_bce():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 14, generator=generator, dtype=F64) * 3
    targets = (torch.rand(2, 14, generator=generator) > 0.5).to(F64)
    total = 0.0
    for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1.0 / (1.0 + math.exp(-z))
        total += -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))
    assert moderation_loss(logits, targets).item() == pytest.approx(total / 28)
