"""Where rayrlhf keeps caches and finds the shared sample data."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The checkout's root when running from one (an installed wheel: site-packages, which has no
# pyproject.toml; see ``checkout_root``).
REPO_ROOT = PACKAGE_DIR.parent


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


def checkout_root() -> Path | None:
    """The source checkout rayrlhf runs from; None for an installed wheel."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "conf").is_dir() else None


def conf_dir() -> Path:
    """The Hydra config tree: ``RAYRLHF_CONF_DIR``, else the copy an installed wheel carries
    (``rayrlhf/conf/``, put there by setup.py), else ``conf/`` of the checkout."""
    env = os.environ.get("RAYRLHF_CONF_DIR")
    candidates = [Path(env)] if env else [PACKAGE_DIR / "conf", REPO_ROOT / "conf"]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"rayrlhf config directory not found (looked in {', '.join(map(str, candidates))}); reinstall "
        "rayrlhf (pip install . ships conf/ inside the package) or set RAYRLHF_CONF_DIR"
    )
