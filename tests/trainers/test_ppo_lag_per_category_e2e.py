"""Per-category constraints for real (lagrange.per_category): Ray actors, DeepSpeed policy and
a critic with one cost value head per category, the tiny model on the two-category synthetic
task (rayrlhf/rewards/synthetic.py: forbidden_a ≡ 1 and forbidden_b ≡ 2 (mod 4), each costing
its share − 0.2; forbidden_a's limit 0.0 is tight, forbidden_b's 0.3 loose)."""

from __future__ import annotations

import json
import statistics

import pytest

from rayrlhf.config import compose_config
from rayrlhf.trainers import ppo_lag

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def last(history, key, n=10):
    return statistics.mean(m[key] for m in history[-n:])


# Measured once (40 steps, log-λ fast): forbidden_a met (last-10 mean −0.10 vs 0.0), λ_b fell
# 0.28 -> 0.03, but with forbidden_a held down the policy drifted into forbidden_b (last-10
# mean 0.32, final 0.41 > its 0.3 limit) and log-λ, whose step shrinks with λ, reacts too slowly
# from λ_b ~ 0.03; the reward did not rise. The task or controller settings need retuning.
@pytest.mark.xfail(strict=True, reason="loose category drifts over its limit within 40 steps (see comment)")
def test_each_category_meets_its_limit_and_the_loose_lambda_falls_to_near_zero(ray_cluster, tmp_path):
    cfg = compose_config("ppo_lag", ["+experiment=synthetic_per_category", "logger=[jsonl]"],
                         output_dir=str(tmp_path))
    history = ppo_lag.run(cfg)
    first, final = history[0], history[-1]
    assert first["cost/forbidden_a/mean"] > first["cost/forbidden_a/threshold"]  # starts over the tight limit
    # Each constraint is met: the tight one by λ_a, the loose one with room to spare.
    assert last(history, "cost/forbidden_a/mean") <= 0.0
    assert last(history, "cost/forbidden_b/mean") <= 0.3 - 0.1
    lambda_a = [m["lagrange/forbidden_a/lambda"] for m in history]
    assert max(lambda_a) > 2 * first["lagrange/forbidden_a/lambda_used"]  # λ_a rose while a was violated
    # λ_b: never above its start, and near zero at the end (log-λ: the step shrinks with λ).
    assert max(m["lagrange/forbidden_b/lambda"] for m in history) <= first["lagrange/forbidden_b/lambda_used"]
    assert final["lagrange/forbidden_b/lambda"] < 0.05
    assert final["lagrange/lambda"] == pytest.approx(final["lagrange/forbidden_a/lambda"]
                                                     + final["lagrange/forbidden_b/lambda"])
    assert last(history, "reward/mean") > first["reward/mean"] + 0.1
    # The checkpoint holds every λ_k: a controller built from the config and loaded from it
    # continues from the final values (resume equality itself: tests/algorithms).
    state = json.loads((tmp_path / "checkpoints" / "step_000040" / ppo_lag.DRIVER_STATE).read_text())
    resumed = ppo_lag.lagrange_from_config(cfg.lagrange)
    resumed.load_state_dict(state["lagrange"])
    assert resumed.value == [final["lagrange/forbidden_a/lambda"], final["lagrange/forbidden_b/lambda"]]
