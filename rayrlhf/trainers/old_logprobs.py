"""Where a PPO step's old log-probs π_old(y_t) come from, and the check that keeps it honest.

PPO's ratio needs the log-probs of the sampled tokens under the weights that sampled them.
The rollout engine already computed them while sampling; when it computes in the policy's
precision they agree with a policy forward pass to rounding (vLLM-CPU fp32 vs transformers
fp32 on SmolLM2: ~1e-5 per token), so that forward pass, a sixth of a Safe-RLHF step's
arithmetic, can be skipped. A failed weight sync or a precision mismatch would make them
wrong without any error, so every ``check_every`` steps the policy recomputes a few rows and
the gap is measured; above the tolerance of the two precisions the run switches to
recomputing for good.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from rayrlhf.algorithms import masked_mean

log = logging.getLogger(__name__)


@dataclass
class OldLogprobSource:
    use_engine: bool  # this step takes the engine's log-probs (else a policy forward pass)
    tolerance: float  # mean |Δ log p| per token that rounding at the two precisions explains
    check_every: int  # steps between checks of the engine's log-probs
    check_rows: int  # rows recomputed per check
    last_gap: float = math.nan  # the latest measured mean |engine - policy| per token
    measured_at: int | None = None  # step index of that measurement
    fell_back_at: int | None = None  # step index where the gap switched the run to recompute
    step_used_engine: bool = False  # the latest step's old log-probs were the engine's

    @classmethod
    def choose(cls, setting: str, policy_dtype: str, engine_dtype: str | None, *, tolerance: float,
               check_every: int, check_rows: int) -> OldLogprobSource:
        """``setting`` auto takes the engine's when it computes in the policy's precision."""
        from rayrlhf.models.zoo import to_dtype

        if setting == "auto":
            use_engine = engine_dtype is not None and to_dtype(engine_dtype) is to_dtype(policy_dtype)
        elif setting in ("engine", "recompute"):
            use_engine = setting == "engine"
        else:
            raise ValueError(f"unknown ppo.logprobs_source {setting!r}; choose auto, engine or recompute")
        return cls(use_engine=use_engine, tolerance=tolerance, check_every=check_every, check_rows=check_rows)

    def rows_to_check(self, step_index: int, batch_size: int) -> list[int]:
        """Rows to recompute at this step (none between checks, or when recomputing anyway):
        spread over the batch, so that every engine's shard is looked at."""
        if not self.use_engine or step_index % self.check_every:
            return []
        count = min(self.check_rows, batch_size)
        return sorted({(i * batch_size) // count for i in range(count)})

    def record(self, step_index: int, engine: torch.Tensor, policy: torch.Tensor, mask: torch.Tensor) -> float:
        """Measure the gap on rows both computed; a gap above the tolerance ends engine use."""
        gap = float(masked_mean((engine - policy).abs(), mask.float()))
        self.last_gap, self.measured_at = gap, step_index
        if self.use_engine and not gap <= self.tolerance:  # NaN falls back too
            self.use_engine, self.fell_back_at = False, step_index
            log.warning("step %d: engine log-probs differ from the policy's by %.3g per token (tolerance %.3g): "
                        "recomputing old log-probs from now on", step_index + 1, gap, self.tolerance)
        return gap

    def metrics(self, step_index: int) -> dict[str, float]:
        """rollout/ metrics: the latest measured gap, whether it was measured at this step, and
        whether this step's old log-probs were the engine's."""
        return {"rollout/logprob_gap": self.last_gap, "rollout/logprob_gap_tolerance": self.tolerance,
                "rollout/logprob_gap_measured": float(self.measured_at == step_index),
                "rollout/logprobs_from_engine": float(self.step_used_engine)}
