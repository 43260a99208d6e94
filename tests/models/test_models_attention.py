"""The trained models' attention (bf16 on CPUs: fp32 backward) computes what sdpa computes."""

from __future__ import annotations

import pytest
import torch

from rayrlhf.models import load_causal_lm, load_tokenizer
from rayrlhf.models.attention import NAME, use_trainable_attention
from rayrlhf.models.forward import response_logits, token_logprobs
from rayrlhf.models.lora import LoRASpec, add_lora
from rayrlhf.types import build_rollout_batch


def padded_batch(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    prompts = [tok("The capital of France is")["input_ids"], tok("Hi")["input_ids"]]
    return build_rollout_batch(prompts, [[40, 41, 42, 43], [50]], [False, False], tok.pad_token_id)


def logprobs_and_grads(model, batch):
    logp = token_logprobs(response_logits(model, batch.sequences, batch.attention_mask, batch.prompt_length),
                          batch.response_ids) * batch.response_mask
    model.zero_grad()
    logp.sum().backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logp.detach().float(), grads


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("bfloat16", 0.05)])
def test_trainable_attention_matches_sdpa_on_left_padded_rows(tiny_model_dir, dtype, atol):
    """Padding must stay masked (transformers builds no mask for an attention name without a
    mask function: the first version of this module let rows attend to their padding), and
    the fp32 backward of bf16 must give sdpa's gradients up to bf16 rounding."""
    torch.manual_seed(0)
    batch = padded_batch(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, dtype=dtype)
    add_lora(model, LoRASpec(rank=4, alpha=8.0))
    for name, p in model.named_parameters():  # non-zero B, so adapters shape the output too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    assert model.config._attn_implementation == "sdpa"
    expected, expected_grads = logprobs_and_grads(model, batch)
    use_trainable_attention(model)
    assert model.config._attn_implementation == NAME
    got, grads = logprobs_and_grads(model, batch)
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    for name, grad in grads.items():
        scale = expected_grads[name].abs().max().item() + 1e-6
        assert (grad - expected_grads[name]).abs().max().item() <= atol * 4 * scale, name
    # the rows' own log-probs: a row padded on the left gives what it gives unpadded
    with torch.no_grad():
        alone = build_rollout_batch([batch.sequences[1][batch.attention_mask[1].bool()][:-1].tolist()], [[50]],
                                    [False], 0)
        row = token_logprobs(response_logits(model, alone.sequences, alone.attention_mask, alone.prompt_length),
                             alone.response_ids)
    torch.testing.assert_close(row[0, 0].float(), got[1, 0], atol=atol, rtol=0)
