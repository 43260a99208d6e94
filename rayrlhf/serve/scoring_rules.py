"""What a score means to a client: the verdict rules and response bodies of the endpoints.

Kept apart from the Serve plumbing so the rules are tested without a cluster and stay the
same as the evaluation code's: **cost > 0 means unsafe** (the sign is the verdict the
Lagrangian constraint is written in), and the moderation head is multi-label, so each
category's probability is an independent sigmoid, not a softmax over categories.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


def unsafe_from_costs(costs: torch.Tensor) -> list[bool]:
    """[N] costs -> unsafe flags; a cost of exactly 0 sits on the boundary and counts as safe."""
    return [bool(c) for c in (costs > 0)]


def moderation_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[N, K] logits -> [N, K] independent per-category probabilities."""
    return torch.sigmoid(logits.float())


def flagged_from_probabilities(probs: torch.Tensor, threshold: float) -> list[bool]:
    """An answer is flagged when its most likely harm category exceeds ``threshold``."""
    return [bool(f) for f in (probs.max(dim=-1).values > threshold)]


def flag_threshold(saved: float | None, override: float | None) -> float:
    """The moderation threshold to flag at: an explicit one, else the one calibrated when the
    model was trained (saved in its metadata, rayrlhf.eval.calibration), else 0.5 with a
    warning (a model trained before calibration existed; 0.5 over-flags a balanced head)."""
    if override is not None:
        return check_threshold(override)
    if saved is None:
        log.warning("the moderation model has no calibrated threshold; flagging at 0.5, which over-flags "
                    "a class-balanced head (retrain it, or set moderation_threshold)")
        return 0.5
    return check_threshold(saved)


def check_threshold(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"moderation threshold must lie strictly between 0 and 1, got {threshold}")
    return float(threshold)


def reward_body(scores: torch.Tensor) -> dict[str, Any]:
    """[N, 1] reward scores -> ``{"scores": [...]}`` (higher = more helpful)."""
    return {"scores": scores[:, 0].tolist()}


def cost_body(scores: torch.Tensor) -> dict[str, Any]:
    """[N, 1] costs -> scores plus the unsafe verdict of each."""
    costs = scores[:, 0]
    return {"scores": costs.tolist(), "unsafe": unsafe_from_costs(costs)}


def moderation_body(logits: torch.Tensor, labels: Sequence[str], threshold: float) -> dict[str, Any]:
    """[N, K] logits -> flagged verdicts, per-category probabilities and the threshold used."""
    if logits.shape[-1] != len(labels):
        raise ValueError(f"{logits.shape[-1]} moderation logits for {len(labels)} labels")
    probs = moderation_probabilities(logits)
    return {
        "flagged": flagged_from_probabilities(probs, threshold),
        "probabilities": [dict(zip(labels, row)) for row in probs.tolist()],
        "threshold": threshold,
    }
