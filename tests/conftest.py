"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray reads RAY_AUTH_MODE when it is imported, so the choice is made here, before any test
# module imports ray, and holds for the whole session and every worker it starts. Token auth
# is what Ray 2.60 turns on for a local cluster, and what rayrlhf keeps on by default.
os.environ["RAY_AUTH_MODE"] = "token"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real PKU-SafeRLHF / BeaverTails / Alpaca samples (CC BY-NC, never in the repo)."""
    from rayrlhf.paths import shared_data_dir as find_shared_data

    found = find_shared_data()
    if found is None:
        pytest.skip(
            "../shared/data not found: set RAYRLHF_SHARED_DATA to the folder holding the "
            "PKU/BeaverTails/Alpaca samples"
        )
    return found


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The tiny random Llama with a ChatML template, built into the cache on first use."""
    from rayrlhf.models import resolve_model_path

    return resolve_model_path("tiny-llama")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for every test that needs one (started once: ~10 s),
    with token authentication (set above)."""
    import ray

    # Logical CPUs above the 2 physical ones let a 2-worker trainer, its controller and a Serve
    # replica be scheduled side by side; they share the cores.
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
