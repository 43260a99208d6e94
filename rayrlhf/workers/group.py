"""A role's actors: N data-parallel ranks of one worker class, placed and wired together.

The driver talks to a group as if it were one worker: ``call`` runs a method on every rank
with the same arguments; ``call_split`` gives each rank its share of a batch's rows and
returns the per-rank results in rank order. Methods are passed as real references
(``group.call_split(PolicyWorker.logprobs, batch)``), never as strings.

Every wait on workers goes through ``get_fail_fast``: the first failure surfaces at once, and
inside a phase's ``rayrlhf.faults.deadline_scope`` no wait outlives the phase's deadline.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayrlhf.faults import PhaseTimeoutError, actor_failure_types, blame_actor, current_deadline, worker_error
from rayrlhf.types import RolloutBatch


def get_fail_fast(refs: list[ray.ObjectRef]) -> list[Any]:
    """``ray.get(refs)``, but an error surfaces as soon as any call fails: when one rank of a
    role dies, its peers may wait forever in a collective, and a plain ``ray.get`` in list
    order could be waiting on one of them. Inside a ``deadline_scope``, calls still running
    when its deadline passes raise ``PhaseTimeoutError`` naming their actors (a hung engine or
    collective would otherwise hold the run, and its accelerators, forever)."""
    pending = list(refs)
    deadline = current_deadline()
    while pending:
        timeout = None if deadline is None else max(0.0, deadline[2] - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
        if not ready:
            phase, seconds, _ = deadline
            raise PhaseTimeoutError(phase, seconds, [called_actor(ref) for ref in pending])
        try:
            ray.get(ready)  # raises the failure of a dead actor at once
        except Exception as exc:
            blame_actor(exc, called_actor(ready[0]))
            raise
    return ray.get(list(refs))


def get_collective(refs: list[ray.ObjectRef]) -> list[Any]:
    """``get_fail_fast`` for calls that are members of one collective (a weight-sync broadcast):
    when one member dies, the others' collective fails too, at about the same time. Once any
    fails, this waits for them all (each is bounded by its group's timeout) and raises a dead
    actor's error first, so the failure names its cause, not a member that lost its peer."""
    try:
        return get_fail_fast(refs)
    except Exception as first:
        wait_until_all_ended(refs)
        for ref in refs:
            try:
                ray.get(ref, timeout=0)
            except Exception as exc:
                if isinstance(worker_error(exc), actor_failure_types()):
                    blame_actor(exc, called_actor(ref))
                    raise exc from None
        raise first


def wait_until_all_ended(refs: list[ray.ObjectRef]) -> None:
    """Wait until every call of ``refs`` has returned or failed (no longer than the phase's
    deadline allows): after one rank's save failed, the others may still be writing into the
    folder that is about to be removed."""
    deadline = current_deadline()
    timeout = None if deadline is None else max(0.0, deadline[2] - time.monotonic())
    ray.wait(list(refs), num_returns=len(refs), timeout=timeout)


def called_actor(ref: ray.ObjectRef) -> str:
    """Hex id of the actor whose method call returns ``ref`` ("" for a plain task or object)."""
    actor_id = ref.task_id().actor_id()
    # A task outside any actor (the driver's, a plain task) carries its job's nil actor id:
    # every byte but the job's is 0xff.
    unique = actor_id.binary()[:-len(actor_id.job_id.binary())]
    return "" if actor_id.is_nil() or unique == b"\xff" * len(unique) else actor_id.hex()


def get_fail_fast_groups(groups: list[list[ray.ObjectRef]]) -> list[list[Any]]:
    """``get_fail_fast`` over several groups' futures at once, results per group."""
    flat = get_fail_fast([ref for refs in groups for ref in refs])
    out, start = [], 0
    for refs in groups:
        out.append(flat[start:start + len(refs)])
        start += len(refs)
    return out


def bundle_options(pg: PlacementGroup | None, bundle: int | None) -> dict[str, Any]:
    """Ray actor options that put an actor into bundle ``bundle`` of ``pg`` ({} for none)."""
    if pg is None or bundle is None:
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle,
        # What the worker starts (vLLM's processes, a DeepSpeed helper) stays outside the group.
        placement_group_capture_child_tasks=False)}


class ActorGroup:
    def __init__(self, worker_cls: type, num_ranks: int, *args: Any, name: str,
                 num_cpus: float = 1, num_gpus: float = 0,
                 placement: tuple[PlacementGroup | None, Sequence[int | None]] | None = None,
                 distributed: bool = False, backend: str = "gloo",
                 runtime_env: dict | None = None, **kwargs: Any) -> None:
        """``placement``: the run's placement group and each rank's bundle in it (rank order)."""
        if num_ranks < 1:
            raise ValueError(f"{name}: num_ranks must be >= 1, got {num_ranks}")
        pg, bundles = placement if placement is not None else (None, [None] * num_ranks)
        if len(bundles) != num_ranks:
            raise ValueError(f"{name}: {num_ranks} ranks but {len(bundles)} bundles")
        self.name = name
        remote_cls = ray.remote(worker_cls)
        self.actors = []
        self.actor_names = [f"{name}-{rank}" for rank in range(num_ranks)]
        for rank in range(num_ranks):
            options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus,
                                       "name": self.actor_names[rank], "runtime_env": runtime_env,
                                       **bundle_options(pg, bundles[rank])}
            self.actors.append(remote_cls.options(**options).remote(*args, **kwargs))
        if distributed:
            try:
                address, port = get_fail_fast([self.actors[0].free_address.remote()])[0]
                get_fail_fast([actor.setup_distributed.remote(rank, num_ranks, address, port, backend)
                               for rank, actor in enumerate(self.actors)])
            except BaseException:
                self.kill()  # nobody else holds these actors yet
                raise

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: Callable, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """``method`` on every rank with the same arguments (futures, rank order)."""
        return [getattr(actor, method.__name__).remote(*args, **kwargs) for actor in self.actors]

    def call_rank0(self, method: Callable, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        return getattr(self.actors[0], method.__name__).remote(*args, **kwargs)

    def call_split(self, method: Callable, batch: RolloutBatch, **kwargs: Any) -> list[ray.ObjectRef]:
        """Each rank gets its contiguous share of ``batch``'s rows (futures, rank order)."""
        return [getattr(actor, method.__name__).remote(shard, **kwargs)
                for actor, shard in zip(self.actors, batch.split(len(self.actors)))]

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
