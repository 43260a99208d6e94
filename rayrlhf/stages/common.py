"""Small things every stage does: find its output folder, seed, load a configured dataset."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def load_dataset_from_config(ds_cfg):
    """``load_rows`` with the keyword arguments of a DatasetConfig node."""
    from rayrlhf.data import load_rows

    return load_rows(
        ds_cfg.source,
        ds_cfg.schema,
        split=ds_cfg.split,
        revision=ds_cfg.revision,
        skip_bad_rows=ds_cfg.skip_bad_rows,
        max_chars=ds_cfg.max_chars,
        limit=ds_cfg.limit,
        field_map=dict(ds_cfg.field_map),
    )
