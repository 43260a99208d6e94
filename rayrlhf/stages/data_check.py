"""``rayrlhf data-check``: validate a dataset and summarise what is in it."""

from __future__ import annotations

import collections
import logging

from rayrlhf.data import PreferenceRow, PromptRow, QAClassificationRow, SFTRow, load_dataset_from_config
from rayrlhf.runs import output_dir, write_json

log = logging.getLogger(__name__)


def summarise_rows(rows: list) -> dict:
    """Counts a person checks before training on a dataset (label balance, categories)."""
    summary: dict = {"rows": len(rows)}
    if not rows:
        return summary
    first = rows[0]
    if isinstance(first, PreferenceRow):
        summary["better_is_0"] = sum(r.better_response_id == 0 for r in rows)
        summary["safer_is_0"] = sum(r.safer_response_id == 0 for r in rows)
        summary["both_safe"] = sum(r.is_response_0_safe and r.is_response_1_safe for r in rows)
        summary["both_unsafe"] = sum(not (r.is_response_0_safe or r.is_response_1_safe) for r in rows)
        summary["better_is_safer"] = sum(r.better_response_id == r.safer_response_id for r in rows)
    elif isinstance(first, QAClassificationRow):
        summary["safe"] = sum(r.is_safe for r in rows)
        flags = collections.Counter(name for r in rows for name, on in r.category.items() if on)
        summary["category_flags"] = dict(sorted(flags.items()))
    elif isinstance(first, PromptRow):
        cats = collections.Counter(r.category or "benign/unlabelled" for r in rows)
        summary["categories"] = dict(sorted(cats.items()))
    elif isinstance(first, SFTRow):
        summary["with_input"] = sum(bool(r.input.strip()) for r in rows)
    return summary


def check_dataset(ds_cfg) -> dict:
    result = load_dataset_from_config(ds_cfg)
    report = {"source": result.source, "schema": ds_cfg.schema, "skipped": result.skipped,
              **summarise_rows(result.rows)}
    if result.skipped:
        report["skipped_errors"] = [str(e) for e in result.skipped_errors]
    log.info("%s (%s): %d rows, %d skipped", result.source, ds_cfg.schema, len(result.rows),
             result.skipped)
    return report


def run(cfg) -> dict:
    report = check_dataset(cfg.dataset)
    write_json(output_dir(cfg) / "data_check.json", report)
    print({k: v for k, v in report.items() if k != "skipped_errors"})
    return report
