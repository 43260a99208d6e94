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
from dataclasses import dataclass
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
# Where the frozen models (reference, reward model, cost model) of a PPO-Lag run live, and the
# actors that host them: with_trainers: in the policy's and the critics' rank-0 processes (no
# actor of their own); one_actor: together in one actor; own_actors: one actor each.
FROZEN_PLACEMENTS: dict[str, tuple[str, ...]] = {
    "with_trainers": (), "one_actor": ("frozen",), "own_actors": ("reference", "reward-model", "cost-model")}
# The critics of a PPO-Lag run (their actor groups at most): one backbone with a reward and a
# cost head, or two critics.
CRITIC_LAYOUTS: dict[str, tuple[str, ...]] = {"shared": ("critic",), "separate": ("reward-critic", "cost-critic")}
# resources.layout: "separate" gives every actor a bundle of its own; "colocate" makes bundle i
# (one GPU on GPU clusters) the home of policy rank i, rank i of every critic and rollout engine
# i, each frozen actor in the emptiest bundle (verl's hybrid engine, OpenRLHF's
# colocate_all_models): the GPU count drops to max(ranks, engines), models take turns on it.
LAYOUTS = ("separate", "colocate")
# Ray's placement strategies (resources.placement_strategy): PACK fills few nodes (NCCL stays
# on NVLink), SPREAD one bundle per node where it can; STRICT_* refuse to do otherwise.
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Ray counts resources in units of 1e-4: colocated shares of a GPU are rounded down to that.
_RESOURCE_UNIT = 10_000


@dataclass(frozen=True)
class Demand:
    """One role's actors and what each asks for when it has a bundle of its own."""

    role: str  # the actor group's name: policy, critic, reward-model, rollout ...
    actors: int
    cpus: float
    gpus: float
    kind: str  # "trainer" | "frozen" | "engine"
    # False: scheduled outside the placement group (rollout.placement=spread engines).
    bundled: bool = True


@dataclass(frozen=True)
class Slot:
    """Where one actor goes: a bundle of the run's placement group (None: outside it) and the
    CPUs and GPUs the actor asks for there."""

    bundle: int | None
    cpus: float
    gpus: float


@dataclass
class PlacementPlan:
    """The run's one placement group: its bundles, and each role's slot per actor (rank order)."""

    layout: str
    strategy: str
    bundles: list[dict[str, float]]
    slots: dict[str, list[Slot]]

    def totals(self) -> dict[str, float]:
        """Every resource the run reserves: the bundles plus the actors outside the group."""
        total: dict[str, float] = {}
        for bundle in self.bundles:
            for name, amount in bundle.items():
                total[name] = total.get(name, 0.0) + amount
        for slots in self.slots.values():
            for slot in slots:
                if slot.bundle is None:
                    total["CPU"] = total.get("CPU", 0.0) + slot.cpus
                    if slot.gpus:
                        total["GPU"] = total.get("GPU", 0.0) + slot.gpus
        return {name: round(amount, 4) for name, amount in total.items()}


def role_demands(cfg, critic_groups: tuple[str, ...] | None = None,
                 frozen_actors: tuple[str, ...] | None = None) -> list[Demand]:
    """What each role of a PPO-Lag run (``resources``, ``ppo``, ``rollout`` of a ppo_lag or
    pipeline config) asks for. ``critic_groups`` and ``frozen_actors`` name the groups a run
    really starts (plain PPO trains no cost critic; with LoRA no reference actor); None: every
    one the config may start, which sizes the cluster."""
    res, rollout = cfg.resources, cfg.rollout
    gpu = 1.0 if res.use_gpu else 0.0
    critic_groups = CRITIC_LAYOUTS[cfg.ppo.critic_layout] if critic_groups is None else critic_groups
    frozen_actors = FROZEN_PLACEMENTS[res.frozen_placement] if frozen_actors is None else frozen_actors
    demands = [Demand("policy", res.policy_ranks, res.cpus_per_worker, gpu, "trainer")]
    demands += [Demand(name, res.critic_ranks, res.cpus_per_worker, gpu, "trainer") for name in critic_groups]
    demands += [Demand(name, 1, res.cpus_per_frozen_worker, gpu * res.gpus_per_frozen_worker, "frozen")
                for name in frozen_actors]
    # An engine holds its tensor-parallel GPUs in one bundle: vLLM shards it over them on one node.
    demands.append(Demand("rollout", rollout.num_engines, rollout.cpus_per_engine,
                          gpu * rollout.tensor_parallel_size, "engine", bundled=rollout.placement != "spread"))
    return demands


def plan_placement(demands: list[Demand], layout: str, strategy: str = "PACK",
                   custom: dict[str, float] | None = None) -> PlacementPlan:
    """The bundles of the run's placement group and each actor's slot in it (pure).

    separate: one bundle per actor, holding what the actor asks for. colocate: bundle i holds
    rank i of every trainer and engine i, each frozen actor joins the emptiest bundle; its CPUs are
    its actors' sum, its GPU (if any asks for one) is one, split equally between them. ``custom``
    Ray resources (e.g. {"A100": 1}) go into every bundle, to pin the run to nodes that have them.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown resources.layout {layout!r}; choose one of {list(LAYOUTS)}")
    if strategy not in PLACEMENT_STRATEGIES:
        raise ValueError(f"unknown resources.placement_strategy {strategy!r}; "
                         f"choose one of {list(PLACEMENT_STRATEGIES)}")
    extra = {name: float(amount) for name, amount in (custom or {}).items()}
    bundles: list[dict[str, float]] = []
    slots: dict[str, list[Slot]] = {d.role: [] for d in demands}
    if layout == "separate":
        for d in demands:
            for _ in range(d.actors):
                if not d.bundled:
                    slots[d.role].append(Slot(None, d.cpus, d.gpus))
                    continue
                bundles.append({"CPU": d.cpus, **({"GPU": d.gpus} if d.gpus else {}), **extra})
                slots[d.role].append(Slot(len(bundles) - 1, d.cpus, d.gpus))
        return PlacementPlan(layout, strategy, bundles, slots)
    # colocate: who lives in which bundle, then each bundle's size and each member's GPU share.
    bundled = [d for d in demands if d.bundled]
    count = max([d.actors for d in bundled if d.kind != "frozen"], default=1)
    members: list[list[tuple[Demand, int]]] = [[] for _ in range(count)]
    for d in (d for d in bundled if d.kind != "frozen"):
        for rank in range(d.actors):
            members[rank].append((d, rank))
    for d in (d for d in bundled if d.kind == "frozen"):  # each to the emptiest bundle
        min(members, key=len).append((d, 0))
    placed: dict[tuple[str, int], Slot] = {}
    for index, here in enumerate(members):
        gpus = any(d.gpus for d, _ in here)
        share = math.floor(_RESOURCE_UNIT / len(here)) / _RESOURCE_UNIT if gpus else 0.0
        bundles.append({"CPU": round(sum(d.cpus for d, _ in here), 4), **({"GPU": 1.0} if gpus else {}), **extra})
        for d, rank in here:
            placed[(d.role, rank)] = Slot(index, d.cpus, share)
    for d in demands:
        slots[d.role] = [placed[(d.role, rank)] if d.bundled else Slot(None, d.cpus, d.gpus)
                         for rank in range(d.actors)]
    return PlacementPlan(layout, strategy, bundles, slots)


def placement_plan(cfg, critic_groups: tuple[str, ...] | None = None,
                   frozen_actors: tuple[str, ...] | None = None) -> PlacementPlan:
    """``plan_placement`` for a config's ``resources`` (see ``role_demands``)."""
    res = cfg.resources
    return plan_placement(role_demands(cfg, critic_groups, frozen_actors), res.layout, res.placement_strategy,
                          dict(res.custom_resources or {}))


def required_resources(cfg) -> dict[str, float]:
    """Every resource (CPU, GPU, custom) all of a PPO-Lag run's actors reserve together."""
    return placement_plan(cfg).totals()


def required_cpus(cfg) -> float:
    """Logical CPUs all of a PPO-Lag run's actors reserve together (``resources``, ``ppo`` and
    ``rollout`` sections of a ppo_lag or pipeline config)."""
    return required_resources(cfg).get("CPU", 0.0)


RESOURCE_KEYS = {"CPU": "resources.cpus_per_worker x (policy_ranks + critic groups x critic_ranks), "
                        "cpus_per_frozen_worker, rollout.num_engines x rollout.cpus_per_engine",
                 "GPU": "resources.use_gpu: 1 per policy/critic rank, gpus_per_frozen_worker per frozen actor, "
                        "rollout.tensor_parallel_size per engine; layout=colocate: 1 per shared bundle"}


def shortfall(need: dict[str, float], have: dict[str, float]) -> dict[str, tuple[float, float]]:
    """resource -> (needed, there) for every resource ``need`` asks more of than ``have`` holds."""
    return {name: (amount, have.get(name, 0.0)) for name, amount in need.items() if amount > have.get(name, 0.0) + 1e-9}


def describe_shortfall(missing: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{name}: needs {need:g}, has {there:g}" for name, (need, there) in sorted(missing.items()))


def node_shortfall(plan: PlacementPlan, nodes: list[dict[str, float]]) -> str | None:
    """Why the nodes' ``nodes`` resources (total or free) cannot hold the group although the sum
    may: a bundle must fit on one node (STRICT_PACK: the whole group), STRICT_SPREAD needs a node
    per bundle. None when they can."""
    if not nodes:
        return None
    strict_pack = plan.strategy == "STRICT_PACK"
    for bundle in [plan.totals()] if strict_pack else plan.bundles:
        if all(shortfall(bundle, node) for node in nodes):
            largest = {name: max(node.get(name, 0.0) for node in nodes) for name in bundle}
            what = f"the whole group {bundle} (STRICT_PACK)" if strict_pack else f"bundle {bundle}"
            return f"no node can hold {what}: a bundle lives on one node, and no node has more than {largest}"
    if plan.strategy == "STRICT_SPREAD" and len(plan.bundles) > len(nodes):
        return (f"STRICT_SPREAD puts each of the {len(plan.bundles)} bundles on a node of its own; "
                f"there are {len(nodes)}")
    return None


def capacity_problems(plan: PlacementPlan, have: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """Why resources ``have`` (in all) on ``nodes`` cannot hold the plan's group: the resources
    it lacks, with the keys that ask for them, and a bundle (or strict strategy) no node fits."""
    problems = []
    missing = shortfall(plan.totals(), have)
    if missing:
        problems.append(describe_shortfall(missing) + "; " + "; ".join(
            f"{name} = {RESOURCE_KEYS.get(name, 'resources.custom_resources per bundle')}" for name in sorted(missing)))
    node = node_shortfall(plan, nodes)
    return problems + ([node] if node else [])


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def check_cluster_capacity(cfg, plan: PlacementPlan | None = None) -> None:
    """Actors that do not fit would wait forever. A local cluster cannot grow: refuse at once.
    A remote one may grow (KubeRay's autoscaler, cluster/kuberay/raycluster.yaml): warn, and
    let the placement group wait ``resources.placement_timeout_s`` for nodes."""
    import ray

    problems = capacity_problems(plan or placement_plan(cfg), ray.cluster_resources(), _alive_nodes())
    if not problems:
        return
    message = f"the Ray cluster is too small for this run's actors ({'; '.join(problems)})"
    if cfg.cluster.address is None:
        raise RuntimeError(message + ": lower those, or start Ray with more (cluster.num_cpus, cluster.num_gpus)")
    log.warning("%s; the placement group waits up to resources.placement_timeout_s=%gs for nodes to join "
                "(an autoscaler, where the cluster has one, adds them)", message, cfg.resources.placement_timeout_s)


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


def stage_gpu_need(cfg) -> tuple[float, str]:
    """The most GPUs a stage's actors hold at once, and what asks for them (0: none)."""
    needs: list[tuple[float, str]] = []
    if _section(cfg, "rollout") is not None and _section(cfg, "resources") is not None and cfg.resources.use_gpu:
        needs.append((required_resources(cfg).get("GPU", 0.0), f"the PPO-Lag actors ({RESOURCE_KEYS['GPU']})"))
    for name in ("training", "score_training", "sft_training"):
        section = _section(cfg, name)
        if section is not None and getattr(section, "use_gpu", False):
            needs.append((float(section.num_workers), f"{name}.num_workers with {name}.use_gpu"))
    return max(needs, default=(0.0, "nothing"), key=lambda need: need[0])


class PlacementTimeoutError(RuntimeError):
    """The run's placement group was not reserved in time; says which resources are missing."""


def reserve_placement(plan: PlacementPlan, timeout_s: float, name: str = ""):
    """Create the plan's placement group and wait until Ray has reserved every bundle, so that
    no role starts on a part of the cluster while another waits forever. After ``timeout_s``
    the group is removed and ``PlacementTimeoutError`` names what is missing (CPU, GPU, custom),
    against what the cluster has free. None when the plan has no bundles."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if not plan.bundles:
        return None
    pg = placement_group(plan.bundles, strategy=plan.strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if ready:
        return pg
    remove_placement_group(pg)
    # Against what is free now (other runs may hold the rest); the nodes by their totals.
    problems = capacity_problems(plan, ray.available_resources(), _alive_nodes())
    why = "; ".join(problems) or "the free resources are split over the nodes so that the bundles do not fit"
    raise PlacementTimeoutError(
        f"the run's placement group ({len(plan.bundles)} bundles, {plan.strategy}, layout={plan.layout}: "
        f"{plan.totals()}) was not reserved within resources.placement_timeout_s={timeout_s:g}s: {why}. "
        f"Free the resources, add nodes, or lower resources.* / rollout.num_engines / rollout.tensor_parallel_size")


# ---------------------------------------------------------------------------- placement
# Ray actor options per ``rollout.placement``: ``default`` leaves it to Ray's scheduler,
# ``spread`` asks for one engine per node where possible.
ROLLOUT_PLACEMENTS: dict[str, dict[str, Any]] = {"default": {}, "spread": {"scheduling_strategy": "SPREAD"}}


def rollout_placement_options(placement: str) -> dict[str, Any]:
    """Ray actor options that place the rollout engines (``rollout.placement``)."""
    if placement not in ROLLOUT_PLACEMENTS:
        raise ValueError(f"unknown rollout.placement {placement!r}; choose one of {sorted(ROLLOUT_PLACEMENTS)}")
    return dict(ROLLOUT_PLACEMENTS[placement])
