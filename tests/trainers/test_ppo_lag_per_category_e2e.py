"""Per-category constraints for real (lagrange.per_category): Ray actors, DeepSpeed policy and
a critic with one cost value head per category, the tiny model on the two-category synthetic
task (rayrlhf/rewards/synthetic.py: forbidden_a ≡ 1 and forbidden_b ≡ 2 (mod 4), each costing
its share − 0.2; the reward pays twice for forbidden_a and nothing for forbidden_b, so
forbidden_a's limit 0.0 binds and forbidden_b's 0.3 is slack by design).

The PID controller, which the README recommends for per-category runs; log-λ closes the same
loop in tests/algorithms/test_algo_per_category.py (the toy task), where its slow answer from
a λ near 0 is also pinned down."""

from __future__ import annotations

import json
import statistics

import pytest

from rayrlhf.config import compose_config
from rayrlhf.trainers import ppo_lag

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# Measured (PID kp=5, ki=2, 20 steps, loaded 2-core machine, ~330 s): forbidden_a 0.041 at step 1,
# up to 0.068, last-5 mean −0.054 (limit 0.0), λ_a up to 1.44, final 0.49; forbidden_b last-5
# mean 0.010 (limit 0.3), λ_b 0.0 at every update. kp=2, ki=0.5 was too slow: forbidden_a rose to
# 0.165 and was still +0.048 over the last 5 steps. Log-λ (fast) over 25 steps held forbidden_a
# at steps 10-18, then, with λ_a down to 0.29, let it back to +0.20 (λ_a at its cap again).
STEPS = 20


def last(history, key, n=5):
    return statistics.mean(m[key] for m in history[-n:])


def test_each_category_meets_its_limit_and_the_loose_lambda_stays_at_zero(ray_cluster, tmp_path):
    cfg = compose_config("ppo_lag", ["+experiment=synthetic_per_category", "lagrange=pid", "lagrange.kp=5",
                                     "lagrange.ki=2", f"steps={STEPS}", "logger=[jsonl]"], output_dir=str(tmp_path))
    history = ppo_lag.run(cfg)
    first, final = history[0], history[-1]
    assert first["cost/forbidden_a/mean"] > first["cost/forbidden_a/threshold"]  # starts over the tight limit
    # Each constraint is met: the tight one by λ_a, the loose one with room to spare.
    assert last(history, "cost/forbidden_a/mean") <= 0.0
    assert last(history, "cost/forbidden_b/mean") <= 0.3 - 0.1
    # λ_a rose while forbidden_a was over its limit; λ_b, whose category never was, is exactly
    # 0 from the first update on (PID: kp·e < 0, and the integral is clamped at 0).
    lambda_a = [m["lagrange/forbidden_a/lambda"] for m in history]
    assert max(lambda_a) > lambda_a[0] > 0
    assert all(m["lagrange/forbidden_b/lambda"] == 0.0 for m in history)
    assert final["lagrange/lambda"] == final["lagrange/forbidden_a/lambda"]  # Σ_k λ_k
    # No reward assertion: within 20 steps the gain under the tight limit is not yet clear (one
    # run: reward 0.370 at step 1, last-5 mean 0.368); the constraint side is what is shown here.
    # The checkpoint holds every λ_k: a controller built from the config and loaded from it
    # continues from the final values (resume equality itself: tests/algorithms).
    state = json.loads((tmp_path / "checkpoints" / f"step_{STEPS:06d}" / ppo_lag.DRIVER_STATE).read_text())
    resumed = ppo_lag.lagrange_from_config(cfg.lagrange)
    resumed.load_state_dict(state["lagrange"])
    assert resumed.value == [final["lagrange/forbidden_a/lambda"], 0.0]
