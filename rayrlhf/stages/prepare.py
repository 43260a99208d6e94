"""``rayrlhf prepare``: materialise embedded models so later stages (and nodes) hit the cache."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rayrlhf.models import resolve_model_path
from rayrlhf.runs import output_dir, write_json

log = logging.getLogger(__name__)


def prepare_models(names: list[str]) -> dict[str, dict]:
    report = {}
    for name in names:
        start = time.perf_counter()
        path = Path(resolve_model_path(name))
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
        report[name] = {"path": str(path), "bytes": size,
                        "seconds": round(time.perf_counter() - start, 2)}
        log.info("model %s ready at %s (%.1f MB)", name, path, size / 1e6)
    return report


def run(cfg) -> dict:
    report = {"models": prepare_models(list(cfg.models))}
    write_json(output_dir(cfg) / "prepare.json", report)
    return report
