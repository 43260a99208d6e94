"""Learning-rate schedules: a multiplier of the base learning rate per optimiser step."""

from __future__ import annotations

import math

# The schedules ``lr_multiplier`` knows (``training.lr_scheduler``).
LR_SCHEDULES = ("cosine", "linear", "constant")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine / linear decay to 0 (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown lr_scheduler {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
