"""Confidence intervals for evaluation numbers measured on a few hundred prompts.

A rate on 140 prompts moves by several points from sampling alone, so every number the
report compares comes with a seeded percentile bootstrap interval (Efron & Tibshirani 1993,
§13): resample the prompts with replacement, recompute the statistic, take the 2.5% and
97.5% quantiles. A before/after change is bootstrapped *paired* (both policies answered the
same prompts, so each resample keeps prompt i's two answers together), which is far tighter
than two independent intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000


def _values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return array


def bootstrap_mean(values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
    """Mean of ``values`` (0/1 flags give a rate) with its percentile bootstrap interval."""
    x = _values(values, "values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(x))}


def bootstrap_paired_change(before: Sequence[float], after: Sequence[float], *,
                            resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, Any]:
    """mean(after) − mean(before) over the same prompts, with a paired bootstrap interval."""
    b, a = _values(before, "before"), _values(after, "after")
    if len(a) != len(b):
        raise ValueError(f"paired change needs the same prompts: {len(b)} before, {len(a)} after")
    result = bootstrap_mean(a - b, resamples=resamples, confidence=confidence, seed=seed)
    return {"change": result["mean"], "ci_low": result["ci_low"], "ci_high": result["ci_high"], "n": result["n"]}


def relative_reduction(before_rate: float, after_rate: float) -> float | None:
    """1 − after/before: 0.5 means the rate halved (None when the rate was 0 before)."""
    return None if before_rate == 0 else 1.0 - after_rate / before_rate
