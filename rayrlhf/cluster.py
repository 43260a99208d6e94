"""Reach Ray as the ``cluster`` config says: a private local cluster, the cluster this
process runs in (ray job submit, KubeRay), or a remote one through Ray Client."""

from __future__ import annotations

import math
import os

# True while Ray runs the private local cluster init_ray started: only that one is ours to stop.
_started_local_cluster = False


def init_ray(cluster_cfg, required_cpus: float = 0) -> None:
    """Start or join Ray. A local cluster gets at least ``required_cpus`` logical CPUs, so
    every actor of a run can be placed on a small laptop (they share the real cores)."""
    global _started_local_cluster
    import ray

    if ray.is_initialized():
        return
    runtime_env = dict(cluster_cfg.runtime_env or {})
    # Workers must import rayrlhf and find its configs like the driver does.
    env_vars = dict(runtime_env.get("env_vars", {}))
    for name in ("RAYRLHF_CACHE_DIR", "RAYRLHF_SHARED_DATA", "RAYRLHF_CONF_DIR"):
        if name in os.environ:
            env_vars.setdefault(name, os.environ[name])
    if env_vars:
        runtime_env["env_vars"] = env_vars
    kwargs = {"runtime_env": runtime_env or None, "log_to_driver": True}
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
