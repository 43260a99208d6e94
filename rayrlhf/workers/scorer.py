"""A frozen judge: the reward model or the cost model (or a rule standing in for one)."""

from __future__ import annotations

import torch

from rayrlhf.rewards import make_scorer


class ScorerWorker:
    def __init__(self, source: str, *, dtype: str = "auto", threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.source = source
        self.scorer = make_scorer(source, dtype=dtype)

    def score(self, prompts: list[str], responses: list[str], response_ids: list[list[int]],
              finished: list[bool] | None = None) -> torch.Tensor:
        """[B] scores of whole responses (cost > 0 means unsafe); ``finished`` False marks one
        the length limit cut off, which score models read as unfinished."""
        return self.scorer(prompts, responses, response_ids, finished=finished)
