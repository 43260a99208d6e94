"""The frozen roles in one process: reference policy, reward model and cost model.

None of them trains, so they need no process of their own. One actor holding all three
saves two Python/torch runtimes (about 1 GB each here) and the memory of two more actor
processes, and costs no speed where cores are few: the three forwards of a step run one
after another in this actor while the policy and the critics use the other cores.
"""

from __future__ import annotations

import torch

from rayrlhf.types import RolloutBatch
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.scorer import ScorerWorker


class FrozenWorker:
    def __init__(self, reference_path: str, reward: str, cost: str, *, dtype: str = "auto",
                 threads: int | None = None, seed: int = 0) -> None:
        self.reference = PolicyWorker(reference_path, dtype=dtype, threads=threads, seed=seed)
        self.reward = ScorerWorker(reward, threads=threads)
        self.cost = ScorerWorker(cost, threads=threads)

    def reference_logprobs(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reference.logprobs(batch)

    def reward_scores(self, prompts: list[str], responses: list[str], response_ids: list[list[int]],
                      finished: list[bool] | None = None) -> torch.Tensor:
        return self.reward.score(prompts, responses, response_ids, finished)

    def cost_scores(self, prompts: list[str], responses: list[str], response_ids: list[list[int]],
                    finished: list[bool] | None = None) -> torch.Tensor:
        return self.cost.score(prompts, responses, response_ids, finished)
