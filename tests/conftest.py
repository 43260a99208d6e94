"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


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
    """One real local Ray cluster for every test that needs one (started once: ~10 s).

    Token auth is what a local ``ray.init()`` turns on in Ray 2.60; tests talk only to their
    own local cluster, so they run it without auth, explicitly.
    """
    import os

    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Logical CPUs above the 2 physical ones let a 2-worker trainer, its controller and a Serve
    # replica be scheduled side by side; they share the cores.
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
