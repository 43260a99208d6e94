"""Schulman's KL estimators on fixed numbers and their expectations on a categorical."""

import math

import pytest
import torch

from rayrlhf.algorithms import kl_estimate

LOGP = [-1.0, -2.0, -0.5]
REF_LOGP = [-1.5, -1.0, -0.5]


@pytest.mark.parametrize(
    "kind, formula",
    [
        ("k1", lambda lp, rp: lp - rp),
        ("k2", lambda lp, rp: 0.5 * (lp - rp) ** 2),
        ("k3", lambda lp, rp: (math.exp(rp - lp) - 1.0) - (rp - lp)),
    ],
)
def test_estimator_matches_formula(kind, formula):
    logp = torch.tensor(LOGP, dtype=torch.float64)
    ref_logp = torch.tensor(REF_LOGP, dtype=torch.float64)
    got = kl_estimate(logp, ref_logp, kind)
    assert got.tolist() == pytest.approx([formula(lp, rp) for lp, rp in zip(LOGP, REF_LOGP)])


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    # Exact expectation under p over a 3-way categorical: Σ p_i k(x_i) = KL(p ‖ q).
    p = [0.6, 0.3, 0.1]
    q = [0.2, 0.5, 0.3]
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    logp = torch.tensor(p, dtype=torch.float64).log()
    ref_logp = torch.tensor(q, dtype=torch.float64).log()
    weights = torch.tensor(p, dtype=torch.float64)
    for kind in ("k1", "k3"):
        assert (weights * kl_estimate(logp, ref_logp, kind)).sum().item() == pytest.approx(true_kl)
    assert torch.all(kl_estimate(logp, ref_logp, "k3") >= 0)


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")
