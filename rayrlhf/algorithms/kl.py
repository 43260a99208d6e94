"""Per-token estimators of KL(π ‖ π_ref) from samples of π (J. Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html).

With r = π_ref(x) / π(x) and x ~ π:
    k1 = −log r                 unbiased, high variance, can be negative
    k2 = ½ (log r)²             biased, low variance, always ≥ 0
    k3 = (r − 1) − log r        unbiased, low variance, always ≥ 0
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Elementwise KL estimate for tokens sampled from the policy whose log-probs are ``logp``."""
    log_ratio = ref_logp - logp  # log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")
