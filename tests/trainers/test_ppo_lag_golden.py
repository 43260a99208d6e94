"""Golden losses of one PPO-Lag step on a fixed tiny batch, against a NumPy reference.

The reference below is written from the formulas (Safe RLHF's KL-shaped token rewards and
costs, GAE in its sum form, (A_r − λ A_c)/(1 + λ), PPO's clipped surrogate, the clipped value
loss), row by row in plain Python/NumPy, sharing no code with rayrlhf. It checks
- the torch functions a step is made of, on fixed synthetic logits (fast), and
- the real workers (a DeepSpeed policy rank and both critics, as Ray actors on the tiny
  model): the losses they report for the step's single mini-batch (computed before their
  optimiser step) are the reference's, with log-probs and values read from a plain
  transformers forward of each unpadded sequence (slow).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from rayrlhf.algorithms import clipped_value_loss, ppo_actor_loss, ppo_lag_advantages
from rayrlhf.models.forward import token_logprobs
from rayrlhf.types import build_rollout_batch

# The step's settings (deliberately unlike the defaults, so every term matters).
SETTINGS = dict(lagrange_multiplier=0.7, kl_coef=0.05, clip_range_score=1.0, gamma=0.99, gae_lambda=0.9)
CLIP_RATIO, CLIP_VALUE = 0.2, 0.1


# ------------------------------------------------------------------ the NumPy reference
def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Â_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t, V after the last token = 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


def np_step_losses(*, logp, old_logp, ref_logp, old_reward_values, old_cost_values, reward_values, cost_values,
                   reward_scores, cost_scores, lengths, lagrange_multiplier, kl_coef, clip_range_score, gamma,
                   gae_lambda, clip_ratio, clip_value, aggregation="seq_mean") -> dict[str, float]:
    """One step's actor and critic losses; every [B, R] input is read up to each row's length.
    ``seq_mean``: each row's token mean, then the mean over rows; ``token_mean``: all tokens."""
    lam = lagrange_multiplier
    surrogate, clipped, k3, reward_sq, cost_sq = [], [], [], [], []
    rows = []  # (first, last) index of each row's tokens in the flat lists
    for b, n in enumerate(lengths):
        rows.append((len(surrogate), len(surrogate) + n))
        kl = [-kl_coef * (old_logp[b][t] - ref_logp[b][t]) for t in range(n)]
        token_rewards = [0.5 * kl[t] for t in range(n)]
        token_costs = [-0.5 * kl[t] for t in range(n)]
        token_rewards[-1] += min(max(reward_scores[b], -clip_range_score), clip_range_score)
        token_costs[-1] += min(max(cost_scores[b], -clip_range_score), clip_range_score)
        adv_r = np_gae(token_rewards, list(old_reward_values[b][:n]), gamma, gae_lambda)
        adv_c = np_gae(token_costs, list(old_cost_values[b][:n]), gamma, gae_lambda)
        for t in range(n):
            advantage = (adv_r[t] - lam * adv_c[t]) / (1 + lam)
            ratio = math.exp(logp[b][t] - old_logp[b][t])
            bounded = min(max(ratio, 1 - clip_ratio), 1 + clip_ratio)
            surrogate.append(min(ratio * advantage, bounded * advantage))
            clipped.append(abs(ratio - 1) > clip_ratio)
            k3.append((ratio - 1) - math.log(ratio))
            for values, old_values, adv, out in ((reward_values, old_reward_values, adv_r, reward_sq),
                                                 (cost_values, old_cost_values, adv_c, cost_sq)):
                target = adv[t] + old_values[b][t]
                moved = old_values[b][t] + min(max(values[b][t] - old_values[b][t], -clip_value), clip_value)
                out.append(max((values[b][t] - target) ** 2, (moved - target) ** 2))

    def mean(values: list[float]) -> float:
        if aggregation == "token_mean":
            return float(np.mean(values))
        return float(np.mean([np.mean(values[first:last]) for first, last in rows]))

    return {"actor_loss": -mean(surrogate), "clip_fraction": float(np.mean(clipped)),
            "approx_kl": float(np.mean(k3)), "reward_critic_loss": 0.5 * mean(reward_sq),
            "cost_critic_loss": 0.5 * mean(cost_sq)}


# ------------------------------------------------------------------ fixed inputs
LENGTHS = [3, 2]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
# How far the rollout-time policy, the reference and the old values sit from the current
# ones: some tokens' ratios leave [0.8, 1.2] (clipped) and some value moves exceed ±0.1.
OLD_SHIFT = torch.tensor([[0.3, -0.05, -0.25], [0.1, -0.4, 0.0]], dtype=torch.float64)
REF_SHIFT = torch.tensor([[0.8, -0.6, 0.2], [-1.1, 0.5, 0.0]], dtype=torch.float64)
VALUE_SHIFT = torch.tensor([[0.05, -0.3, 0.2], [-0.15, 0.02, 0.0]], dtype=torch.float64)
REWARD_SCORES, COST_SCORES = [2.5, -0.3], [0.4, -1.7]  # 2.5 and -1.7 are clipped to ±1


def torch_step_losses(logp, reward_values, cost_values, aggregation) -> dict[str, float]:
    """The same step through the torch functions the driver and the workers call."""
    old_logp, ref_logp = logp + OLD_SHIFT * MASK, logp + REF_SHIFT * MASK
    old_reward_values, old_cost_values = reward_values + VALUE_SHIFT * MASK, cost_values - VALUE_SHIFT * MASK
    adv = ppo_lag_advantages(torch.tensor(REWARD_SCORES, dtype=torch.float64),
                             torch.tensor(COST_SCORES, dtype=torch.float64), old_logp, ref_logp,
                             old_reward_values, old_cost_values, MASK, **SETTINGS)
    mask = MASK.double()
    actor_loss, info = ppo_actor_loss(logp, old_logp, adv.advantages, mask, CLIP_RATIO, aggregation)
    return {"actor_loss": actor_loss.item(), "clip_fraction": info["clip_fraction"].item(),
            "approx_kl": info["approx_kl"].item(),
            "reward_critic_loss": clipped_value_loss(reward_values, old_reward_values, adv.reward_returns, mask,
                                                     CLIP_VALUE, aggregation).item(),
            "cost_critic_loss": clipped_value_loss(cost_values, old_cost_values, adv.cost_returns, mask,
                                                   CLIP_VALUE, aggregation).item()}


def reference_losses(logp: np.ndarray, reward_values: np.ndarray, cost_values: np.ndarray,
                     aggregation: str = "seq_mean") -> dict[str, float]:
    old, value_shift = OLD_SHIFT.numpy(), VALUE_SHIFT.numpy()
    return np_step_losses(logp=logp, old_logp=logp + old, ref_logp=logp + REF_SHIFT.numpy(),
                          old_reward_values=reward_values + value_shift, old_cost_values=cost_values - value_shift,
                          reward_values=reward_values, cost_values=cost_values, reward_scores=REWARD_SCORES,
                          cost_scores=COST_SCORES, lengths=LENGTHS, clip_ratio=CLIP_RATIO, clip_value=CLIP_VALUE,
                          aggregation=aggregation, **SETTINGS)


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
def test_the_steps_torch_functions_give_the_reference_losses(aggregation):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 11, generator=generator, dtype=torch.float64) * 2
    tokens = torch.tensor([[4, 0, 9], [7, 2, 0]])
    reward_values = torch.randn(2, 3, generator=generator, dtype=torch.float64) * MASK
    cost_values = torch.randn(2, 3, generator=generator, dtype=torch.float64) * MASK
    logp = token_logprobs(logits, tokens).double() * MASK

    picked = np.take_along_axis(np_log_softmax(logits.numpy()), tokens.numpy()[..., None], axis=-1)[..., 0]
    expected = reference_losses(picked * MASK.numpy(), reward_values.numpy(), cost_values.numpy(), aggregation)
    got = torch_step_losses(logp, reward_values, cost_values, aggregation)
    assert 0 < expected["clip_fraction"] < 1  # both branches of the clip are exercised
    assert got == pytest.approx(expected, abs=1e-6)
    # The rows have 3 and 2 tokens, so the two aggregations really differ.
    other = reference_losses(picked * MASK.numpy(), reward_values.numpy(), cost_values.numpy(),
                             "token_mean" if aggregation == "seq_mean" else "seq_mean")
    assert abs(other["actor_loss"] - expected["actor_loss"]) > 1e-3


@pytest.mark.slow
@pytest.mark.e2e
def test_the_workers_losses_of_one_step_are_the_reference_losses(ray_cluster, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rayrlhf.models import load_tokenizer
    from rayrlhf.models.score_model import ScoreModel
    from rayrlhf.workers.base import OptimConfig
    from rayrlhf.workers.critic import CriticWorker
    from rayrlhf.workers.group import ActorGroup, get_fail_fast
    from rayrlhf.workers.policy import PolicyWorker

    # Critics start from saved score models, so their heads are the same weights here.
    critic_dirs = {}
    for seed, stream in enumerate(("reward", "cost")):
        torch.manual_seed(seed)
        critic_dirs[stream] = ScoreModel.from_pretrained(tiny_model_dir, kind=stream, dtype="float32") \
            .save_pretrained(tmp_path / stream)
    prompts, responses = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15]]
    pad = load_tokenizer(tiny_model_dir).pad_token_id
    batch = build_rollout_batch(prompts, responses, [False, True], pad)

    # The reference reads every sequence unpadded, through plain transformers models.
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    logp = np.zeros((2, 3))
    values = {stream: np.zeros((2, 3)) for stream in critic_dirs}
    with torch.no_grad():
        for b, (prompt, response) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([prompt + response])
            logits = lm(ids).logits[0].double().numpy()
            for t, token in enumerate(response):  # position len(prompt) - 1 + t predicts token t
                logp[b, t] = np_log_softmax(logits[len(prompt) - 1 + t])[token]
            for stream, folder in critic_dirs.items():
                head = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
                scores = head.score(head.base_model(ids).last_hidden_state)[0, :, 0].double().numpy()
                values[stream][b, :len(response)] = scores[len(prompt) - 1:len(prompt) - 1 + len(response)]
    expected = reference_losses(logp, values["reward"], values["cost"])  # the workers' default: seq_mean

    optim = OptimConfig(lr=1e-3, bf16=False, micro_batch_size=2, gradient_checkpointing=False)
    common = {"num_cpus": 1, "distributed": True, "dtype": "float32", "optim": optim, "threads": 1, "seed": 0}
    groups = [ActorGroup(PolicyWorker, 1, tiny_model_dir, name="golden-policy", **common),
              ActorGroup(CriticWorker, 1, "reward", str(critic_dirs["reward"]), name="golden-reward-critic", **common),
              ActorGroup(CriticWorker, 1, "cost", str(critic_dirs["cost"]), name="golden-cost-critic", **common)]
    policy, reward_critic, cost_critic = groups
    try:
        get_fail_fast([ref for group, method in zip(groups, (PolicyWorker, CriticWorker, CriticWorker))
                       for ref in group.call(method.init_engine)])
        policy_logp, = get_fail_fast(policy.call(PolicyWorker.logprobs, batch))
        (reward_values,), (cost_values,) = (get_fail_fast(group.call(CriticWorker.values, batch))[0].values()
                                            for group in (reward_critic, cost_critic))
        # What the score phase would hand on, shifted as the reference's inputs are.
        old_logp = policy_logp.double() + OLD_SHIFT * MASK
        old_reward_values = reward_values.double() + VALUE_SHIFT * MASK
        old_cost_values = cost_values.double() - VALUE_SHIFT * MASK
        adv = ppo_lag_advantages(torch.tensor(REWARD_SCORES), torch.tensor(COST_SCORES), old_logp,
                                 policy_logp.double() + REF_SHIFT * MASK, old_reward_values, old_cost_values,
                                 MASK, **SETTINGS)
        trained = replace(batch, old_logprobs=old_logp.float(), advantages=adv.advantages.float(),
                          reward_values=old_reward_values.float(), reward_returns=adv.reward_returns.float(),
                          cost_values=old_cost_values.float(), cost_returns=adv.cost_returns.float())
        one_minibatch = {"epochs": 1, "minibatch_size": 2, "seed": 0}
        (actor,), (reward_by_stream,), (cost_by_stream,) = (
            get_fail_fast(policy.call(PolicyWorker.train, trained, clip_ratio=CLIP_RATIO, **one_minibatch)),
            get_fail_fast(reward_critic.call(CriticWorker.train, trained, clip_range_value=CLIP_VALUE,
                                             **one_minibatch)),
            get_fail_fast(cost_critic.call(CriticWorker.train, trained, clip_range_value=CLIP_VALUE,
                                           **one_minibatch)))
    finally:
        for group in groups:
            group.kill()
    reward, cost = reward_by_stream["reward"], cost_by_stream["cost"]
    # The workers read the same log-probs and values as the plain transformers forward ...
    np.testing.assert_allclose(policy_logp.numpy() * MASK.numpy(), logp, atol=1e-5)
    np.testing.assert_allclose(reward_values.numpy(), values["reward"], atol=1e-5)
    # ... and report the reference's losses for the step.
    got = {"actor_loss": actor.loss, "clip_fraction": actor.clip_fraction, "approx_kl": actor.approx_kl,
           "reward_critic_loss": reward.loss, "cost_critic_loss": cost.loss}
    assert 0 < expected["clip_fraction"] < 1
    assert got == pytest.approx(expected, abs=1e-5)
    assert actor.nonfinite_minibatches == reward.nonfinite_minibatches == cost.nonfinite_minibatches == 0


@pytest.mark.slow
@pytest.mark.e2e
def test_micro_batches_and_the_shared_critic_take_the_unsplit_two_critic_step(ray_cluster, tiny_model_dir, tmp_path):
    """One optimiser step on a 3-row mini-batch: computed row by row (micro-batches of 1,
    trimmed) it lands on the weights the whole padded mini-batch gives; a shared critic reads
    the reward critic's values from its reward head, starts its cost head from the cost model's
    head, and reports each head's loss as the two critics do."""
    from rayrlhf.models.score_model import ScoreModel
    from rayrlhf.workers.base import OptimConfig
    from rayrlhf.workers.critic import CriticWorker
    from rayrlhf.workers.group import ActorGroup, get_fail_fast
    from rayrlhf.workers.policy import PolicyWorker

    critic_dirs = {}
    for seed, stream in enumerate(("reward", "cost")):
        torch.manual_seed(seed)
        critic_dirs[stream] = str(ScoreModel.from_pretrained(tiny_model_dir, kind=stream, dtype="float32")
                                  .save_pretrained(tmp_path / stream))
    batch = build_rollout_batch([[5, 6, 7, 8], [9, 10], [4]], [[11, 12, 13], [14, 15], [16, 17, 18, 19]],
                                [False, True, True], 0, rollout_logprobs=[[-1.0] * 3, [-2.0] * 2, [-1.5] * 4])
    mask = batch.response_mask.float()
    steps = torch.linspace(-1.0, 1.0, mask.numel()).reshape(mask.shape) * mask
    trained = replace(batch, old_logprobs=batch.rollout_logprobs, advantages=steps,
                      reward_values=0.1 * steps, reward_returns=steps, cost_values=-0.1 * steps, cost_returns=-steps)
    optim = OptimConfig(lr=1e-2, bf16=False, micro_batch_size=1, caller_accumulates=True)
    common = {"num_cpus": 0.5, "distributed": True, "dtype": "float32", "optim": optim, "threads": 1, "seed": 0}
    groups = {
        "policy_whole": ActorGroup(PolicyWorker, 1, tiny_model_dir, name="mb-policy-whole", micro_batch_size=3, **common),
        "policy_rows": ActorGroup(PolicyWorker, 1, tiny_model_dir, name="mb-policy-rows", micro_batch_size=1, **common),
        "reward": ActorGroup(CriticWorker, 1, "reward", critic_dirs["reward"], name="mb-reward", micro_batch_size=3,
                             **common),
        "cost": ActorGroup(CriticWorker, 1, "cost", critic_dirs["cost"], name="mb-cost", micro_batch_size=3, **common),
        "shared": ActorGroup(CriticWorker, 1, ("reward", "cost"), critic_dirs, name="mb-shared", micro_batch_size=1,
                             **common),
    }
    try:
        get_fail_fast([ref for g in groups.values() for ref in
                       g.call(PolicyWorker.init_engine if g.name.startswith("mb-policy") else CriticWorker.init_engine)])
        values = {name: get_fail_fast(groups[name].call(CriticWorker.values, batch))[0]
                  for name in ("reward", "cost", "shared")}
        one = {"epochs": 1, "minibatch_size": 3, "seed": 0}
        (whole,), (rows,) = (get_fail_fast(groups[name].call(PolicyWorker.train, trained, clip_ratio=CLIP_RATIO, **one))
                             for name in ("policy_whole", "policy_rows"))
        weights = {name: get_fail_fast([groups[name].call_rank0(PolicyWorker.weights)])[0]
                   for name in ("policy_whole", "policy_rows")}
        (reward,), (cost,), (shared,) = (get_fail_fast(groups[name].call(CriticWorker.train, trained,
                                                                         clip_range_value=CLIP_VALUE, **one))
                                         for name in ("reward", "cost", "shared"))
    finally:
        for group in groups.values():
            group.kill()
    # The row-by-row step is the whole mini-batch's step (the loss and the new weights).
    assert rows.loss == pytest.approx(whole.loss, abs=1e-6)
    assert rows.clip_fraction == pytest.approx(whole.clip_fraction, abs=1e-6)
    moved = max(float((weights["policy_whole"][n] - before).abs().max())
                for n, before in get_initial_weights(tiny_model_dir).items())
    assert moved > 1e-4  # the step did move the weights
    # fp32 sums in another order differ by rounding, and Adam divides by sqrt(v): where a
    # gradient is near zero, that rounding can move a lone weight by up to the lr (1e-2; seen
    # 2e-6 to 3e-5). So: all but 0.1% of the weights agree to 2e-6, none beyond the lr.
    diffs = [(weights["policy_rows"][name] - tensor).abs().flatten() for name, tensor in weights["policy_whole"].items()]
    diff = torch.cat(diffs)
    assert int((diff > 2e-6).sum()) <= diff.numel() // 1000  # seen: 187 of 722,048
    assert float(diff.max()) <= optim.lr
    # Shared critic: reward head = the reward critic; the cost head is the cost model's head on
    # the reward model's backbone (here both judges share the tiny model's backbone, so its
    # cost values may equal the separate cost critic's).
    torch.testing.assert_close(values["shared"]["reward"], values["reward"]["reward"], atol=1e-5, rtol=1e-5)
    assert set(values["shared"]) == {"reward", "cost"}
    # Its losses before the step: the reward head's is the reward critic's (same weights, same
    # data); row by row, as the mini-batch's seq_mean.
    assert shared["reward"].loss == pytest.approx(reward["reward"].loss, abs=1e-6)
    assert math.isfinite(shared["cost"].loss) and math.isfinite(cost["cost"].loss)


def get_initial_weights(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict())
