"""Rules that misbehave on purpose: fault injection for the reliability tests, and for trying
the ``faults`` settings of a run before a real judge misbehaves.

Each scorer actor imports its rule once, so a module-level counter counts that actor's calls.
"""

from __future__ import annotations

from rayrlhf.rewards.synthetic import rewarded_share

_calls = {"nan_on_even_calls": 0}


def nan_on_even_calls(prompts, responses, response_ids) -> list[float]:
    """``rewarded_share``, except that every second call returns NaN for rows 0 and 2."""
    _calls["nan_on_even_calls"] += 1
    scores = rewarded_share(prompts, responses, response_ids)
    if _calls["nan_on_even_calls"] % 2 == 0:
        for row in (0, 2):
            scores[row] = float("nan")
    return scores


def always_nan(prompts, responses, response_ids) -> list[float]:
    """A broken judge: every score is NaN."""
    return [float("nan")] * len(response_ids)
