"""ZeRO-3 PPO-Lag for real: each of two policy ranks (and two critic ranks) holds a slice of
every weight, so syncing the engines, saving the policy and resuming must gather them.

The tiny model's matrices are split too: below ``stage3_param_persistence_threshold``
(rayrlhf.workers.base.deepspeed_config) DeepSpeed keeps tensors whole, and its default would
keep all of the tiny model's."""

from __future__ import annotations

import pytest
import torch

from rayrlhf.config import compose_config
from rayrlhf.trainers import ppo_lag

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ZERO3 = ["+experiment=synthetic", "ppo.zero_stage=3", "resources.policy_ranks=2", "resources.critic_ranks=2",
         "resources.cpus_per_worker=0.5", "rollout.prompts_per_step=4", "rollout.max_new_tokens=8",
         "ppo.minibatch_size=2", "ppo.epochs=1", "ppo.logprob_check_every=1", "ppo.logprob_check_rows=2",
         "save_every=0", "logger=[jsonl]", "rollout.sync_bucket_mb=0.1"]


def reloaded(folder) -> dict[str, torch.Tensor]:
    """A saved policy folder as transformers loads it, by state_dict name."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).state_dict()


def assert_same_weights(saved: dict[str, torch.Tensor], gathered: dict[str, torch.Tensor]) -> None:
    assert saved.keys() == gathered.keys()
    for name, tensor in gathered.items():
        assert tensor.shape == saved[name].shape, name  # not a ZeRO-3 placeholder
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=name)


def test_zero3_syncs_saves_and_resumes(ray_cluster, tmp_path):
    """Two ZeRO-3 steps, then a resume from the step-2 checkpoint that runs step 3: at every
    step the engine's log-probs are the trained policy's (rollout/logprob_gap, measured every
    step), and each saved policy folder reloads as the weights gathered from the ranks."""
    from rayrlhf.trainers.checkpoint_dir import latest_checkpoint
    from rayrlhf.workers.group import get_fail_fast
    from rayrlhf.workers.policy import PolicyWorker

    first = tmp_path / "first"
    history = ppo_lag.run(compose_config("ppo_lag", [*ZERO3, "steps=2"], output_dir=str(first)))
    assert [m["step"] for m in history] == [1, 2]

    checkpoint = latest_checkpoint(first)
    assert checkpoint is not None and checkpoint.name == "step_000002"
    cfg = compose_config("ppo_lag", [*ZERO3, "steps=3", f"resume_from={first}"], output_dir=str(tmp_path / "second"))
    driver = ppo_lag.PPOLagDriver(cfg)
    try:
        infos = get_fail_fast(driver.policy.call(PolicyWorker.info))
        driver.load_checkpoint(checkpoint)  # also syncs the engine
        assert driver.step_index == 2
        restored, *others = get_fail_fast(driver.roles.policy_rank0(PolicyWorker.weights))
        history.append(driver.step())
        trained, *_ = get_fail_fast(driver.roles.policy_rank0(PolicyWorker.weights))
        driver.save_policy(tmp_path / "second" / "policy")
    finally:
        driver.shutdown()

    # Two ranks, each with a slice: every parameter is counted whole, and rank 0 alone returns them.
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(first / "policy")
    assert [info["world_size"] for info in infos] == [2, 2]
    assert infos[0]["parameters"] == sum(p.numel() for p in whole.parameters())
    assert others == [None]
    # Every sync sent one copy of the weights in the engine's dtype (fp32 here; the tied head
    # once), in as many buckets of at most 0.1 MB as the model's tensors fill in order.
    from rayrlhf.rollout.weight_sync import pack_buckets

    model_bytes = 4 * sum(p.numel() for p in whole.parameters())
    buckets = len(list(pack_buckets(whole.state_dict().items(), 100_000)))
    assert buckets > 10
    assert all(m["rollout/sync_bytes"] == model_bytes and m["rollout/sync_buckets"] == buckets for m in history)
    # Every policy rank sends under ZeRO-3; the engines' load time is read from the engines alone.
    assert all(0 < m["rollout/sync_load_s"] < m["timing/sync_s"] for m in history)
    # (a) The engines received the gathered weights: after each update (step 2) and after the
    # resume's load (step 3) the engine samples with the policy's own log-probs, fp32 rounding
    # apart, and no longer with the initial weights' (the reference's).
    assert [m["step"] for m in history] == [1, 2, 3]
    assert all(m["rollout/logprob_gap_measured"] == 1.0 for m in history)
    assert {m["rollout/logprob_gap_tolerance"] for m in history} == {1e-3}
    assert max(m["rollout/logprob_gap"] for m in history) < 1e-3
    assert all(m["rollout/logprobs_from_engine"] == 1.0 for m in history)
    assert history[-1]["rollout/ref_logprob_gap"] > 3 * history[-1]["rollout/logprob_gap"]
    # (b) The policy saved at the end of the first run is what its checkpoint restores, and the
    # resumed run's saved policy is the weights its last step trained (and synced).
    assert_same_weights(reloaded(first / "policy"), restored)
    assert_same_weights(reloaded(tmp_path / "second" / "policy"), trained)
    # (c) The resumed step trained on from the checkpoint.
    assert any(not torch.equal(restored[name], trained[name]) for name in trained)
