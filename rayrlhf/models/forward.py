"""Per-token quantities of a rollout under a model: log-probs, entropies, values.

Position ids come from the attention mask so that left-padded prompts see the same
positions as unpadded ones (as the rollout engines saw them).
"""

from __future__ import annotations

import torch

from rayrlhf.models.score_model import position_ids_from_mask


def response_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor,
                    prompt_length: int) -> torch.Tensor:
    """[B, R, V] logits that predict each response token (column P-1+t predicts token P+t)."""
    out = model(input_ids=sequences, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.logits[:, prompt_length - 1:-1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] in fp32 ([B, R, V], [B, R] -> [B, R])."""
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def response_values(critic, sequences: torch.Tensor, attention_mask: torch.Tensor,
                    prompt_length: int) -> torch.Tensor:
    """[B, R] V(s_t): the critic's output at the state just before response token t."""
    scores = critic(sequences, attention_mask).scores[..., 0]
    return scores[:, prompt_length - 1:-1].float()
