"""Per-category constraints (lagrange.per_category): K cost streams, K multipliers.

The vector advantage (A_r − Σ_k λ_k A_c,k) / (1 + Σ_k λ_k) is checked against a NumPy
computation written out here, and reduces bit for bit to the scalar one for K = 1; the
controllers are the scalar ones, elementwise; a closed loop on a two-category toy task meets
both limits and leaves the loose category's λ near zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayrlhf.algorithms import (
    ConstantLagrange, LogLambdaController, PerCategoryLagrange, PIDLagrangeController, combined_advantage, constraint_costs,
    ppo_lag_advantages,
)

SETTINGS = dict(kl_coef=0.1, clip_range_score=1.0, gamma=0.9, gae_lambda=0.8)


def numpy_gae(rewards: np.ndarray, values: np.ndarray, lengths: list[int], gamma: float, lam: float):
    """GAE per row with an explicit loop over each response's own tokens (eq. 16)."""
    advantages = np.zeros_like(values)
    for row, length in enumerate(lengths):
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[row, t + 1] if t + 1 < length else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            running = delta + gamma * lam * running
            advantages[row, t] = running
    returns = advantages + values * (np.arange(values.shape[1])[None] < np.array(lengths)[:, None])
    return advantages, returns


def numpy_per_category(rewards, costs, logp, ref_logp, reward_values, cost_values, lengths, lambdas,
                       kl_coef, clip_range_score, gamma, gae_lambda):
    """The whole per-category advantage in NumPy, from the formulas (not from rayrlhf)."""
    batch, steps = logp.shape
    valid = (np.arange(steps)[None] < np.array(lengths)[:, None]).astype(float)
    kl = -kl_coef * (logp - ref_logp) * valid
    last = np.zeros_like(valid)
    last[np.arange(batch), np.array(lengths) - 1] = 1.0
    token_rewards = 0.5 * kl + last * np.clip(rewards, -clip_range_score, clip_range_score)[:, None]
    adv_r, ret_r = numpy_gae(token_rewards, reward_values, lengths, gamma, gae_lambda)
    adv_c, ret_c = [], []
    for k in range(costs.shape[1]):
        token_costs = -0.5 * kl + last * np.clip(costs[:, k], -clip_range_score, clip_range_score)[:, None]
        a, r = numpy_gae(token_costs, cost_values[..., k], lengths, gamma, gae_lambda)
        adv_c.append(a)
        ret_c.append(r)
    penalty = sum(lam * a for lam, a in zip(lambdas, adv_c))
    advantage = (adv_r - penalty) / (1.0 + sum(lambdas)) * valid
    return advantage, ret_r, np.stack(ret_c, -1)


def random_rollout(k: int, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype)  # noqa: E731
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    return dict(rewards=rand(3) * 2, costs=rand(3, k) * 2, logprobs=rand(3, 4), ref_logprobs=rand(3, 4),
                reward_values=rand(3, 4), cost_values=rand(3, 4, k), mask=mask)


def test_two_categories_against_numpy():
    rollout, lambdas = random_rollout(2), [0.7, 0.2]
    got = ppo_lag_advantages(**rollout, lagrange_multiplier=lambdas, **SETTINGS)
    want = numpy_per_category(*(rollout[name].numpy() for name in ("rewards", "costs", "logprobs", "ref_logprobs",
                                                                    "reward_values", "cost_values")),
                              lengths=[4, 2, 1], lambdas=lambdas, **SETTINGS)
    np.testing.assert_allclose(got.advantages.numpy(), want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.reward_returns.numpy(), want[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.cost_returns.numpy(), want[2], rtol=1e-12, atol=1e-12)
    assert got.cost_returns.shape == (3, 4, 2)


def test_one_category_is_bit_for_bit_the_scalar_advantage():
    rollout = random_rollout(1, seed=3, dtype=torch.float32)
    vector = ppo_lag_advantages(**rollout, lagrange_multiplier=[0.37], **SETTINGS)
    scalar = ppo_lag_advantages(**{**rollout, "costs": rollout["costs"][:, 0],
                                   "cost_values": rollout["cost_values"][..., 0]},
                                lagrange_multiplier=0.37, **SETTINGS)
    assert torch.equal(vector.advantages, scalar.advantages)
    assert torch.equal(vector.reward_returns, scalar.reward_returns)
    assert torch.equal(vector.cost_returns[..., 0], scalar.cost_returns)
    a_r, a_c = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.equal(combined_advantage(a_r, a_c.unsqueeze(-1), [1.3]), combined_advantage(a_r, a_c, 1.3))


def test_combined_advantage_hand_computed_and_checked():
    # A_r = 1, A_c = (2, −1), λ = (0.5, 1): (1 − (1 − 1)) / (1 + 1.5) = 0.4
    got = combined_advantage(torch.tensor([1.0]), torch.tensor([[2.0, -1.0]]), [0.5, 1.0])
    assert got.tolist() == pytest.approx([0.4])
    with pytest.raises(ValueError, match="K = 3 multipliers"):
        combined_advantage(torch.zeros(2), torch.zeros(2, 2), [0.1, 0.2, 0.3])


def test_constraint_costs_take_the_worst_category_of_each_group():
    categories = ["self_harm", "violence", "privacy_violation"]
    scores = torch.tensor([[-2.0, 1.5, -0.5], [0.25, -4.0, 2.0]])
    got = constraint_costs(scores, categories, {"harm": ["self_harm", "violence"], "privacy": ["privacy_violation"]})
    assert got.tolist() == [[1.5, -0.5], [0.25, 2.0]]
    with pytest.raises(ValueError, match=r"constraint 'x': \['hate'\] not among"):
        constraint_costs(scores, categories, {"x": ["hate"]})


def build(kind: str, thresholds=(0.0, 0.3)) -> PerCategoryLagrange:
    def one(threshold):
        if kind == "log_lambda":
            return LogLambdaController(threshold, lambda_init=0.5, lambda_lr=2.0, window=8)
        return PIDLagrangeController(threshold, kp=1.0, ki=0.5, kd=0.2, lambda_init=0.1, derivative_ema_alpha=0.5)
    return PerCategoryLagrange({"a": one(thresholds[0]), "b": one(thresholds[1])})


@pytest.mark.parametrize("kind", ["log_lambda", "pid"])
def test_each_lambda_is_its_scalar_controller_on_its_column(kind):
    generator = np.random.default_rng(1)
    rollouts = [generator.normal(0.1, 0.3, size=(6, 2)).tolist() for _ in range(12)]
    vector = build(kind)
    column_a, column_b = build(kind).controllers.values()  # fresh scalar twins
    for rows in rollouts:
        got = vector.update(rows)
        assert got == [column_a.update([r[0] for r in rows]), column_b.update([r[1] for r in rows])]
    assert vector.value == [column_a.value, column_b.value]
    assert vector.at_cap_steps == max(column_a.at_cap_steps, column_b.at_cap_steps)


@pytest.mark.parametrize("kind", ["log_lambda", "pid"])
def test_vector_lambda_resumes_exactly(kind):
    generator = np.random.default_rng(2)
    rollouts = [generator.normal(0.2, 0.4, size=(5, 2)).tolist() for _ in range(9)]
    uninterrupted = build(kind)
    expected = [uninterrupted.update(rows) for rows in rollouts]
    first = build(kind)
    for rows in rollouts[:4]:
        first.update(rows)
    import json

    resumed = build(kind)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through the checkpoint's JSON
    assert [resumed.update(rows) for rows in rollouts[4:]] == expected[4:]  # exact, not approx
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_vector_lambda_refuses_mismatched_state_and_costs():
    controller = build("log_lambda")
    other = PerCategoryLagrange({"b": LogLambdaController(0.0, 0.5, 1.0), "a": LogLambdaController(0.0, 0.5, 1.0)})
    with pytest.raises(ValueError, match="holds the categories"):
        other.load_state_dict(controller.state_dict())
    with pytest.raises(ValueError, match=r"\[B\]\[K\] with K = 2"):
        controller.update([[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="is for a 'log_lambda' controller"):
        controller.load_state_dict(LogLambdaController(0.0, 0.5, 1.0).state_dict())


def test_a_lambda_that_decayed_near_zero_answers_a_late_violation_slowly_under_log_lambda_at_once_under_pid():
    """Why the README recommends ``lagrange=pid`` for per-category runs. A loose category's λ_k
    decays during its slack spell; should its cost later cross d_k, log-λ's step lr·λ·(J_c − d)
    is proportional to that small λ. Since exp(−x) ≥ 1 − x, each update lowers 1/λ by at most
    lr·e (e = J_c − d), so reaching λ* takes at least (1/λ − 1/λ*)/(lr·e) updates. PID's λ is
    kp·e + ki·I with I clamped at 0 (nothing banked while slack): it answers the first update."""
    lr, kp, ki = 5.0, 2.0, 0.5
    log_lambda = LogLambdaController(0.3, lambda_init=0.5, lambda_lr=lr, window=None)
    pid = PIDLagrangeController(0.3, kp=kp, ki=ki, kd=0.0, lambda_init=0.5)
    for _ in range(20):  # slack: cost 0.05 against the limit 0.3
        log_lambda.update([0.05])
        pid.update([0.05])
    decayed = log_lambda.value
    assert decayed < 0.05 and pid.value == 0.0
    updates = 0
    while log_lambda.value < 0.5:  # now violated by e = 0.1
        log_lambda.update([0.4])
        updates += 1
    assert updates >= (1 / decayed - 1 / 0.5) / (lr * 0.1) > 50, (updates, decayed)
    assert pid.update([0.4]) == pytest.approx(kp * 0.1 + ki * 0.1)  # 0.25 at the first update
    assert [round(pid.update([0.4]), 6) for _ in range(5)][-1] == pytest.approx(0.5)  # 0.2 + 0.05·n


def toy_controllers(kind: str) -> PerCategoryLagrange:
    """Gains for the toy's fast-moving 4-logit policy (the e2e run uses the shipped configs)."""
    def one(threshold):
        if kind == "log_lambda":
            return LogLambdaController(threshold, lambda_init=0.5, lambda_lr=0.3, window=None)
        if kind == "pid":
            return PIDLagrangeController(threshold, kp=2.0, ki=0.1, kd=0.0, lambda_init=0.1)
        return ConstantLagrange(0.0, threshold)
    return PerCategoryLagrange({"forbidden_a": one(0.0), "forbidden_b": one(0.3)})


def toy_run(kind: str, steps: int = 300, seed: int = 0):
    """The synthetic two-category task (rayrlhf.rewards.synthetic, its reward and per-category
    cost rules) with a policy over 4 token ids writing 8-token responses, trained by policy
    gradient on the real advantage with the real controllers. Limits: forbidden_a tight (0.0),
    forbidden_b loose (0.3)."""
    from rayrlhf.rewards.synthetic import forbidden_excess_per_category, rewarded_share_two_sets

    torch.manual_seed(seed)
    logits = torch.zeros(4, requires_grad=True)
    optimiser = torch.optim.SGD([logits], lr=1.0)
    lagrange = toy_controllers(kind)
    history = []
    for _ in range(steps):
        log_probs = torch.log_softmax(logits, -1)
        tokens = torch.multinomial(log_probs.exp().detach(), 64 * 8, replacement=True).view(64, 8)
        ids = tokens.tolist()
        rewards = torch.tensor(rewarded_share_two_sets(None, None, ids))
        costs = torch.tensor(forbidden_excess_per_category(None, None, ids))
        logp = log_probs[tokens]
        advantages = ppo_lag_advantages(rewards, costs, logp.detach(), logp.detach(), torch.zeros(64, 8),
                                        torch.zeros(64, 8, 2), torch.ones(64, 8), lagrange_multiplier=lagrange.value,
                                        kl_coef=0.0, clip_range_score=1.0, gamma=1.0, gae_lambda=1.0).advantages
        loss = -(advantages * logp).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        lagrange.update(costs.tolist())
        history.append((float(rewards.mean()), costs.mean(0).tolist(), lagrange.value))
    return history


@pytest.mark.parametrize("kind", ["log_lambda", "pid"])
def test_toy_task_meets_both_limits_and_the_loose_lambda_stays_near_zero(kind):
    history = toy_run(kind)
    last = history[-50:]
    cost_a, cost_b = (np.mean([h[1][k] for h in last]) for k in (0, 1))
    lambda_a = np.mean([h[2][0] for h in last])
    lambda_b = max(h[2][1] for h in last)
    assert history[0][1][0] > 0.0  # forbidden_a starts above its limit
    assert cost_a <= 0.0, cost_a  # the tight limit holds
    assert cost_b <= 0.3 - 0.05, cost_b  # the loose one is met with room to spare
    assert lambda_a > 0.1, lambda_a  # λ_a holds forbidden_a down
    assert lambda_b < 0.06 and lambda_b < lambda_a / 4, (lambda_b, lambda_a)  # λ_b ~ 0


def test_toy_task_without_multipliers_breaks_the_tight_limit():
    """The same task with every λ_k fixed at 0: the reward drives forbidden_a far over its
    limit, so the limits above are the controllers' doing."""
    history = toy_run("constant")
    assert np.mean([h[1][0] for h in history[-50:]]) > 0.1
