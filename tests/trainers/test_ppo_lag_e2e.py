"""PPO-Lag for real: Ray actors, DeepSpeed-trained policy and critics, HF and vLLM engines.

The synthetic task (rayrlhf/rewards/synthetic.py) has a known answer: the reward grows with
the share of token ids ≡ 0 or 1 (mod 4) and the cost with the share ≡ 1 beyond 20%, so an
unconstrained policy becomes unsafe while a constrained one can gain reward safely.
"""

from __future__ import annotations

import math
import statistics

import pytest

from rayrlhf.config import compose_config
from rayrlhf.trainers import ppo_lag

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def run_ppo(tmp_path, name, *overrides):
    cfg = compose_config("ppo_lag", ["+experiment=synthetic", *overrides], output_dir=str(tmp_path / name))
    return ppo_lag.run(cfg)


def last(history, key, n=10):
    return statistics.mean(m[key] for m in history[-n:])


def test_ppo_lag_meets_the_cost_limit_where_plain_ppo_does_not(ray_cluster, tmp_path):
    lag = run_ppo(tmp_path, "lag")
    plain = run_ppo(tmp_path, "plain", "lagrange=constant", "lagrange.value=0")
    assert len(lag) == len(plain) == 40
    threshold = lag[0]["cost/threshold"]
    # Both start above the limit (about 25% forbidden tokens against an allowance of 20%).
    assert lag[0]["cost/mean"] > threshold and plain[0]["cost/mean"] > threshold
    # PPO-Lag: λ rises while the policy is unsafe, the cost ends below the limit, and λ settles.
    lambdas = [m["lagrange/lambda"] for m in lag]
    assert max(lambdas) > 2 * lambdas[0]
    assert last(lag, "cost/mean") <= threshold
    assert max(lambdas[-10:]) - min(lambdas[-10:]) < 0.25 * max(lambdas)
    # λ = 0 (plain PPO on reward): the same reward pressure drives the cost far above the limit.
    assert all(m["lagrange/lambda"] == 0 for m in plain)
    # ... and no cost critic was trained for it (the cost never shapes a plain PPO update).
    assert all("critic/cost_loss" not in m for m in plain) and all("critic/cost_loss" in m for m in lag)
    assert last(plain, "cost/mean") > threshold + 0.1
    # Both learn the reward.
    for history in (lag, plain):
        assert last(history, "reward/mean") > history[0]["reward/mean"] + 0.2
    # The tiny model is float32, so policy and HF engine compute in fp32 on every CPU (bf16
    # training follows the model's dtype), and the engine's log-probs are the policy's own:
    # the old log-probs are the engine's (ppo.logprobs_source=auto), checked on a few rows
    # every ppo.logprob_check_every steps (10 by default: steps 1, 11, 21, 31).
    assert {m["rollout/logprob_gap_tolerance"] for m in lag} == {1e-3}
    assert all(m["rollout/logprobs_from_engine"] == 1.0 for m in lag)
    assert [m["step"] for m in lag if m["rollout/logprob_gap_measured"]] == [1, 11, 21, 31]
    assert max(m["rollout/logprob_gap"] for m in lag) < 1e-3


@pytest.mark.parametrize("mode", [
    # Safe RLHF's layout, as main ran it before issue 13: two critics, recomputed old log-probs,
    # the frozen models in one actor of their own, one padded pass per mini-batch.
    ("ppo.critic_layout=separate", "ppo.logprobs_source=recompute", "resources.frozen_placement=one_actor",
     "ppo.micro_batch_size=16"),
    # One step off-policy: each step's responses were sampled during the previous step's
    # training, with the weights from before its update.
    ("rollout.async_generation=true",),
    # (ppo.trainable_layers=2 is not here: training 2 of the tiny model's 4 layers learns this
    # task too weakly and too variably in 40 steps: reward +0.05 in one run, cost +0.007 over
    # the limit in another.)
], ids=["separate-critics-recompute", "async"])
def test_ppo_lag_meets_the_cost_limit_in_each_mode(ray_cluster, tmp_path, mode):
    """The constrained task's threshold is met whichever way the step computes (the default
    mode is covered above, beside plain PPO)."""
    history = run_ppo(tmp_path, "mode", *mode)
    threshold = history[0]["cost/threshold"]
    assert history[0]["cost/mean"] > threshold
    assert last(history, "cost/mean") <= threshold
    assert last(history, "reward/mean") > history[0]["reward/mean"] + 0.1
    recomputed = "ppo.logprobs_source=recompute" in mode
    assert all(m["rollout/logprobs_from_engine"] == (0.0 if recomputed else 1.0) for m in history)
    assert all("critic/cost_loss" in m for m in history)
    if "rollout.async_generation=true" in mode:
        # Sampled one update behind, except the first step and each step whose engine log-probs
        # are checked (every 10th): those are generated on-policy, and the check still passes.
        on_policy = [m["step"] for m in history if m["rollout/policy_lag"] == 0]
        assert on_policy == [1, 11, 21, 31]
        assert all(m["rollout/policy_lag"] == 1 for m in history if m["step"] not in on_policy)
        assert max(m["rollout/logprob_gap"] for m in history) < history[0]["rollout/logprob_gap_tolerance"]
    else:
        assert all(m["rollout/policy_lag"] == 0 for m in history)


def test_forced_bf16_training_with_a_ptx_term(ray_cluster, tmp_path):
    """Two options in one run (each was a run of its own before).

    ppo.bf16=true on any CPU: the policy computes in bf16 (emulated where the CPU lacks it),
    the fp32 engine receives its weights, and the gap is bf16 rounding, not a failed sync.
    ppo.ptx_coef > 0 with SFT rows: every step reports the PTX loss, and it falls as the
    policy learns the answers (the tiny model starts far from them)."""
    from rayrlhf.models.zoo import logprob_gap_tolerance

    history = run_ppo(tmp_path, "bf16-ptx", "ppo.bf16=true", "+dataset@ptx=demo_sft", "ppo.ptx_coef=1.0",
                      "ppo.ptx_rows_per_step=8", "steps=4")
    assert [m["step"] for m in history] == [1, 2, 3, 4]
    tolerance = logprob_gap_tolerance("bfloat16")
    assert {m["rollout/logprob_gap_tolerance"] for m in history} == {tolerance}
    gaps = [m["rollout/logprob_gap"] for m in history]
    assert max(gaps) < tolerance
    assert max(gaps) > 1e-5  # it really computed in bf16: fp32 agrees to ~1e-6
    ptx = [m["actor/ptx_loss"] for m in history]
    assert all(math.isfinite(x) for x in ptx)
    assert ptx[-1] < ptx[0]


@pytest.mark.parametrize("sync_path", ["object_store", "collective"])
def test_full_step_with_vllm_engine_syncs_weights(ray_cluster, tmp_path, sync_path):
    """Real vLLM-CPU rollouts: after each update the engine samples from the new weights, sent
    through the object store or broadcast over the weight-sync group (gloo)."""
    history = run_ppo(tmp_path, "vllm", "rollout.engine=vllm", "steps=4", "ppo.logprob_check_every=1",
                      f"rollout.sync_path={sync_path}")
    assert [m["step"] for m in history] == [1, 2, 3, 4]
    # vLLM vs the trained policy on the same sampled tokens (a few rows), every step, within
    # the rounding of the precision both compute in (fp32 for the tiny model), so the engine's
    # log-probs stay the old log-probs.
    assert all(m["rollout/logprob_gap_measured"] == 1.0 for m in history)
    assert all(m["rollout/logprobs_from_engine"] == 1.0 for m in history)
    assert max(m["rollout/logprob_gap"] - m["rollout/logprob_gap_tolerance"] for m in history) < 0
    # After updates the engine no longer matches the initial weights: the sync took effect.
    final = history[-1]
    assert final["rollout/ref_logprob_gap"] > 3 * final["rollout/logprob_gap"]
    assert final["timing/sync_s"] < final["timing/step_s"]
    assert all(0 < m["rollout/sync_load_s"] < m["timing/sync_s"] for m in history)
    # The saved policy is a plain transformers directory.
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "vllm" / "policy")
    # Each sync sent one copy of the policy in the engine's dtype (fp32 here, the tied head once).
    assert {m["rollout/sync_bytes"] for m in history} == {float(4 * sum(p.numel() for p in saved.parameters()))}


def test_two_data_parallel_ranks_stay_in_sync(ray_cluster, tmp_path):
    """Policy and critics on 2 ranks each (gloo between actors): after a step both policy
    ranks hold the same weights, and every rank saw only its half of the rows."""
    import ray
    import torch

    from rayrlhf.workers.policy import PolicyWorker

    cfg = compose_config("ppo_lag", ["+experiment=synthetic", "resources.policy_ranks=2",
                                     "resources.critic_ranks=2", "resources.cpus_per_worker=0.5",
                                     "rollout.prompts_per_step=16", "ppo.minibatch_size=8"],
                         output_dir=str(tmp_path))
    driver = ppo_lag.PPOLagDriver(cfg)
    try:
        before = ray.get(driver.policy.call_rank0(PolicyWorker.weights))
        metrics = driver.step()
        rank0, rank1 = ray.get(driver.policy.call(PolicyWorker.weights))
        assert rank0.keys() == rank1.keys()
        for name in rank0:
            torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
        assert any(not torch.equal(before[n], rank0[n]) for n in rank0)  # the step did update
        assert [info["world_size"] for info in ray.get(driver.policy.call(PolicyWorker.info))] == [2, 2]
        assert metrics["step"] == 1
    finally:
        driver.shutdown()
