"""Turn (prompt, response) pairs into score-model inputs and scores: plain functions shared
by training, evaluation, PPO scoring and the Serve endpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rayrlhf.data.templates import format_conversation


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens


def conversation_texts(tokenizer, prompts: list[str], responses: list[str], template: str) -> list[str]:
    """The text each judge reads; the safe_rlhf template ends with EOS as Safe RLHF does, so
    the score is read at a token that means 'the answer is over'."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    texts = [format_conversation(p, r, template, tokenizer) for p, r in zip(prompts, responses)]
    if template == "safe_rlhf" and tokenizer.eos_token:
        texts = [t + tokenizer.eos_token for t in texts]
    return texts


def encode_texts(tokenizer, texts: list[str], max_length: int) -> EncodedBatch:
    """Right-padded ids; texts longer than ``max_length`` tokens keep their end (where the
    score is read) and lose the start of the prompt."""
    enc = tokenizer(texts, add_special_tokens=False)
    ids = [seq[-max_length:] for seq in enc["input_ids"]]
    width = max(len(seq) for seq in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
    return EncodedBatch(input_ids, attention_mask)


@torch.no_grad()
def score_conversations(model, tokenizer, prompts: list[str], responses: list[str], *,
                        template: str, max_length: int = 1024, batch_size: int = 16) -> torch.Tensor:
    """[N, K] end scores (K = 1 for reward/cost, 14 for moderation logits), float32."""
    texts = conversation_texts(tokenizer, prompts, responses, template)
    # Sorting by length keeps padding small; the original order is restored at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty((len(texts), model.num_labels), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encode_texts(tokenizer, [texts[i] for i in idx], max_length)
        out[idx] = model(batch.input_ids, batch.attention_mask).end_scores.float()
    return out
