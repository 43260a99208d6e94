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
