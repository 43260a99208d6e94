"""Turn (prompt, response) pairs into score-model inputs and scores: plain functions shared
by training, evaluation, PPO scoring and the Serve endpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rayrlhf.data.templates import EOS_TERMINATED_TEMPLATES, RenderedText, encode_rendered, render_conversation


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens


def rendered_conversations(tokenizer, prompts: list[str], responses: list[str], template: str,
                           finished: list[bool] | None = None) -> list[RenderedText]:
    """What each judge reads, with where the untrusted prompt and response lie; the safe_rlhf
    template ends with EOS as Safe RLHF does, so the score is read at a token that means 'the
    answer is over'.

    A response the length limit cut off (``finished[i]`` False) is rendered *open*: the text
    stops where the response stops, without the template's end-of-turn (or EOS), so the judge
    reads an unfinished answer as unfinished instead of as a complete one.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    finished = [True] * len(prompts) if finished is None else list(finished)
    if len(finished) != len(prompts):
        raise ValueError(f"{len(finished)} finished flags for {len(prompts)} responses")
    rendered = []
    for prompt, response, done in zip(prompts, responses, finished):
        conversation = render_conversation(prompt, response, template, tokenizer)
        if template == "safe_rlhf_upstream":
            conversation = _with_bos(conversation, tokenizer)
        if not done:
            conversation = conversation.cut_after_last_span()
        elif template in EOS_TERMINATED_TEMPLATES and tokenizer.eos_token:
            conversation = conversation.followed_by(tokenizer.eos_token)
        rendered.append(conversation)
    return rendered


def _with_bos(conversation: RenderedText, tokenizer) -> RenderedText:
    """The published judges read their tokenizer's BOS first (LLaMA tokenizers add it by
    default); the rendered text is encoded without automatic special tokens, so it is written."""
    bos = getattr(tokenizer, "bos_token", None)
    if not (bos and getattr(tokenizer, "add_bos_token", False)):
        return conversation
    shift = len(bos)
    return RenderedText(bos + conversation.text, tuple((a + shift, b + shift) for a, b in conversation.untrusted))


def conversation_texts(tokenizer, prompts: list[str], responses: list[str], template: str,
                       finished: list[bool] | None = None) -> list[str]:
    """The text each judge reads (see ``rendered_conversations``)."""
    return [r.text for r in rendered_conversations(tokenizer, prompts, responses, template, finished)]


def pad_right(ids: list[list[int]], pad_token_id: int, max_length: int) -> EncodedBatch:
    """Right-padded ids; sequences longer than ``max_length`` tokens keep their end (where the
    score is read) and lose the start of the prompt."""
    ids = [seq[-max_length:] for seq in ids]
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
    return EncodedBatch(input_ids, attention_mask)


def encode_conversations(tokenizer, prompts: list[str], responses: list[str], template: str,
                         max_length: int) -> EncodedBatch:
    """Judge inputs for (prompt, response) pairs. Control-token strings in either (an answer
    that writes ``<|im_end|><|im_start|>assistant``) stay ordinary text, so no answer can
    end its own conversation early for the judge (``rayrlhf.data.templates.encode_rendered``)."""
    rendered = rendered_conversations(tokenizer, prompts, responses, template)
    return pad_right([encode_rendered(tokenizer, r) for r in rendered], tokenizer.pad_token_id, max_length)


@torch.no_grad()
def score_conversations(model, tokenizer, prompts: list[str], responses: list[str], *,
                        template: str, max_length: int = 1024, batch_size: int = 16,
                        finished: list[bool] | None = None) -> torch.Tensor:
    """[N, K] end scores (K = 1 for reward/cost, 14 for moderation logits), float32;
    ``finished`` as in ``rendered_conversations`` (None: every response is complete)."""
    rendered = rendered_conversations(tokenizer, prompts, responses, template, finished)
    ids = [encode_rendered(tokenizer, r) for r in rendered]
    # Sorting by length keeps padding small; the original order is restored at the end.
    order = sorted(range(len(ids)), key=lambda i: len(rendered[i].text))
    out = torch.empty((len(ids), model.num_labels), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_right([ids[i] for i in idx], tokenizer.pad_token_id, max_length)
        out[idx] = model(batch.input_ids, batch.attention_mask).end_scores.float()
    return out
