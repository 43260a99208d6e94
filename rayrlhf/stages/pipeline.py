"""``rayrlhf pipeline``: every stage in order on one config.

prepare the policy -> validate all four datasets -> (optional, ``run_sft=true``) supervised
fine-tuning of the policy -> train the reward, cost and moderation models -> PPO-Lag with the
trained judges -> evaluate the initial (or SFT'd) and the trained policy -> report. Each stage writes below ``<output_dir>/<stage>``; ``report/report.md`` sums it up.
"""

from __future__ import annotations

import logging
import time

from omegaconf import OmegaConf

from rayrlhf.stages.common import load_dataset_from_config, output_dir, seed_everything, write_json
from rayrlhf.stages.data_check import check_dataset
from rayrlhf.stages.prepare import prepare_models

log = logging.getLogger(__name__)

SCORE_DATASET = {"reward": "preferences", "cost": "preferences", "moderation": "qa_classification"}


def score_model_config(cfg, kind: str, out_dir):
    """The ``train-<kind>`` config the pipeline's settings imply."""
    from rayrlhf.config.schema import ScoreTrainConfig

    return OmegaConf.merge(OmegaConf.structured(ScoreTrainConfig), {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level},
        "cluster": cfg.cluster, "kind": kind, "model": cfg.model, "dataset": cfg[SCORE_DATASET[kind]],
        "eval_fraction": cfg.eval_fraction, "template": cfg.template, "training": cfg.score_training,
        "moderation_threshold": cfg.moderation_threshold,
        "moderation_max_false_positive_rate": cfg.moderation_max_false_positive_rate,
    })


def sft_config(cfg, out_dir):
    """The ``train-sft`` config the pipeline's settings imply."""
    from rayrlhf.config.schema import SFTConfig

    return OmegaConf.merge(OmegaConf.structured(SFTConfig), {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level},
        "cluster": cfg.cluster, "model": cfg.model, "dataset": cfg.sft, "eval_fraction": cfg.eval_fraction,
        "template": cfg.template, "training": cfg.sft_training,
    })


def ppo_lag_config(cfg, reward: str, cost: str, out_dir, policy=None):
    """The ``ppo-lag`` config the pipeline's settings imply (``policy``: a ModelConfig node
    replacing ``cfg.model``, e.g. the SFT'd policy)."""
    from rayrlhf.config.schema import PPOLagConfig

    return OmegaConf.merge(OmegaConf.structured(PPOLagConfig), {
        "run": {"seed": cfg.run.seed, "output_dir": str(out_dir), "log_level": cfg.run.log_level},
        "cluster": cfg.cluster, "policy": policy if policy is not None else cfg.model, "reward": reward, "cost": cost, "prompts": cfg.prompts,
        "template": cfg.template, "rollout": cfg.rollout, "ppo": cfg.ppo, "lagrange": cfg.lagrange,
        "resources": cfg.resources, "steps": cfg.ppo_steps, "save_every": 0, "tensorboard": True,
    })


def run(cfg) -> dict:
    from rayrlhf.cluster import init_ray
    from rayrlhf.eval.report import write_report
    from rayrlhf.eval.safety import generate_answers, judge_answers, summarize, win_rates
    from rayrlhf.stages.sample import spread
    from rayrlhf.trainers import ppo_lag, score_trainer, sft_trainer

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
    init_ray(cfg.cluster, required_cpus=ppo_lag.required_cpus(cfg))
    # The policy PPO-Lag starts from and the evaluation's "before": the SFT'd one when asked.
    policy = cfg.model
    if cfg.run_sft:
        sub = sft_config(cfg, out / "train-sft")
        report["sft"] = timed("train_sft", lambda: sft_trainer.run(sub))
        policy = OmegaConf.merge(cfg.model, {"name_or_path": str(out / "train-sft" / "model")})
    judges: dict[str, str] = {}
    report["score_models"] = {}
    for kind in cfg.score_models:
        sub = score_model_config(cfg, kind, out / f"train-{kind}")
        report["score_models"][kind] = timed(f"train_{kind}", lambda: score_trainer.run(sub))
        judges[kind] = str(out / f"train-{kind}" / "model")
    reward, cost = cfg.reward or judges.get("reward"), cfg.cost or judges.get("cost")

    history: list = []
    policy_after = None
    if cfg.ppo_steps > 0 and reward and cost:
        sub = ppo_lag_config(cfg, reward, cost, out / "ppo-lag", policy=policy)
        history = timed("ppo_lag", lambda: ppo_lag.run(sub))
        policy_after = str(out / "ppo-lag" / "policy")
        report["ppo_lag"] = history[-1]

    rows = spread(load_dataset_from_config(cfg.prompts).rows, cfg.num_eval_prompts)
    prompts, categories = [r.prompt for r in rows], [r.category for r in rows]
    gen = cfg.generation
    engine_kwargs = {"env": {"VLLM_CPU_KVCACHE_SPACE": "1"}} if cfg.eval_engine == "vllm" else {}

    def evaluate(policy):
        answers = generate_answers(policy, prompts, template=cfg.template.name, engine=cfg.eval_engine,
                                   max_new_tokens=gen.max_new_tokens,
                                   temperature=gen.temperature if gen.do_sample else 0.0,
                                   seed=cfg.run.seed, engine_kwargs=engine_kwargs)
        return judge_answers(prompts, answers, moderation=judges.get("moderation"), reward=reward,
                             cost=cost, threshold=cfg.moderation_threshold)

    before = timed("eval_before", lambda: evaluate(policy.name_or_path))
    after = timed("eval_after", lambda: evaluate(policy_after)) if policy_after else before
    report["eval"] = {"before": summarize(before, categories), "after": summarize(after, categories),
                      "win_rates": win_rates(after, before) if policy_after else {}}
    costs = lambda records: [r["cost"] for r in records] if records and "cost" in records[0] else None  # noqa: E731
    write_report(out / "report", history=history, before=report["eval"]["before"],
                 after=report["eval"]["after"], win_rates=report["eval"]["win_rates"],
                 timings=report["timing_s"], before_costs=costs(before), after_costs=costs(after))
    write_json(out / "pipeline_report.json", report)
    log.info("pipeline finished; report at %s", out / "report" / "report.md")
    print(f"report: {out / 'report' / 'report.md'}")
    return report
