"""Typed batches that travel between the PPO-Lag driver and its workers.

A rollout of B responses is stored as one token matrix: prompts left-padded to P tokens,
then responses right-padded to R tokens, so every response starts at column P and
response-level tensors are [B, R]. Fields fill in as the step goes on (generate -> score ->
advantages); a worker receives only the slice of rows it owns (``split``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class RolloutBatch:
    sequences: torch.Tensor  # [B, P + R] prompt (left-padded) + response (right-padded) ids
    attention_mask: torch.Tensor  # [B, P + R] 1 on real tokens
    response_mask: torch.Tensor  # [B, R] 1 on real response tokens (EOS included)
    prompt_length: int  # P: responses start at this column
    finished: torch.Tensor  # [B] bool: the response ended with EOS (not the length limit)
    rollout_logprobs: Optional[torch.Tensor] = None  # [B, R] the engine's sampling log-probs
    old_logprobs: Optional[torch.Tensor] = None  # [B, R] policy log-probs before this update
    ref_logprobs: Optional[torch.Tensor] = None  # [B, R] frozen reference policy
    reward_values: Optional[torch.Tensor] = None  # [B, R] reward critic V_r
    cost_values: Optional[torch.Tensor] = None  # [B, R] cost critic V_c
    rewards: Optional[torch.Tensor] = None  # [B] reward-model scores
    costs: Optional[torch.Tensor] = None  # [B] cost-model scores (> 0 means unsafe)
    reward_returns: Optional[torch.Tensor] = None  # [B, R] GAE targets of the reward critic
    cost_returns: Optional[torch.Tensor] = None  # [B, R] GAE targets of the cost critic
    advantages: Optional[torch.Tensor] = None  # [B, R] (A_r - λ A_c) / (1 + λ)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]

    def _tensor_fields(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                yield f.name, value

    def select(self, index: torch.Tensor | list[int] | slice) -> RolloutBatch:
        """The rows ``index`` (a slice, or a list/tensor of row numbers)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return dataclasses.replace(self, **{name: t[index] for name, t in self._tensor_fields()})

    def split(self, n: int) -> list[RolloutBatch]:
        """``n`` contiguous row shards whose sizes differ by at most one (data parallelism)."""
        size, extra = divmod(len(self), n)
        shards, start = [], 0
        for i in range(n):
            stop = start + size + (1 if i < extra else 0)
            shards.append(self.select(slice(start, stop)))
            start = stop
        return shards

    def minibatches(self, size: int, generator: torch.Generator) -> list[RolloutBatch]:
        """A random partition into mini-batches of ``size`` rows (the last may be smaller)."""
        order = torch.randperm(len(self), generator=generator)
        return [self.select(order[i:i + size]) for i in range(0, len(self), size)]


def build_rollout_batch(prompt_ids: list[list[int]], response_ids: list[list[int]],
                        finished: list[bool], pad_token_id: int,
                        rollout_logprobs: list[list[float]] | None = None) -> RolloutBatch:
    """Pack token lists into a RolloutBatch (prompts left-padded, responses right-padded)."""
    if not (len(prompt_ids) == len(response_ids) == len(finished)):
        raise ValueError("prompt_ids, response_ids and finished must have one entry per row")
    empty = [i for i, r in enumerate(response_ids) if not r]
    if empty:
        raise ValueError(f"rows {empty[:5]} have empty responses; every response needs a token")
    batch = len(prompt_ids)
    p_len = max(len(p) for p in prompt_ids)
    r_len = max(len(r) for r in response_ids)
    sequences = torch.full((batch, p_len + r_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, p_len + r_len), dtype=torch.long)
    response_mask = torch.zeros((batch, r_len), dtype=torch.long)
    logprobs = torch.zeros((batch, r_len)) if rollout_logprobs is not None else None
    for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        sequences[row, p_len - len(prompt):p_len] = torch.tensor(prompt)
        sequences[row, p_len:p_len + len(response)] = torch.tensor(response)
        attention_mask[row, p_len - len(prompt):p_len + len(response)] = 1
        response_mask[row, :len(response)] = 1
        if logprobs is not None:
            logprobs[row, :len(response)] = torch.tensor(rollout_logprobs[row])
    return RolloutBatch(sequences=sequences, attention_mask=attention_mask,
                        response_mask=response_mask, prompt_length=p_len,
                        finished=torch.tensor(finished, dtype=torch.bool),
                        rollout_logprobs=logprobs)
