"""The frozen models of a PPO-Lag step: reference policy, reward model and cost model.

None of them trains, so none needs a process of its own. ``FrozenModels`` is what hosts
them: a ``FrozenWorker`` actor of its own (all three in one actor, or one actor each), or a
trainable worker that hosts some of them beside its own model (``PolicyWorker`` and
``CriticWorker`` inherit it). Hosting them in the trainers' processes saves one Python/torch
runtime per actor (about 1 GB each here) and keeps every core busy in the score phase: each
trainer process runs its own forward and the frozen forwards it hosts, one after another,
while the other trainers do the same on the other cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rayrlhf.models.forward import rollout_logprobs
from rayrlhf.types import RolloutBatch

FROZEN_ROLES = ("reference", "reward", "cost")


@dataclass(frozen=True)
class FrozenSpec:
    """Which frozen models one actor hosts: a path/source each, or None."""

    reference: str | None = None  # the initial policy (causal LM path)
    reward: str | None = None  # reward source: a score model directory or rule:<module>:<function>
    cost: str | None = None  # cost source, likewise
    dtype: str = "auto"  # precision of the reference and the judges
    micro_batch_size: int = 16  # rows per forward pass
    cost_per_category: bool = False  # the cost judge scores every category ([B, C]), not one cost

    def roles(self) -> tuple[str, ...]:
        return tuple(role for role in FROZEN_ROLES if getattr(self, role) is not None)


class FrozenModels:
    """The methods the driver calls for the frozen models this actor hosts."""

    frozen_spec: FrozenSpec | None = None
    _reference = None
    _judges: dict = {}

    def host_frozen(self, spec: FrozenSpec | None) -> None:
        """Load ``spec``'s models into this process (its torch threads are the host's)."""
        from rayrlhf.models import load_causal_lm
        from rayrlhf.rewards import make_scorer

        self.frozen_spec = spec
        self._judges = {}
        if spec is None:
            return
        if spec.reference is not None:
            self._reference = load_causal_lm(spec.reference, dtype=spec.dtype).eval().requires_grad_(False)
        for role in ("reward", "cost"):
            source = getattr(spec, role)
            if source is not None:
                self._judges[role] = make_scorer(source, dtype=spec.dtype, batch_size=spec.micro_batch_size,
                                                 per_category=role == "cost" and spec.cost_per_category)

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """[B, R] reference log-probs of the response tokens."""
        return rollout_logprobs(self._reference, batch, self.frozen_spec.micro_batch_size)

    def reward_scores(self, prompts: list[str], responses: list[str], response_ids: list[list[int]],
                      finished: list[bool] | None = None) -> torch.Tensor:
        """[B] reward-model scores; ``finished`` False marks a response the length limit cut off."""
        return self._judges["reward"](prompts, responses, response_ids, finished=finished)

    def cost_scores(self, prompts: list[str], responses: list[str], response_ids: list[list[int]],
                    finished: list[bool] | None = None) -> torch.Tensor:
        """[B] cost-model scores (cost > 0 means unsafe); [B, C] with ``cost_per_category``."""
        return self._judges["cost"](prompts, responses, response_ids, finished=finished)


class FrozenWorker(FrozenModels):
    """An actor that hosts frozen models only."""

    def __init__(self, spec: FrozenSpec, *, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.host_frozen(spec)
