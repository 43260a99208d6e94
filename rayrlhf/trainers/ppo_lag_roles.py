"""The Ray actors of a PPO-Lag run, by role, and the plain function that builds them.

Trainable roles run as DeepSpeed ranks: the policy and the two critics (one class, a
different config each). The frozen roles (reference policy, reward model, cost model) share
one actor by default (``resources.colocate_frozen``) and take fractional CPUs; the rollout
engines are one actor each. ``build_roles`` starts them all and returns once every engine
is ready, so that a step's timings never include start-up.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray

from rayrlhf.cluster import rollout_placement_options
from rayrlhf.fault_injection import injection_env
from rayrlhf.faults import name_actors
from rayrlhf.types import RolloutBatch
from rayrlhf.workers.base import OptimConfig
from rayrlhf.workers.critic import CriticWorker
from rayrlhf.workers.frozen import FrozenWorker
from rayrlhf.workers.group import ActorGroup, get_fail_fast
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.rollout_worker import RolloutWorker
from rayrlhf.workers.scorer import ScorerWorker


@dataclass
class Roles:
    """Every actor of a PPO-Lag run. The frozen models live in ``frozen`` (one colocated
    actor) or in ``reference``, ``reward_model`` and ``cost_model`` (one actor each)."""

    policy: ActorGroup
    reward_critic: ActorGroup
    cost_critic: ActorGroup | None  # None when λ is fixed at 0 (plain PPO never reads cost values)
    rollout_workers: list  # one RolloutWorker actor per engine
    rollout_names: list[str]
    frozen: ActorGroup | None = None
    reference: ActorGroup | None = None
    reward_model: ActorGroup | None = None
    cost_model: ActorGroup | None = None
    # The precision each side really computes in ("auto" depends on the machine).
    policy_dtype: str = "float32"
    engine_dtype: str | None = None

    @property
    def groups(self) -> tuple[ActorGroup, ...]:
        frozen = (self.frozen,) if self.frozen is not None else (self.reference, self.reward_model, self.cost_model)
        return tuple(g for g in (self.policy, *self.critics, *frozen))

    @property
    def critics(self) -> tuple[ActorGroup, ...]:
        return tuple(c for c in (self.reward_critic, self.cost_critic) if c is not None)

    def frozen_calls(self, batch: RolloutBatch, prompts: list[str], responses: list[str],
                     response_ids: list[list[int]]) -> list[list[ray.ObjectRef]]:
        """Futures of the reference log-probs, the rewards and the costs."""
        texts = (prompts, responses, response_ids)
        if self.frozen is not None:
            return [self.frozen.call(FrozenWorker.reference_logprobs, batch),
                    self.frozen.call(FrozenWorker.reward_scores, *texts),
                    self.frozen.call(FrozenWorker.cost_scores, *texts)]
        return [self.reference.call(PolicyWorker.logprobs, batch),
                self.reward_model.call(ScorerWorker.score, *texts),
                self.cost_model.call(ScorerWorker.score, *texts)]

    def save_checkpoint(self, folder: Path) -> None:
        """Every rank of the trainable roles writes its DeepSpeed state into ``folder``."""
        get_fail_fast(self.policy.call(PolicyWorker.save_checkpoint, str(folder))
                      + [ref for critic in self.critics for ref in critic.call(CriticWorker.save_checkpoint, str(folder))])

    def load_checkpoint(self, folder: Path) -> None:
        get_fail_fast(self.policy.call(PolicyWorker.load_checkpoint, str(folder))
                      + [ref for critic in self.critics for ref in critic.call(CriticWorker.load_checkpoint, str(folder))])

    def actor_names(self) -> dict[str, str]:
        """Actor id (hex) -> actor name, to say which worker died."""
        names = {}
        for group in self.groups:
            for actor, name in zip(group.actors, group.actor_names):
                names[actor._actor_id.hex()] = name
        for worker, name in zip(self.rollout_workers, self.rollout_names):
            names[worker._actor_id.hex()] = name
        return names

    def shutdown(self) -> None:
        """Kill every actor (dead or hung in a collective) and wait until their names are
        free, so that a rebuilt set of roles can register the same names."""
        names = [name for group in self.groups for name in group.actor_names] + self.rollout_names
        for group in self.groups:
            group.kill()
        for worker in self.rollout_workers:
            ray.kill(worker)
        self.rollout_workers = []
        wait_until_names_free(names)


def build_roles(cfg, policy_path: str, cost_critic: bool = True) -> Roles:
    """Start every actor a ``ppo_lag`` config asks for and wait until all can work
    (``cost_critic=False``: none for the cost stream, for runs that never use it). If any
    fails or hangs while starting, the actors already started are killed before the error
    propagates, so that a rebuild can take their names."""
    started: list[tuple[str, Any]] = []  # (name, actor) of every actor, as it starts
    try:
        return _build_roles(cfg, policy_path, cost_critic, started)
    except BaseException as exc:
        name_actors(exc, {actor._actor_id.hex(): name for name, actor in started})
        for _, actor in started:
            ray.kill(actor)
        wait_until_names_free([name for name, _ in started])
        raise


def _build_roles(cfg, policy_path: str, cost_critic: bool, started: list[tuple[str, Any]]) -> Roles:
    from rayrlhf.models import resolve_model_path
    from rayrlhf.rewards import RULE_PREFIX

    res, ppo, seed, dtype = cfg.resources, cfg.ppo, cfg.run.seed, cfg.policy.dtype
    threads = res.threads_per_worker
    rows_per_rank = cfg.rollout.prompts_per_step // max(res.policy_ranks, res.critic_ranks)
    actor_optim = OptimConfig(lr=ppo.actor_lr, weight_decay=ppo.weight_decay, max_grad_norm=ppo.max_grad_norm,
                              zero_stage=ppo.zero_stage, bf16=ppo.bf16,
                              micro_batch_size=min(ppo.minibatch_size, rows_per_rank),
                              gradient_checkpointing=ppo.gradient_checkpointing)
    critic_optim = OptimConfig(**{**asdict(actor_optim), "lr": ppo.critic_lr})
    gpus = 1 if res.use_gpu else 0
    # Only where faults.inject lists faults (tests, drills): the workers' injection points.
    env = injection_env(cfg.faults.inject, cfg.run.output_dir)
    runtime_env = {"env_vars": env} if env else None
    trainable = {"num_cpus": res.cpus_per_worker, "num_gpus": gpus, "distributed": True,
                 "backend": "nccl" if res.use_gpu else "gloo", "dtype": dtype, "threads": threads, "seed": seed,
                 "runtime_env": runtime_env}

    def group(*args, **kwargs) -> ActorGroup:
        built = ActorGroup(*args, **kwargs)
        started.extend(zip(built.actor_names, built.actors))
        return built

    def critic_init(explicit, source):
        if explicit:
            return resolve_model_path(explicit)
        return policy_path if source.startswith(RULE_PREFIX) else resolve_model_path(source)

    policy = group(PolicyWorker, res.policy_ranks, policy_path, name="policy", optim=actor_optim, **trainable)
    reward_critic = group(CriticWorker, res.critic_ranks, "reward", critic_init(cfg.reward_critic_init, cfg.reward),
                          name="reward-critic", optim=critic_optim, **trainable)
    cost_critic = group(CriticWorker, res.critic_ranks, "cost", critic_init(cfg.cost_critic_init, cfg.cost),
                        name="cost-critic", optim=critic_optim, **trainable) if cost_critic else None
    frozen = {"num_cpus": res.cpus_per_frozen_worker, "num_gpus": gpus * 0.25, "threads": threads,
              "runtime_env": runtime_env}
    if res.colocate_frozen:
        frozen_roles = {"frozen": group(FrozenWorker, 1, policy_path, cfg.reward, cfg.cost, name="frozen",
                                        **frozen, dtype=dtype, seed=seed)}
    else:
        frozen_roles = {
            "reference": group(PolicyWorker, 1, policy_path, name="reference", **frozen, dtype=dtype, seed=seed),
            "reward_model": group(ScorerWorker, 1, cfg.reward, name="reward-model", **frozen),
            "cost_model": group(ScorerWorker, 1, cfg.cost, name="cost-model", **frozen),
        }
    rollout_names, rollout_workers = start_rollout_engines(cfg, policy_path, gpus, runtime_env)
    started.extend(zip(rollout_names, rollout_workers))
    started = get_fail_fast([w.ready.remote() for w in rollout_workers]
                            + policy.call(PolicyWorker.init_engine)
                            + reward_critic.call(CriticWorker.init_engine)
                            + (cost_critic.call(CriticWorker.init_engine) if cost_critic else []))
    policy_dtype = get_fail_fast([policy.call_rank0(PolicyWorker.info)])[0]["compute_dtype"]
    return Roles(policy=policy, reward_critic=reward_critic, cost_critic=cost_critic, rollout_workers=rollout_workers,
                 rollout_names=rollout_names, policy_dtype=policy_dtype, engine_dtype=started[0]["dtype"],
                 **frozen_roles)


def start_rollout_engines(cfg, policy_path: str, gpus: int, runtime_env: dict | None = None) -> tuple[list[str], list]:
    """One RolloutWorker actor per engine, placed as ``rollout.placement`` says."""
    rollout = cfg.rollout
    engine_kwargs: dict[str, Any] = {}
    if rollout.engine == "vllm":
        engine_kwargs = {"max_model_len": rollout.max_model_len, "seed": cfg.run.seed, "dtype": cfg.policy.dtype,
                         "env": {"VLLM_CPU_KVCACHE_SPACE": str(int(rollout.kv_cache_gib))}}
    placement = rollout_placement_options(rollout.placement)
    threads = rollout.threads_per_engine or engine_threads_default(rollout.num_engines)
    names = [f"rollout-{i}" for i in range(rollout.num_engines)]
    workers = [RolloutWorker.options(num_cpus=rollout.cpus_per_engine, num_gpus=gpus, name=name,
                                     runtime_env=runtime_env, **placement)
               .remote(rollout.engine, policy_path, engine_kwargs, threads) for name in names]
    return names, workers


def engine_threads_default(num_engines: int) -> int:
    """Threads per rollout engine when the config leaves it open: the engines generate while
    every other role waits, so they may share all of a node's cores."""
    return max(1, (os.cpu_count() or 1) // num_engines)


def wait_until_names_free(names: list[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.2)
