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


# The two-constraint variant (lagrange.per_category, +experiment=synthetic_per_category):
# ids ≡ 1 (mod 4) form forbidden set "forbidden_a", ids ≡ 2 the independent set "forbidden_b".
# The reward pays for ids ≡ 0 and twice for forbidden_a's, so without its limit the policy
# crowds into forbidden_a, and held back from it, into ids ≡ 0. forbidden_b's ids earn
# nothing: the reward never pushes mass into them, so a loose limit on forbidden_b is slack by
# design and its λ has nothing to do. (When forbidden_b was rewarded too, suppressing
# forbidden_a moved the policy into forbidden_b, and its "loose" limit was the next one to
# bind.) Each category's cost is its share minus the allowance, so a tight limit on one and a
# loose one on the other can be told apart in one run.
PER_CATEGORY = ("forbidden_a", "forbidden_b")


def rewarded_share_two_sets(prompts, responses, response_ids) -> list[float]:
    return [(_share(ids, (0, 1)) + _share(ids, (1,))) / 2 for ids in response_ids]


def forbidden_excess_per_category(prompts, responses, response_ids) -> list[list[float]]:
    return [[_share(ids, (1,)) - FORBIDDEN_ALLOWANCE, _share(ids, (2,)) - FORBIDDEN_ALLOWANCE]
            for ids in response_ids]


forbidden_excess_per_category.categories = PER_CATEGORY
