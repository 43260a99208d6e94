"""``rayrlhf pipeline``: every stage in order on one config.

prepare the policy -> validate all four datasets -> train the reward, cost and moderation
models -> sample the policy. PPO-Lag and safety evaluation join here as they land. Each
stage writes below ``<output_dir>/<stage>``; ``pipeline_report.json`` sums it up.
"""

from __future__ import annotations

import logging
import time

from omegaconf import OmegaConf

from rayrlhf.stages.common import load_dataset_from_config, output_dir, seed_everything, write_json
from rayrlhf.stages.data_check import check_dataset
from rayrlhf.stages.prepare import prepare_models
from rayrlhf.stages.sample import sample_answers, spread, write_samples

log = logging.getLogger(__name__)

SCORE_DATASET = {"reward": "preferences", "cost": "preferences", "moderation": "qa_classification"}


def score_model_config(cfg, kind: str, out_dir) -> OmegaConf:
    """The ``train-<kind>`` config the pipeline's settings imply."""
    from rayrlhf.config.schema import ScoreTrainConfig

    node = OmegaConf.structured(ScoreTrainConfig)
    return OmegaConf.merge(node, {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level},
        "cluster": cfg.cluster, "kind": kind, "model": cfg.model, "dataset": cfg[SCORE_DATASET[kind]],
        "eval_fraction": cfg.eval_fraction, "template": cfg.template, "training": cfg.score_training,
        "moderation_threshold": cfg.moderation_threshold,
    })


def run(cfg) -> dict:
    from rayrlhf.trainers import score_trainer

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
    report["score_models"] = {}
    for kind in cfg.score_models:
        sub = score_model_config(cfg, kind, out / f"train-{kind}")
        report["score_models"][kind] = timed(f"train_{kind}", lambda: score_trainer.run(sub))
    rows = spread(load_dataset_from_config(cfg.prompts).rows, cfg.num_sample_prompts)
    samples = timed("sample", lambda: sample_answers(cfg.model, rows, cfg.template.name,
                                                    cfg.generation, cfg.num_sample_prompts))
    write_samples(out / "samples.jsonl", samples)
    report["samples"] = len(samples)
    write_json(out / "pipeline_report.json", report)
    log.info("pipeline finished; outputs in %s", out)
    return report
