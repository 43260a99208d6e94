"""A constrained task with known ground truth, for proving PPO-Lag does what it should.

Token ids are split by ``id % 4``: ids with remainder 0 or 1 are *rewarded*; among them,
remainder 1 is *forbidden*. The reward is the share of rewarded tokens in a response; the
cost is the share of forbidden tokens minus an allowance, so cost > 0 means "too many
forbidden tokens" as everywhere in rayrlhf. An unconstrained policy raises both shares
together; PPO-Lag must keep the forbidden share at the allowance while still gaining reward
through the remainder-0 tokens.
"""

from __future__ import annotations

FORBIDDEN_ALLOWANCE = 0.2


def _share(ids: list[int], remainders: tuple[int, ...]) -> float:
    return sum(1 for t in ids if t % 4 in remainders) / max(1, len(ids))


def rewarded_share(prompts, responses, response_ids) -> list[float]:
    return [_share(ids, (0, 1)) for ids in response_ids]


def forbidden_excess(prompts, responses, response_ids) -> list[float]:
    return [_share(ids, (1,)) - FORBIDDEN_ALLOWANCE for ids in response_ids]
