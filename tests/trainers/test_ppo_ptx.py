"""The PTX term of the policy update: its rows, and its share of the gradient."""

from __future__ import annotations

import pytest
import torch

from rayrlhf.algorithms import ppo_actor_loss
from rayrlhf.models import load_causal_lm, load_tokenizer
from rayrlhf.models.forward import response_logits, token_logprobs
from rayrlhf.trainers.sft_trainer import encode_sft
from rayrlhf.types import PTXBatch, build_rollout_batch
from rayrlhf.workers.policy import ptx_lm_loss


def test_ptx_rows_shard_over_ranks_and_chunk_over_minibatches():
    batch = PTXBatch(torch.arange(7).unsqueeze(1), torch.ones(7, 1), torch.ones(7, 1))
    assert [int(x) for x in batch.shard(1, 2).input_ids[:, 0]] == [1, 3, 5]
    parts = batch.chunks(3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), batch.input_ids)
    assert [len(p) for p in batch.rows(slice(0, 2)).chunks(4)] == [1, 1]  # no empty parts


def test_ptx_adds_its_coefficient_times_the_lm_gradient(tiny_model_dir):
    """∇(L_PPO + γ L_PTX) = ∇L_PPO + γ ∇L_PTX, with L_PTX the answer-token NLL of the SFT rows."""
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, dtype=torch.float64)
    sft = encode_sft(tokenizer, ["What is 2 + 2?", "Name a colour."], ["4", "Blue, for example."], "chat", 64)
    ptx = PTXBatch(sft.input_ids, sft.attention_mask, sft.response_mask)
    rollout = build_rollout_batch([[5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14]], [True, True],
                                  tokenizer.pad_token_id)
    advantages = torch.tensor([[0.5, -1.0, 2.0], [1.5, -0.5, 0.0]], dtype=torch.float64)
    mask = rollout.response_mask.double()

    def ppo_loss():
        logp = token_logprobs(response_logits(model, rollout.sequences, rollout.attention_mask,
                                              rollout.prompt_length), rollout.response_ids).double()
        return ppo_actor_loss(logp, logp.detach() - 0.1, advantages, mask, 0.2, "seq_mean")[0]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    coef = 0.3
    g_ppo, g_ptx = grads(ppo_loss()), grads(ptx_lm_loss(model, ptx))
    g_both = grads(ppo_loss() + coef * ptx_lm_loss(model, ptx))
    assert g_ptx.abs().sum() > 0 and g_ppo.abs().sum() > 0
    # Log-probs are taken in fp32 (token_logprobs), hence a tolerance far below the PTX share.
    torch.testing.assert_close(g_both, g_ppo + coef * g_ptx, rtol=1e-4, atol=1e-7)
    assert (g_both - g_ppo).abs().max() > 1e3 * 1e-7
    # The PTX loss is the mean NLL of the answer tokens only (prompt tokens carry no loss).
    logits = model(input_ids=ptx.input_ids, attention_mask=ptx.attention_mask).logits.double()
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ptx.input_ids[:, 1:, None])[..., 0]
    answer = ptx.loss_mask[:, 1:].bool()
    assert ptx_lm_loss(model, ptx).item() == pytest.approx(nll[answer].mean().item(), rel=1e-6)
