"""``rayrlhf pipeline``: every stage in order on one config.

So far: prepare the policy -> validate all four datasets -> sample the policy. The training
stages (score models, PPO-Lag, evaluation) join here as they land.
"""

from __future__ import annotations

import logging
import time

from rayrlhf.stages.common import load_dataset_from_config, output_dir, seed_everything, write_json
from rayrlhf.stages.data_check import check_dataset
from rayrlhf.stages.prepare import prepare_models
from rayrlhf.stages.sample import sample_answers, spread, write_samples

log = logging.getLogger(__name__)


def run(cfg) -> dict:
    seed_everything(cfg.run.seed)
    out = output_dir(cfg)
    report: dict = {"timing_s": {}}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        report["timing_s"][name] = round(time.perf_counter() - start, 2)
        log.info("pipeline: %s done in %.1f s", name, report["timing_s"][name])
        return result

    report["models"] = timed("prepare", lambda: prepare_models([cfg.model.name_or_path]))
    report["datasets"] = timed("data_check", lambda: {
        name: check_dataset(cfg[name]) for name in ("preferences", "prompts", "qa_classification", "sft")
    })
    rows = spread(load_dataset_from_config(cfg.prompts).rows, cfg.num_sample_prompts)
    samples = timed("sample", lambda: sample_answers(cfg.model, rows, cfg.template.name,
                                                    cfg.generation, cfg.num_sample_prompts))
    write_samples(out / "samples.jsonl", samples)
    report["samples"] = len(samples)
    write_json(out / "pipeline_report.json", report)
    log.info("pipeline finished; outputs in %s", out)
    return report
