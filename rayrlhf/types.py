"""Typed data between the phases of a PPO-Lag step and between the driver and its workers.

A rollout of B responses is stored as one token matrix: prompts left-padded to P tokens,
then responses right-padded to R tokens, so every response starts at column P and
response-level tensors are [B, R]. The phases hand each other typed results: generate ->
``Rollout``, score -> ``Scores``, advantages -> ``rayrlhf.algorithms.PPOLagAdvantages``,
train -> ``TrainStats``. Before training, the scores and advantages join the
``RolloutBatch`` (their field names match), and a worker receives only the slice of rows it
owns (``split``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
    cost_values: Optional[torch.Tensor] = None  # [B, R] cost critic V_c ([B, R, K] per category)
    rewards: Optional[torch.Tensor] = None  # [B] reward-model scores
    costs: Optional[torch.Tensor] = None  # [B] cost-model scores (> 0 means unsafe); [B, K] per category
    reward_returns: Optional[torch.Tensor] = None  # [B, R] GAE targets of the reward critic
    cost_returns: Optional[torch.Tensor] = None  # [B, R] GAE targets of the cost critic ([B, R, K])
    advantages: Optional[torch.Tensor] = None  # [B, R] (A_r - λ A_c) / (1 + λ), or (A_r - Σλ_k A_c,k) / (1 + Σλ_k)

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

    def length_groups(self, size: int) -> list[torch.Tensor]:
        """Row indices in groups of at most ``size``, by real length (prompt + response), so that
        the rows one forward pass computes together need little padding (``trimmed``)."""
        order = torch.argsort(self.attention_mask.sum(-1), stable=True)
        return [order[i:i + size] for i in range(0, len(self), size)]

    def trimmed(self) -> RolloutBatch:
        """The same rows without the columns that are padding in every row: the prompt columns
        left of the longest prompt and the response columns right of the longest response. A
        forward pass over it computes no position that no row needs; per-token outputs come
        back [b, R'] with R' <= R (``pad_responses`` restores R)."""
        real_columns = self.attention_mask.any(0).nonzero()
        first = int(real_columns[0]) if len(real_columns) else 0
        first = min(first, self.prompt_length - 1)  # keep the column that predicts the first response token
        width = max(1, int(self.response_mask.sum(-1).max()))
        end = self.prompt_length + width
        fields = {}
        for name, value in self._tensor_fields():
            if name in ("sequences", "attention_mask"):
                fields[name] = value[:, first:end]
            # Per-token fields are [B, R, ...]; per-category costs [B, K] are per response whatever K is.
            elif name != "costs" and value.dim() >= 2 and value.shape[1] == self.response_mask.shape[1]:
                fields[name] = value[:, :width]
        return dataclasses.replace(self, prompt_length=self.prompt_length - first, **fields)


def pad_responses(values: torch.Tensor, width: int) -> torch.Tensor:
    """[b, R', ...] per-response-token values zero-padded on the right to [b, width, ...]."""
    missing = width - values.shape[1]
    if missing <= 0:
        return values
    return torch.cat([values, values.new_zeros((values.shape[0], missing, *values.shape[2:]))], dim=1)


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


@dataclass
class Rollout:
    """What the generate phase produced: B prompts, their responses, and the packed batch."""

    prompts: list[str]  # B prompt texts (before the template)
    responses: list[str]  # B response texts, as the judges read them
    response_ids: list[list[int]]  # B response token ids, unpadded (rule-based judges read them)
    batch: RolloutBatch
    # Updates between the weights that sampled and the policy now: 1 for a rollout generated
    # during the previous step's training (rollout.async_generation), else 0.
    policy_lag: int = 0
    index: list[int] = field(default_factory=list)  # the prompts' indices in the run's prompt set


@dataclass
class Scores:
    """What the score phase measures on a rollout. Field names match ``RolloutBatch``."""

    old_logprobs: torch.Tensor  # [B, R] the policy's log-probs of the sampled tokens, before this update
    ref_logprobs: torch.Tensor  # [B, R] the frozen reference policy's
    reward_values: torch.Tensor  # [B, R] reward critic V_r
    cost_values: torch.Tensor  # [B, R] cost critic V_c (zeros when λ is fixed at 0); [B, R, K] per category
    rewards: torch.Tensor  # [B] reward-model scores
    costs: torch.Tensor  # [B] cost-model scores (> 0 means unsafe); [B, K] per category (lagrange.per_category)


@dataclass
class PTXBatch:
    """Supervised rows for the PTX term of the policy loss (Ouyang et al. 2022, eq. 2): the
    instruction/answer pairs the policy was fine-tuned on, so PPO does not erode them."""

    input_ids: torch.Tensor  # [N, T] right-padded prompt + answer ids
    attention_mask: torch.Tensor  # [N, T] 1 on real tokens
    loss_mask: torch.Tensor  # [N, T] 1 on the answer tokens the LM loss learns

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: list[int] | slice) -> PTXBatch:
        return PTXBatch(self.input_ids[index], self.attention_mask[index], self.loss_mask[index])

    def shard(self, rank: int, world_size: int) -> PTXBatch:
        """This data-parallel rank's rows (every ``world_size``-th, starting at ``rank``)."""
        return self.rows(slice(rank, None, world_size))

    def chunks(self, n: int) -> list[PTXBatch]:
        """``n`` nearly equal consecutive parts (one per PPO mini-batch); empty ones left out."""
        size, extra = divmod(len(self), n)
        parts, start = [], 0
        for i in range(n):
            stop = start + size + (1 if i < extra else 0)
            if stop > start:
                parts.append(self.rows(slice(start, stop)))
            start = stop
        return parts


@dataclass
class ActorStats:
    """One policy rank's train phase: means over the mini-batches it applied."""

    loss: float  # PPO-clip surrogate (minus the entropy bonus), without the PTX term
    clip_fraction: float  # share of tokens whose ratio left [1 - ε, 1 + ε]
    approx_kl: float  # k3 estimate of KL(π_old ‖ π)
    entropy: float  # mean token entropy of the policy
    nonfinite_minibatches: float  # mini-batches skipped for a NaN/Inf loss
    ptx_loss: float = float("nan")  # LM loss on the PTX rows (NaN when PTX is off)


@dataclass
class CriticStats:
    """One critic rank's train phase: means over the mini-batches it applied."""

    loss: float  # value-clipped regression loss
    nonfinite_minibatches: float  # mini-batches skipped for a NaN/Inf loss


@dataclass
class TrainStats:
    """What the train phase reports: rank 0 of each role, and per role the mini-batches all
    its ranks skipped together for a NaN/Inf loss (summed over ranks)."""

    actor: ActorStats
    reward_critic: CriticStats
    cost_critic: CriticStats | None  # None: no cost value head (λ fixed at 0)
    skipped_minibatches: dict[str, float]  # role ("policy", "critic" or "reward-critic", "cost-critic") -> count
