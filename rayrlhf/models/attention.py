"""Attention for trained models: bf16 on CPUs trains its attention in fp32.

torch's CPU attention kernels (2.13) run the bf16 backward about twice as slowly as the
fp32 one, while the bf16 forward is twice as fast. Measured on one thread of an AMX Xeon,
SmolLM2's attention (9 heads x 64, 104 tokens, padding mask), 4 rows: bf16 forward +
backward 20.9 ms, the same in fp32 after upcasting q, k, v 11.5 ms; forward alone 1.5 ms
against 3.2 ms. So only passes that will run a backward (grad enabled, q requires grad)
upcast; no-grad passes, GPUs and fp32 models use transformers' sdpa unchanged. The
result is cast back to bf16, so what the rest of the layer sees is unchanged in kind.
"""

from __future__ import annotations

import torch

NAME = "rayrlhf_sdpa"


def sdpa_fp32_backward_on_cpu(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    upcast = (query.device.type == "cpu" and query.dtype == torch.bfloat16 and torch.is_grad_enabled()
              and query.requires_grad)
    if not upcast:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                          **kwargs)
    return out.to(query.dtype), weights


def use_trainable_attention(model: torch.nn.Module) -> None:
    """Route every transformers model inside ``model`` (peft wrapper, ScoreModel, DeepSpeed
    engine's module) through :func:`sdpa_fp32_backward_on_cpu`; models that use another
    attention than sdpa (flash attention on GPUs, eager) keep theirs."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_fp32_backward_on_cpu)
    # transformers builds no mask at all for an attention name it has no mask function for:
    # padded rows would then attend to their padding (the engine log-prob check caught it).
    AttentionMaskInterface.register(NAME, sdpa_mask)
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and sub.config._attn_implementation == "sdpa":
            sub.set_attn_implementation(NAME)
