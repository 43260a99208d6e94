"""A stage's run folder and seed: the small things every stage does first.

Low in the layers on purpose (nothing here imports the rest of rayrlhf): trainers,
evaluation and the stages all write their outputs through these.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any


def output_dir(cfg) -> Path:
    """This run's folder, claimed for it alone (``rayrlhf.run_folder``): when another run
    already has ``run.output_dir``, this one writes to ``<it>_1`` and ``cfg.run.output_dir``
    is set to that folder, so snapshots of the config name where the run really is."""
    from rayrlhf.run_folder import claim_run_folder

    path = claim_run_folder(cfg.run.output_dir)
    if str(path) != str(cfg.run.output_dir):
        cfg.run.output_dir = str(path)
    return path


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically (a crash never leaves half a report)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path
