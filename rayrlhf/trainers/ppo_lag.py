"""PPO-Lagrangian on Ray: the single controller.

``PPOLagDriver.step`` is the algorithm, phase by phase (Safe RLHF, Dai et al. 2023):

1. generate   rollout engines sample responses for a batch of prompts
2. score      policy and reference log-probs, both critics' values, reward and cost scores
3. advantages KL-shaped token rewards/costs, GAE for both streams, combined advantage
4. train      critics regress on their returns; the policy takes PPO steps on
              (A_r - λ A_c) / (1 + λ)
5. lagrange   λ moves with the episode cost against the threshold
6. sync       the rollout engines receive the new policy weights

The math lives in ``rayrlhf.algorithms``; the workers hold models; this file composes them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch

from rayrlhf.algorithms import (
    combined_advantage, gae_advantages, make_lagrange_controller, masked_mean, shape_rewards_and_costs,
)
from rayrlhf.rollout import SamplingSpec
from rayrlhf.types import build_rollout_batch
from rayrlhf.workers.base import OptimConfig
from rayrlhf.workers.critic import CriticWorker
from rayrlhf.workers.group import ActorGroup
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.rollout_worker import RolloutWorker, generate_across
from rayrlhf.workers.scorer import ScorerWorker

log = logging.getLogger(__name__)
DRIVER_STATE = "driver_state.json"


def lagrange_from_config(lag) -> Any:
    """The λ controller a ``lagrange`` config section describes."""
    if lag.kind == "log_lambda":
        return make_lagrange_controller("log_lambda", threshold=lag.threshold, lambda_init=lag.lambda_init,
                                        lambda_lr=lag.lambda_lr, lambda_max=lag.lambda_max,
                                        update_delay=lag.update_delay, window=lag.window)
    if lag.kind == "pid":
        return make_lagrange_controller("pid", threshold=lag.threshold, kp=lag.kp, ki=lag.ki, kd=lag.kd,
                                        lambda_init=lag.lambda_init, lambda_max=lag.lambda_max)
    if lag.kind == "constant":
        return make_lagrange_controller("constant", value=lag.value)
    raise ValueError(f"unknown lagrange.kind {lag.kind!r}; choose log_lambda, pid or constant")


def prompt_order(num_prompts: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """Prompt indices of step ``step``: each pass over the data is a seeded permutation, so
    the data position follows from the step number alone (resume needs no iterator)."""
    steps_per_pass = max(1, num_prompts // prompts_per_step)
    data_pass, in_pass = divmod(step, steps_per_pass)
    order = list(range(num_prompts))
    random.Random(seed * 1_000_003 + data_pass).shuffle(order)
    chosen = order[in_pass * prompts_per_step:(in_pass + 1) * prompts_per_step]
    if len(chosen) < prompts_per_step:  # fewer prompts than one step: repeat them
        chosen = (chosen * (prompts_per_step // max(1, len(chosen)) + 1))[:prompts_per_step]
    return chosen


def rollout_placement_options(placement: str) -> dict[str, Any]:
    """Ray actor options that place the rollout engines (``rollout.placement``): ``default``
    leaves it to Ray's scheduler, ``spread`` asks for one engine per node where possible."""
    options = {"default": {}, "spread": {"scheduling_strategy": "SPREAD"}}
    if placement not in options:
        raise ValueError(f"unknown rollout.placement {placement!r}; choose one of {sorted(options)}")
    return options[placement]


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class PPOLagDriver:
    """Builds the role groups from a ``ppo_lag`` config and runs steps."""

    def __init__(self, cfg) -> None:
        from rayrlhf.data.templates import format_prompt
        from rayrlhf.models import load_tokenizer, resolve_model_path
        from rayrlhf.models.zoo import resolve_bf16
        from rayrlhf.rewards import RULE_PREFIX
        from rayrlhf.stages.common import load_dataset_from_config

        self.cfg = cfg
        self.seed = cfg.run.seed
        self.policy_path = resolve_model_path(cfg.policy.name_or_path)
        self.tokenizer = load_tokenizer(self.policy_path)
        rows = load_dataset_from_config(cfg.prompts).rows
        self.prompts = [row.prompt for row in rows]
        max_tokens = cfg.rollout.max_prompt_tokens
        self.prompt_ids = [
            self.tokenizer(format_prompt(p, cfg.template.name, self.tokenizer),
                           add_special_tokens=False)["input_ids"][-max_tokens:]
            for p in self.prompts
        ]
        self.lagrange = lagrange_from_config(cfg.lagrange)
        self.step_index = 0

        res, ppo = cfg.resources, cfg.ppo
        bf16 = resolve_bf16(ppo.bf16)
        threads = res.threads_per_worker
        rows_per_rank = cfg.rollout.prompts_per_step // max(res.policy_ranks, res.critic_ranks)
        actor_optim = OptimConfig(lr=ppo.actor_lr, weight_decay=ppo.weight_decay, max_grad_norm=ppo.max_grad_norm,
                                  zero_stage=ppo.zero_stage, bf16=bf16,
                                  micro_batch_size=min(ppo.minibatch_size, rows_per_rank),
                                  gradient_checkpointing=ppo.gradient_checkpointing)
        critic_optim = OptimConfig(**{**asdict(actor_optim), "lr": ppo.critic_lr})
        gpus = 1 if res.use_gpu else 0
        backend = "nccl" if res.use_gpu else "gloo"

        def critic_init(explicit, source):
            if explicit:
                return resolve_model_path(explicit)
            return self.policy_path if source.startswith(RULE_PREFIX) else resolve_model_path(source)

        self.policy = ActorGroup(PolicyWorker, res.policy_ranks, self.policy_path, name="policy",
                                 num_cpus=res.cpus_per_worker, num_gpus=gpus, distributed=True,
                                 backend=backend, dtype=cfg.policy.dtype, optim=actor_optim,
                                 threads=threads, seed=self.seed)
        self.reward_critic = ActorGroup(CriticWorker, res.critic_ranks, "reward",
                                        critic_init(cfg.reward_critic_init, cfg.reward), name="reward-critic",
                                        num_cpus=res.cpus_per_worker, num_gpus=gpus, distributed=True,
                                        backend=backend, optim=critic_optim, threads=threads, seed=self.seed)
        self.cost_critic = ActorGroup(CriticWorker, res.critic_ranks, "cost",
                                      critic_init(cfg.cost_critic_init, cfg.cost), name="cost-critic",
                                      num_cpus=res.cpus_per_worker, num_gpus=gpus, distributed=True,
                                      backend=backend, optim=critic_optim, threads=threads, seed=self.seed)
        frozen = {"num_cpus": res.cpus_per_frozen_worker, "num_gpus": gpus * 0.25}
        self.reference = ActorGroup(PolicyWorker, 1, self.policy_path, name="reference", **frozen,
                                    dtype=cfg.policy.dtype, threads=threads, seed=self.seed)
        self.reward_model = ActorGroup(ScorerWorker, 1, cfg.reward, name="reward-model", **frozen,
                                       threads=threads)
        self.cost_model = ActorGroup(ScorerWorker, 1, cfg.cost, name="cost-model", **frozen, threads=threads)
        engine_kwargs: dict[str, Any] = {}
        if cfg.rollout.engine == "vllm":
            engine_kwargs = {"max_model_len": cfg.rollout.max_model_len, "seed": self.seed,
                             "dtype": cfg.policy.dtype,
                             "env": {"VLLM_CPU_KVCACHE_SPACE": str(int(cfg.rollout.kv_cache_gib))}}
        placement = rollout_placement_options(cfg.rollout.placement)
        self.rollout_workers = [
            RolloutWorker.options(num_cpus=cfg.rollout.cpus_per_engine, num_gpus=gpus, name=f"rollout-{i}",
                                  **placement).remote(cfg.rollout.engine, self.policy_path, engine_kwargs, threads)
            for i in range(cfg.rollout.num_engines)
        ]
        ray.get(self.policy.call(PolicyWorker.init_engine) + self.reward_critic.call(CriticWorker.init_engine)
                + self.cost_critic.call(CriticWorker.init_engine)
                + [w.ready.remote() for w in self.rollout_workers])

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        cfg, ppo = self.cfg, self.cfg.ppo
        timer = PhaseTimer()
        step_start = time.perf_counter()
        index = prompt_order(len(self.prompts), cfg.rollout.prompts_per_step, self.step_index, self.seed)
        prompts = [self.prompts[i] for i in index]

        with timer.phase("generate"):
            spec = SamplingSpec(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                top_p=cfg.rollout.top_p, seed=self.seed * 1_000_003 + self.step_index)
            completions = generate_across(self.rollout_workers, [self.prompt_ids[i] for i in index], spec)
            batch = build_rollout_batch([c.prompt_ids for c in completions], [c.response_ids for c in completions],
                                        [c.finished for c in completions], self.tokenizer.pad_token_id,
                                        [c.response_logprobs for c in completions])
            responses = [c.text for c in completions]
            response_ids = [c.response_ids for c in completions]

        with timer.phase("score"):
            futures = {
                "policy": self.policy.call_split(PolicyWorker.logprobs, batch),
                "reference": self.reference.call_split(PolicyWorker.logprobs, batch),
                "reward_values": self.reward_critic.call_split(CriticWorker.values, batch),
                "cost_values": self.cost_critic.call_split(CriticWorker.values, batch),
                "rewards": self.reward_model.call(ScorerWorker.score, prompts, responses, response_ids),
                "costs": self.cost_model.call(ScorerWorker.score, prompts, responses, response_ids),
            }
            got = {name: ray.get(refs) for name, refs in futures.items()}
            batch.old_logprobs = torch.cat([lp for lp, _ in got["policy"]])
            entropy = torch.cat([ent for _, ent in got["policy"]])
            batch.ref_logprobs = torch.cat([lp for lp, _ in got["reference"]])
            batch.reward_values = torch.cat(got["reward_values"])
            batch.cost_values = torch.cat(got["cost_values"])
            batch.rewards, batch.costs = got["rewards"][0].float(), got["costs"][0].float()

        with timer.phase("advantages"):
            mask = batch.response_mask.float()
            token_rewards, token_costs = shape_rewards_and_costs(
                batch.rewards, batch.costs, batch.old_logprobs, batch.ref_logprobs, mask,
                ppo.kl_coef, ppo.clip_range_score)
            adv_r, batch.reward_returns = gae_advantages(token_rewards, batch.reward_values, mask,
                                                         ppo.gamma, ppo.gae_lambda)
            adv_c, batch.cost_returns = gae_advantages(token_costs, batch.cost_values, mask,
                                                       ppo.gamma, ppo.gae_lambda)
            lam = self.lagrange.value
            batch.advantages = combined_advantage(adv_r, adv_c, lam) * mask

        with timer.phase("train"):
            train_kwargs = {"epochs": ppo.epochs, "minibatch_size": ppo.minibatch_size,
                            "seed": self.seed * 7919 + self.step_index}
            actor = self.policy.call_split(PolicyWorker.train, batch, clip_ratio=ppo.clip_ratio,
                                           entropy_coef=ppo.entropy_coef, **train_kwargs)
            reward_critic = self.reward_critic.call_split(CriticWorker.train, batch,
                                                          clip_range_value=ppo.clip_range_value, **train_kwargs)
            cost_critic = self.cost_critic.call_split(CriticWorker.train, batch,
                                                      clip_range_value=ppo.clip_range_value, **train_kwargs)
            actor_stats, reward_stats, cost_stats = ray.get(actor)[0], ray.get(reward_critic)[0], ray.get(cost_critic)[0]

        with timer.phase("lagrange"):
            episode_cost = float(batch.costs.mean())
            new_lambda = self.lagrange.update(episode_cost)

        with timer.phase("sync"):
            self.sync_weights()

        self.step_index += 1
        step_seconds = time.perf_counter() - step_start
        tokens = float(mask.sum())
        kl = masked_mean(batch.old_logprobs - batch.ref_logprobs, mask)
        metrics = {
            "step": self.step_index,
            "rollout/response_length": float(mask.sum(-1).mean()),
            "rollout/finished": float(batch.finished.float().mean()),
            # Engine vs trained policy on the sampled tokens: small when weight sync works.
            "rollout/logprob_gap": float(masked_mean((batch.rollout_logprobs - batch.old_logprobs).abs(), mask)),
            # Engine vs the initial weights (the reference): grows once the policy has moved.
            "rollout/ref_logprob_gap": float(masked_mean((batch.rollout_logprobs - batch.ref_logprobs).abs(), mask)),
            "reward/mean": float(batch.rewards.mean()),
            "cost/mean": episode_cost,
            "cost/threshold": float(self.cfg.lagrange.threshold),
            "cost/violation_rate": float((batch.costs > 0).float().mean()),
            "lagrange/lambda": float(new_lambda),
            "lagrange/lambda_used": float(lam),
            "actor/kl_to_ref": float(kl),
            "actor/entropy": float(entropy.mean()),
            **{f"actor/{k}": v for k, v in actor_stats.items()},
            "critic/reward_loss": reward_stats["loss"],
            "critic/cost_loss": cost_stats["loss"],
            **{f"timing/{k}_s": v for k, v in timer.seconds.items()},
            "timing/step_s": step_seconds,
            "timing/overhead_s": step_seconds - sum(timer.seconds.values()),
            "timing/generate_tokens_per_s": tokens / max(timer.seconds["generate"], 1e-9),
        }
        return metrics

    def sync_weights(self) -> None:
        """Policy rank 0's weights -> object store -> every rollout engine."""
        weights = self.policy.call_rank0(PolicyWorker.weights)
        ray.get([w.update_weights.remote(weights) for w in self.rollout_workers])

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, root: Path) -> Path:
        """Everything a resumed run needs, written atomically (tmp dir, then rename)."""
        final = root / f"step_{self.step_index:06d}"
        tmp = root / f".tmp_step_{self.step_index:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ray.get(self.policy.call(PolicyWorker.save_checkpoint, str(tmp))
                + self.reward_critic.call(CriticWorker.save_checkpoint, str(tmp))
                + self.cost_critic.call(CriticWorker.save_checkpoint, str(tmp)))
        state = {"step": self.step_index, "lagrange": self.lagrange.state_dict(),
                 "python_random": repr(random.getstate()), "torch_seed": torch.initial_seed()}
        (tmp / DRIVER_STATE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (root / "latest").write_text(final.name)
        return final

    def load_checkpoint(self, path: Path) -> None:
        ray.get(self.policy.call(PolicyWorker.load_checkpoint, str(path))
                + self.reward_critic.call(CriticWorker.load_checkpoint, str(path))
                + self.cost_critic.call(CriticWorker.load_checkpoint, str(path)))
        state = json.loads((path / DRIVER_STATE).read_text())
        self.step_index = state["step"]
        self.lagrange.load_state_dict(state["lagrange"])
        self.sync_weights()  # the engines still hold the initial weights

    def save_policy(self, out_dir: Path) -> Path:
        ray.get(self.policy.call(PolicyWorker.save_pretrained, str(out_dir), self.policy_path))
        return out_dir

    def shutdown(self) -> None:
        for group in (self.policy, self.reference, self.reward_critic, self.cost_critic,
                      self.reward_model, self.cost_model):
            group.kill()
        for worker in self.rollout_workers:
            ray.kill(worker)


def required_cpus(cfg) -> float:
    """Logical CPUs all of a run's actors reserve together."""
    res = cfg.resources
    return (res.cpus_per_worker * (res.policy_ranks + 2 * res.critic_ranks)
            + 3 * res.cpus_per_frozen_worker + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.is_file() else None


class MetricsLog:
    """metrics.jsonl (always), TensorBoard (optional) and a console progress bar."""

    def __init__(self, out: Path, total: int, initial: int, tensorboard: bool) -> None:
        from tqdm.auto import tqdm

        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        self.bar = tqdm(total=total, initial=initial, desc="ppo-lag")

    def log(self, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(key, value, metrics["step"])
        self.bar.update(1)
        self.bar.set_postfix({"reward": f"{metrics['reward/mean']:.3f}", "cost": f"{metrics['cost/mean']:.3f}",
                              "λ": f"{metrics['lagrange/lambda']:.3f}"})

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        self.bar.close()


def run(cfg) -> list[dict[str, float]]:
    """Entry of ``rayrlhf ppo-lag``: build the workers, run ``cfg.steps`` steps, save."""
    from rayrlhf.cluster import init_ray
    from rayrlhf.stages.common import output_dir

    out = output_dir(cfg)
    init_ray(cfg.cluster, required_cpus=required_cpus(cfg))
    driver = PPOLagDriver(cfg)
    if cfg.resume_from:
        checkpoint = latest_checkpoint(cfg.resume_from)
        if checkpoint is None:
            raise FileNotFoundError(f"resume_from={cfg.resume_from}: no checkpoints/latest below it")
        driver.load_checkpoint(checkpoint)
        log.info("resumed from %s at step %d", checkpoint, driver.step_index)
    metrics_log = MetricsLog(out, cfg.steps, driver.step_index, cfg.tensorboard)
    history = []
    try:
        while driver.step_index < cfg.steps:
            metrics = driver.step()
            history.append(metrics)
            metrics_log.log(metrics)
            if cfg.save_every and driver.step_index % cfg.save_every == 0:
                driver.save_checkpoint(out / "checkpoints")
        driver.save_checkpoint(out / "checkpoints")
        driver.save_policy(out / "policy")
    finally:
        metrics_log.close()
        driver.shutdown()
    return history
