"""The Ray actors of a PPO-Lag run, by role, and the plain function that builds them.

Trainable roles run as DeepSpeed ranks: the policy and the critics (one class for every
critic layout: one shared backbone with a reward and a cost head by default, or Safe RLHF's
two critics, ``ppo.critic_layout``). The frozen models (reference policy, reward model, cost
model) need no process of their own: by default the trainers' rank-0 processes host them,
spread so that each process does a like share of the score phase
(``resources.frozen_placement``); the rollout engines are one actor each. With LoRA
(``ppo.lora.enabled``) the reference is no model of its own: every policy rank computes it
with its adapters off, wherever ``resources.frozen_placement`` puts the judges. ``build_roles``
starts them all and returns once every engine is ready, so that a step's timings never
include start-up.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import ray

from rayrlhf.cluster import (
    FROZEN_PLACEMENTS, PlacementPlan, check_cluster_capacity, placement_plan, reserve_placement,
    rollout_placement_options,
)
from rayrlhf.fault_injection import injection_env
from rayrlhf.faults import name_actors
from rayrlhf.models.lora import LoRASpec
from rayrlhf.types import RolloutBatch
from rayrlhf.workers.base import OptimConfig
from rayrlhf.workers.critic import CriticWorker
from rayrlhf.workers.frozen import FROZEN_ROLES, FrozenModels, FrozenSpec, FrozenWorker
from rayrlhf.workers.group import ActorGroup, bundle_options, get_fail_fast, wait_until_all_ended
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.rollout_worker import RolloutWorker


@dataclass
class Roles:
    """Every actor of a PPO-Lag run."""

    policy: ActorGroup
    critics: list[ActorGroup]  # one shared critic, or a reward critic and a cost critic
    critic_streams: list[tuple[str, ...]]  # the value heads of each critic ("reward", "cost")
    rollout_workers: list  # one RolloutWorker actor per engine
    rollout_names: list[str]
    # "reference" | "reward" | "cost" -> the group whose rank 0 hosts that frozen model.
    frozen_hosts: dict[str, ActorGroup] = field(default_factory=dict)
    frozen_groups: list[ActorGroup] = field(default_factory=list)  # actors that host frozen models only
    # The precision each side really computes in ("auto" depends on the machine).
    policy_dtype: str = "float32"
    engine_dtype: str | None = None
    # LoRA: the policy's ranks compute the reference (adapters off), each on its share of rows.
    reference_in_policy: bool = False
    # ZeRO-3 (ppo.zero_stage=3): each policy rank holds a slice of every weight.
    policy_partitioned: bool = False
    # The run's placement group (resources.layout), removed with the actors.
    placement_group: Any = None
    # vLLM sleep mode (rollout.sleep_mode): the engines free their GPU memory after generating.
    engines_sleep: bool = False
    # How weights reach the engines: "object_store" or "collective" (``sync_path``).
    sync_path: str = "object_store"
    # LoRA: a sync sends only the weights training can change (the merged adapted layers); the
    # engines were built from the policy's checkpoint, so they hold the frozen rest already.
    sync_changed_only: bool = False

    @property
    def groups(self) -> tuple[ActorGroup, ...]:
        return (self.policy, *self.critics, *self.frozen_groups)

    def frozen_calls(self, batch: RolloutBatch, prompts: list[str], responses: list[str],
                     response_ids: list[list[int]]) -> list[list[ray.ObjectRef]]:
        """Futures of the reference log-probs, the rewards and the costs (responses the length
        limit cut off are scored as unfinished)."""
        texts = (prompts, responses, response_ids, batch.finished.tolist())
        hosts = self.frozen_hosts
        reference = (hosts["reference"].call_split(FrozenModels.reference_logprobs, batch) if self.reference_in_policy
                     else [hosts["reference"].call_rank0(FrozenModels.reference_logprobs, batch)])
        return [reference,
                [hosts["reward"].call_rank0(FrozenModels.reward_scores, *texts)],
                [hosts["cost"].call_rank0(FrozenModels.cost_scores, *texts)]]

    def policy_rank0(self, method, *args: Any) -> list[ray.ObjectRef]:
        """Futures of ``method`` on the policy, rank 0's first. Under ZeRO-3 every rank runs it
        (each forward pass or weight read gathers every layer from all ranks), else rank 0 alone."""
        if self.policy_partitioned:
            return self.policy.call(method, *args)
        return [self.policy.call_rank0(method, *args)]

    def save_checkpoint(self, folder: Path) -> None:
        """Every rank of the trainable roles writes its DeepSpeed state into ``folder``; when one
        fails, the error is raised once the others have stopped writing there."""
        refs = (self.policy.call(PolicyWorker.save_checkpoint, str(folder))
                + [ref for critic in self.critics for ref in critic.call(CriticWorker.save_checkpoint, str(folder))])
        try:
            get_fail_fast(refs)
        except Exception:
            wait_until_all_ended(refs)
            raise

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
        release_placement(self.placement_group)
        self.placement_group = None


def critic_layout(layout: str, cost_critic: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(group name, value streams) of each critic: one shared critic or one per stream."""
    streams = ("reward", "cost") if cost_critic else ("reward",)
    if layout == "shared":
        return [("critic", streams)]
    if layout == "separate":
        return [(f"{stream}-critic", (stream,)) for stream in streams]
    raise ValueError(f"unknown ppo.critic_layout {layout!r}; choose shared or separate")


def per_category_count(cfg) -> int | None:
    """K, the constraints of ``lagrange.per_category`` (each has a cost value head), or None."""
    per_category = getattr(cfg.lagrange, "per_category", None)
    return len(per_category.thresholds) if per_category is not None and per_category.thresholds else None


def place_judges(trainer_loads: dict[str, int]) -> dict[str, str]:
    """Which trainer hosts each judge when they ride with the trainers: each judge goes to the
    trainer with the fewest score-phase forwards so far (``trainer_loads``: group name ->
    forwards it already runs; the policy runs the reference's), ties to the later-listed
    trainers (the critics: the policy's own train phase is the longest)."""
    loads = dict(trainer_loads)
    placed = {}
    for judge in ("reward", "cost"):
        host = min(reversed(list(loads)), key=lambda name: loads[name])
        placed[judge] = host
        loads[host] += 1
    return placed


def build_roles(cfg, policy_path: str, cost_critic: bool = True) -> Roles:
    """Start every actor a ``ppo_lag`` config asks for and wait until all can work
    (``cost_critic=False``: no cost value head, for runs that never use it). The run's placement
    group is reserved first (``resources.layout``), so that no role starts before every role has
    its place. If any fails or hangs while starting, the actors already started are killed and
    the group removed before the error propagates, so that a rebuild can take their names."""
    plan = run_placement_plan(cfg, cost_critic)
    check_cluster_capacity(cfg, plan)
    pg = reserve_placement(plan, cfg.resources.placement_timeout_s)
    started: list[tuple[str, Any]] = []  # (name, actor) of every actor, as it starts
    try:
        return _build_roles(cfg, policy_path, cost_critic, started, plan, pg)
    except BaseException as exc:
        name_actors(exc, {actor._actor_id.hex(): name for name, actor in started})
        for _, actor in started:
            ray.kill(actor)
        wait_until_names_free([name for name, _ in started])
        release_placement(pg)
        raise


def release_placement(pg) -> None:
    if pg is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)


def frozen_actor_names(frozen_placement: str, lora: bool) -> tuple[str, ...]:
    """The actors that host frozen models only (with LoRA the policy computes the reference)."""
    names = FROZEN_PLACEMENTS[frozen_placement]
    return tuple(name for name in names if not (lora and name == "reference"))


def run_placement_plan(cfg, cost_critic: bool = True) -> PlacementPlan:
    """The placement group of the actors this run really starts."""
    critics = tuple(name for name, _ in critic_layout(cfg.ppo.critic_layout, cost_critic))
    return placement_plan(cfg, critics, frozen_actor_names(cfg.resources.frozen_placement, cfg.ppo.lora.enabled))


def engines_sleep(cfg) -> bool:
    """rollout.sleep_mode, resolved: None sleeps the engines when they share GPUs with the trainers."""
    rollout, res = cfg.rollout, cfg.resources
    if rollout.engine != "vllm":
        return False
    if rollout.sleep_mode is None:  # engines that generate during training (async) stay awake
        return bool(res.use_gpu and res.layout == "colocate" and not rollout.async_generation)
    return bool(rollout.sleep_mode)


def lora_spec(lora) -> LoRASpec | None:
    """The adapters ``ppo.lora`` asks for, or None for full fine-tuning."""
    if not lora.enabled:
        return None
    return LoRASpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                    target_modules=tuple(lora.target_modules), merged_checkpoints=lora.merged_checkpoints)


def _build_roles(cfg, policy_path: str, cost_critic: bool, started: list[tuple[str, Any]],
                 plan: PlacementPlan, pg) -> Roles:
    from rayrlhf.models import resolve_model_path
    from rayrlhf.rewards import RULE_PREFIX

    res, ppo, seed, dtype = cfg.resources, cfg.ppo, cfg.run.seed, cfg.policy.dtype
    threads = res.threads_per_worker
    rows_per_rank = cfg.rollout.prompts_per_step // max(res.policy_ranks, res.critic_ranks)
    actor_optim = OptimConfig(lr=ppo.actor_lr, weight_decay=ppo.weight_decay, max_grad_norm=ppo.max_grad_norm,
                              zero_stage=ppo.zero_stage, bf16=ppo.bf16,
                              micro_batch_size=min(ppo.micro_batch_size, ppo.minibatch_size, rows_per_rank),
                              gradient_checkpointing=ppo.gradient_checkpointing, caller_accumulates=True,
                              trainable_layers=ppo.trainable_layers)
    critic_optim = OptimConfig(**{**asdict(actor_optim), "lr": ppo.critic_lr})
    # Only where faults.inject lists faults (tests, drills): the workers' injection points.
    env = injection_env(cfg.faults.inject, cfg.run.output_dir)
    runtime_env = {"env_vars": env} if env else None
    trainable = {"distributed": True,
                 "backend": "nccl" if res.use_gpu else "gloo", "dtype": dtype, "threads": threads, "seed": seed,
                 "micro_batch_size": ppo.micro_batch_size, "runtime_env": runtime_env, "lora": lora_spec(ppo.lora)}

    def start_group(worker_cls, ranks, *args, name: str, **kwargs) -> ActorGroup:
        # Each rank in its bundle, with the CPUs and GPU share the layout gives it there.
        slots = plan.slots[name]
        kwargs.update(num_cpus=slots[0].cpus, num_gpus=min(slot.gpus for slot in slots))
        built = ActorGroup(worker_cls, ranks, *args, name=name, placement=(pg, [slot.bundle for slot in slots]),
                           **kwargs)
        started.extend(zip(built.actor_names, built.actors))
        return built

    def critic_init(explicit, source):
        if explicit:
            return resolve_model_path(explicit)
        return policy_path if source.startswith(RULE_PREFIX) else resolve_model_path(source)

    # LoRA: the policy's base weights are the reference, so no frozen host loads a copy.
    reference_in_policy = ppo.lora.enabled
    sources = {"reference": None if reference_in_policy else policy_path, "reward": cfg.reward, "cost": cfg.cost}
    layout = critic_layout(ppo.critic_layout, cost_critic)
    frozen_of: dict[str, FrozenSpec] = {}  # trainer group name -> the frozen models its rank 0 hosts
    cost_heads = per_category_count(cfg)
    every = FrozenSpec(dtype=dtype, micro_batch_size=ppo.micro_batch_size, cost_per_category=cost_heads is not None)
    if res.frozen_placement == "with_trainers":
        # The reference goes with the policy (same model, same inputs); the judges balance the rest.
        recompute = 1 if ppo.logprobs_source == "recompute" else 0
        placed = place_judges({"policy": 1 + recompute, **{name: 1 for name, _ in layout}})
        for name in ("policy", *(name for name, _ in layout)):
            roles_here = {role: sources[role] for role, host in {"reference": "policy", **placed}.items() if host == name}
            if roles_here:
                frozen_of[name] = replace(every, **roles_here)

    policy = start_group(PolicyWorker, res.policy_ranks, policy_path, name="policy", optim=actor_optim,
                         frozen=frozen_of.get("policy"), **trainable)
    init_paths = {"reward": critic_init(cfg.reward_critic_init, cfg.reward),
                  "cost": critic_init(cfg.cost_critic_init, cfg.cost)}
    critics = [start_group(CriticWorker, res.critic_ranks, streams, {s: init_paths[s] for s in streams}, name=name,
                           optim=critic_optim, frozen=frozen_of.get(name), cost_heads=cost_heads, **trainable)
               for name, streams in layout]
    hosts = {"policy": policy, **{name: group for (name, _), group in zip(layout, critics)}}
    frozen_hosts: dict[str, ActorGroup] = {role: hosts[name] for name, spec in frozen_of.items() for role in spec.roles()}
    frozen_groups: list[ActorGroup] = []
    frozen_actor = {"threads": threads, "runtime_env": runtime_env}
    if res.frozen_placement == "one_actor":
        group = start_group(FrozenWorker, 1, replace(every, **sources), name="frozen", **frozen_actor)
        frozen_groups, frozen_hosts = [group], {role: group for role in FROZEN_ROLES if sources[role] is not None}
    elif res.frozen_placement == "own_actors":
        for role in (role for role in FROZEN_ROLES if sources[role] is not None):
            name = dict(zip(FROZEN_ROLES, FROZEN_PLACEMENTS["own_actors"]))[role]
            group = start_group(FrozenWorker, 1, replace(every, **{role: sources[role]}), name=name, **frozen_actor)
            frozen_groups.append(group)
            frozen_hosts[role] = group
    if reference_in_policy:
        frozen_hosts["reference"] = policy
    rollout_names, rollout_workers = start_rollout_engines(cfg, policy_path, runtime_env, pg, plan)
    started.extend(zip(rollout_names, rollout_workers))
    ready = get_fail_fast([w.ready.remote() for w in rollout_workers]
                          + policy.call(PolicyWorker.init_engine)
                          + [ref for critic in critics for ref in critic.call(CriticWorker.init_engine)])
    policy_dtype = get_fail_fast([policy.call_rank0(PolicyWorker.info)])[0]["compute_dtype"]
    if sync_path(cfg) == "collective":
        join_weight_sync(policy, rollout_workers, "nccl" if res.use_gpu else "gloo", cfg.rollout.sync_timeout_s)
    return Roles(policy=policy, critics=critics, critic_streams=[streams for _, streams in layout],
                 rollout_workers=rollout_workers, rollout_names=rollout_names, frozen_hosts=frozen_hosts,
                 frozen_groups=frozen_groups, policy_dtype=policy_dtype, engine_dtype=ready[0]["dtype"],
                 reference_in_policy=reference_in_policy, policy_partitioned=ppo.zero_stage == 3,
                 placement_group=pg, engines_sleep=engines_sleep(cfg), sync_path=sync_path(cfg),
                 sync_changed_only=ppo.lora.enabled)


def sync_path(cfg) -> str:
    """``rollout.sync_path`` with "auto" decided: the gloo broadcast on CPUs, the object store
    on GPUs (where the broadcast would be NCCL's, which no test here runs)."""
    path = cfg.rollout.sync_path
    if path == "auto":
        return "object_store" if cfg.resources.use_gpu else "collective"
    return path


def join_weight_sync(policy: ActorGroup, rollout_workers: list, backend: str, timeout_s: float) -> None:
    """The collective path's process group, once per set of roles: policy rank 0 (rank 0, its
    rendezvous on one of its node's free ports) and the engines (ranks 1..N) join at once."""
    address, port = get_fail_fast([policy.call_rank0(PolicyWorker.free_address)])[0]
    world_size = 1 + len(rollout_workers)
    get_fail_fast(policy.call(PolicyWorker.join_weight_sync, address, port, world_size, backend, timeout_s)
                  + [w.join_weight_sync.remote(address, port, rank, world_size, backend, timeout_s)
                     for rank, w in enumerate(rollout_workers, start=1)])


def kv_cache_size(cfg) -> dict[str, Any]:
    """Each engine's KV cache: ``rollout.kv_cache_gib``, or (None) room for its share of a
    step's rows at their longest (the engine sizes it from the model's shapes)."""
    rollout = cfg.rollout
    if rollout.kv_cache_gib is not None:
        return {"kv_cache_gib": rollout.kv_cache_gib}
    rows = -(-rollout.prompts_per_step // rollout.num_engines)
    return {"kv_cache_tokens": rows * (rollout.max_prompt_tokens + rollout.max_new_tokens)}


def engine_kwargs(cfg) -> dict[str, Any]:
    """What each rollout engine's constructor gets from the config (``rollout.*``)."""
    rollout, res = cfg.rollout, cfg.resources
    if rollout.engine != "vllm":
        return {}
    eager = (not res.use_gpu) if rollout.enforce_eager is None else rollout.enforce_eager
    kwargs: dict[str, Any] = {"max_model_len": rollout.max_model_len, "seed": cfg.run.seed, "dtype": cfg.policy.dtype,
                              **kv_cache_size(cfg),
                              "enforce_eager": eager, "tensor_parallel_size": rollout.tensor_parallel_size,
                              "sleep_mode": engines_sleep(cfg)}
    memory = rollout.gpu_memory_utilization
    if memory is None and res.use_gpu and res.layout == "colocate":
        memory = 0.5  # the trainers keep their weights and optimiser state on the same GPU
    if memory is not None and res.use_gpu:
        kwargs["gpu_memory_utilization"] = memory
    return kwargs


def start_rollout_engines(cfg, policy_path: str, runtime_env: dict | None = None, pg=None,
                          plan: PlacementPlan | None = None) -> tuple[list[str], list]:
    """One RolloutWorker actor per engine, in its bundle of the run's placement group (or
    outside it, spread over nodes, with ``rollout.placement=spread``)."""
    rollout = cfg.rollout
    plan = plan or placement_plan(cfg)
    threads = rollout.threads_per_engine or engine_threads_default(rollout.num_engines)
    names = [f"rollout-{i}" for i in range(rollout.num_engines)]
    workers = []
    for name, slot in zip(names, plan.slots["rollout"]):
        where = (bundle_options(pg, slot.bundle) if slot.bundle is not None
                 else rollout_placement_options(rollout.placement))
        workers.append(RolloutWorker.options(num_cpus=slot.cpus, num_gpus=slot.gpus, name=name,
                                             runtime_env=runtime_env, **where)
                       .remote(rollout.engine, policy_path, engine_kwargs(cfg), threads))
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
