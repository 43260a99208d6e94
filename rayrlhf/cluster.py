"""Reach Ray as the ``cluster`` config says: a private local cluster, the cluster this
process runs in (ray job submit, KubeRay), or a remote one through Ray Client; and the
arithmetic of what a run's actors reserve, so that a run that cannot fit is refused before
any actor waits forever for a CPU.

Nothing here imports the rest of rayrlhf: the config checks, the trainers and the pipeline
all size their runs with the same functions.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

log = logging.getLogger(__name__)

# True while Ray runs the private local cluster init_ray started: only that one is ours to stop.
_started_local_cluster = False


def init_ray(cluster_cfg, required_cpus: float = 0) -> None:
    """Start or join Ray. A local cluster gets at least ``required_cpus`` logical CPUs, so
    every actor of a run can be placed on a small laptop (they share the real cores)."""
    global _started_local_cluster
    import ray

    if ray.is_initialized():
        return
    from rayrlhf import logs

    runtime_env = dict(cluster_cfg.runtime_env or {})
    # Workers must import rayrlhf and find its configs like the driver does, and log as
    # quietly (or verbosely) as the driver; the user's runtime_env wins.
    quiet = logs.worker_runtime_env()
    env_vars = {**quiet.pop("env_vars", {}), **runtime_env.get("env_vars", {})}
    for name in ("RAYRLHF_CACHE_DIR", "RAYRLHF_SHARED_DATA", "RAYRLHF_CONF_DIR"):
        if name in os.environ:
            env_vars.setdefault(name, os.environ[name])
    runtime_env = {**quiet, **runtime_env, "env_vars": env_vars}
    # Inside a Ray job (rayrlhf submit) Ray merges this with the job's runtime_env and refuses
    # any key or variable both set: the job's own settings stand.
    job = _job_runtime_env()
    runtime_env["env_vars"] = {k: v for k, v in env_vars.items() if k not in job.get("env_vars", {})}
    runtime_env = {k: v for k, v in runtime_env.items() if k == "env_vars" or k not in job}
    kwargs = {"runtime_env": runtime_env, "log_to_driver": True}
    if cluster_cfg.address is None:
        num_cpus = cluster_cfg.num_cpus
        if num_cpus is None:
            num_cpus = max(os.cpu_count() or 1, math.ceil(required_cpus))
        # address="local": always a private cluster, even where `ray start` left one running.
        ray.init(address="local", num_cpus=num_cpus, num_gpus=cluster_cfg.num_gpus,
                 include_dashboard=cluster_cfg.include_dashboard,
                 dashboard_host=cluster_cfg.dashboard_host, **kwargs)
        _started_local_cluster = True
    else:
        ray.init(address=cluster_cfg.address, **kwargs)


def _job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the Ray job this driver runs as ({} outside a submitted job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return (json.loads(raw).get("runtime_env") or {}) if raw else {}


def release_ray() -> bool:
    """Stop the private local cluster ``init_ray`` started, so the next run in this process
    (the next trial of a Hydra multirun) starts a fresh one sized for its own config, with no
    actors or objects left over. A cluster the user connected to (``cluster.address``) or one
    started by someone else (a test fixture) keeps running and connected. True if stopped."""
    global _started_local_cluster
    import ray

    stopped = _started_local_cluster and ray.is_initialized()
    if stopped:
        ray.shutdown()
    _started_local_cluster = False
    return stopped


# ---------------------------------------------------------------------------- capacity
# Where the frozen models (reference, reward model, cost model) of a PPO-Lag run live:
# with_trainers: in the policy's and the critics' rank-0 processes (no actor of their own);
# one_actor: together in one actor; own_actors: one actor each.
FROZEN_PLACEMENTS: dict[str, int] = {"with_trainers": 0, "one_actor": 1, "own_actors": 3}  # -> frozen actors
# The critics of a PPO-Lag run: one backbone with a reward and a cost head, or two critics.
CRITIC_LAYOUTS: dict[str, int] = {"shared": 1, "separate": 2}  # -> critic groups (at most)


def required_cpus(cfg) -> float:
    """Logical CPUs all of a PPO-Lag run's actors reserve together (``resources``, ``ppo`` and
    ``rollout`` sections of a ppo_lag or pipeline config)."""
    res = cfg.resources
    frozen_actors = FROZEN_PLACEMENTS[res.frozen_placement]
    critic_groups = CRITIC_LAYOUTS[cfg.ppo.critic_layout]
    return (res.cpus_per_worker * (res.policy_ranks + critic_groups * res.critic_ranks)
            + frozen_actors * res.cpus_per_frozen_worker + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine)


def check_cluster_capacity(cfg) -> None:
    """Actors that do not fit would wait forever. A local cluster cannot grow: refuse at once.
    A remote one may autoscale: warn and let Ray wait for new nodes."""
    import ray

    need, have = required_cpus(cfg), ray.cluster_resources().get("CPU", 0.0)
    if have >= need:
        return
    message = (f"the Ray cluster has {have:g} CPUs, but this run's actors reserve {need:g} "
               f"(resources.cpus_per_worker x (policy_ranks + critic groups x critic_ranks), "
               f"cpus_per_frozen_worker, "
               f"rollout.num_engines x rollout.cpus_per_engine)")
    if cfg.cluster.address is None:
        raise RuntimeError(message + ": lower those, or start Ray with more logical CPUs")
    log.warning("%s; the actors wait until the autoscaler adds nodes", message)


def _section(cfg: Any, name: str) -> Any:
    return getattr(cfg, name, None)


def stage_cpu_need(cfg) -> tuple[float, str]:
    """The most logical CPUs a stage's actors hold at once, and what asks for them."""
    needs: list[tuple[float, str]] = []
    if _section(cfg, "rollout") is not None and _section(cfg, "resources") is not None:
        needs.append((required_cpus(cfg), "the PPO-Lag actors (resources.*, rollout.num_engines x "
                                          "rollout.cpus_per_engine)"))
    for name in ("training", "score_training", "sft_training"):
        section = _section(cfg, name)
        if section is not None:
            needs.append((section.num_workers * section.cpus_per_worker,
                          f"{name}.num_workers x {name}.cpus_per_worker"))
    if isinstance(_section(cfg, "num_cpus"), (int, float)):  # serve: the replica's reservation
        needs.append((cfg.num_cpus, "the Serve replica (num_cpus)"))
    return max(needs, default=(0.0, "nothing"), key=lambda need: need[0])


# ---------------------------------------------------------------------------- placement
# Ray actor options per ``rollout.placement``: ``default`` leaves it to Ray's scheduler,
# ``spread`` asks for one engine per node where possible.
ROLLOUT_PLACEMENTS: dict[str, dict[str, Any]] = {"default": {}, "spread": {"scheduling_strategy": "SPREAD"}}


def rollout_placement_options(placement: str) -> dict[str, Any]:
    """Ray actor options that place the rollout engines (``rollout.placement``)."""
    if placement not in ROLLOUT_PLACEMENTS:
        raise ValueError(f"unknown rollout.placement {placement!r}; choose one of {sorted(ROLLOUT_PLACEMENTS)}")
    return dict(ROLLOUT_PLACEMENTS[placement])
