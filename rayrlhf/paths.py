"""Where rayrlhf keeps caches and finds the shared sample data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Root of rayrlhf's caches (materialised models, tiny test models).

    ``RAYRLHF_CACHE_DIR`` overrides the default ``~/.cache/rayrlhf`` so that a cluster can
    point every node at a shared volume.
    """
    root = Path(os.environ.get("RAYRLHF_CACHE_DIR", Path.home() / ".cache" / "rayrlhf"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def shared_data_dir() -> Path | None:
    """The real PKU/BeaverTails/Alpaca samples, if this checkout has them beside it.

    ``RAYRLHF_SHARED_DATA`` wins; otherwise ``<repo>/../shared/data``. The files are
    CC BY-NC 4.0 and are never copied into the project.
    """
    env = os.environ.get("RAYRLHF_SHARED_DATA")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def conf_dir() -> Path:
    """The Hydra config tree (``conf/`` at the repository root)."""
    env = os.environ.get("RAYRLHF_CONF_DIR")
    path = Path(env) if env else REPO_ROOT / "conf"
    if not path.is_dir():
        raise FileNotFoundError(
            f"rayrlhf config directory not found at {path}; install rayrlhf editable from its "
            "repository (pip install -e .) or set RAYRLHF_CONF_DIR"
        )
    return path
