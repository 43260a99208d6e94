"""The rollout interface every engine (vLLM, HF ``generate``) implements.

PPO needs three things from generation: the sampled token ids, the behaviour policy's
log-probability of each sampled token (at temperature 1, i.e. the policy's own
``log_softmax``, whatever temperature was used to sample), and whether the response ended
on its own (EOS) or was cut by the length limit. Weight sync pushes the trained policy's
tensors into the engine between PPO iterations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch


# Where PPO's old log-probs come from (ppo.logprobs_source): the engine's sampling log-probs,
# a policy forward pass over the rollout, or the engine's where both compute alike.
LOGPROBS_SOURCES = ("auto", "engine", "recompute")


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample one batch of responses.

    ``temperature`` 0 means greedy decoding. ``seed`` None draws fresh randomness; with a
    seed, prompt ``i`` of a call is sampled with seed ``seed + i`` where the engine allows
    per-prompt seeds (vLLM), so a batch split across workers with ``shard_spec`` samples the
    same responses as the unsplit batch.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    """One sampled response; ``response_ids`` keeps the EOS token (the policy must learn to stop).

    ``response_logprobs[t]`` = log π(response_ids[t] | prompt, response_ids[:t]) at temperature 1.
    ``finished`` is True when the response ended with EOS (or a stop token) rather than the
    length limit: a truncated response has no terminal state in GAE.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    text: str
    finished: bool


@runtime_checkable
class RolloutEngine(Protocol):
    """What the rollout worker needs from an engine."""

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Completion]:
        """One completion per prompt, in the order given."""
        ...

    def update_weights(self, named_tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                       partial: bool = False) -> float | None:
        """Replace the policy weights (HF parameter names, as ``state_dict`` gives them): a
        dict, or (name, tensor) pairs streamed from the sync's buckets. Every weight must
        arrive unless ``partial`` (a LoRA sync: the weights not sent are kept). Returns the
        seconds of the engine's own load once every tensor has arrived, or None where the
        tensors are loaded as they arrive."""
        ...

    def close(self) -> None:
        """Release the model and its memory."""
        ...


def shard_spec(spec: SamplingSpec, offset: int) -> SamplingSpec:
    """The spec for a shard that starts at prompt ``offset`` of the whole batch.

    Shifting the seed by the offset gives every prompt of the batch its own seed no matter
    how the batch is split, so shards never repeat each other's random draws.
    """
    return spec if spec.seed is None else replace(spec, seed=spec.seed + offset)


def cut_at_stop(token_ids: Sequence[int], stop_ids: Iterable[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, and whether one was found."""
    stops = set(stop_ids)
    for position, token in enumerate(token_ids):
        if token in stops:
            return list(token_ids[:position + 1]), True
    return list(token_ids), False
