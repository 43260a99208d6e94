"""Bootstrap intervals against the textbook normal approximation of a proportion."""

from __future__ import annotations

import math

import pytest

from rayrlhf.eval.stats import bootstrap_mean, bootstrap_paired_change, relative_reduction


def test_rate_interval_matches_the_normal_approximation():
    flags = [1.0] * 30 + [0.0] * 70  # p = 0.3, n = 100
    ci = bootstrap_mean(flags, resamples=4000, seed=1)
    half_width = 1.96 * math.sqrt(0.3 * 0.7 / 100)  # 0.0898
    assert ci["mean"] == pytest.approx(0.3) and ci["n"] == 100
    assert ci["ci_low"] == pytest.approx(0.3 - half_width, abs=0.02)
    assert ci["ci_high"] == pytest.approx(0.3 + half_width, abs=0.02)


def test_seeded_and_degenerate():
    assert bootstrap_mean([0.2, 0.9, 0.4], seed=3) == bootstrap_mean([0.2, 0.9, 0.4], seed=3)
    assert bootstrap_mean([1.0, 1.0]) == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 2}
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([0.0, float("nan")])


def test_paired_change_is_tighter_than_unpaired():
    # 50 prompts: the policy stopped complying on 10 of the 30 it complied with before.
    before = [1.0] * 30 + [0.0] * 20
    after = [0.0] * 10 + [1.0] * 20 + [0.0] * 20
    change = bootstrap_paired_change(before, after, seed=0)
    assert change["change"] == pytest.approx(-0.2)
    assert change["ci_high"] < 0  # a sure drop: it never rose on any prompt
    unpaired_half_width = 1.96 * math.sqrt(0.6 * 0.4 / 50 + 0.4 * 0.6 / 50)
    assert (change["ci_high"] - change["ci_low"]) / 2 < unpaired_half_width
    with pytest.raises(ValueError, match="same prompts"):
        bootstrap_paired_change([1.0], [1.0, 0.0])


def test_relative_reduction():
    assert relative_reduction(0.6, 0.3) == pytest.approx(0.5)
    assert relative_reduction(0.0, 0.1) is None
