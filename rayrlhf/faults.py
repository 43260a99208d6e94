"""What goes wrong in a long PPO-Lag run, how it is recognised, and where it is written down.

The driver (rayrlhf.trainers.ppo_lag) handles three kinds of faults:

* a worker fails: its process dies (OOM kill, preempted node, a crash in native code), it
  hangs (a phase runs past its deadline, ``PhaseDeadlines``), or a call fails with an error
  that ``classify_failure`` sorts into a kind of ``FAILURES``: the kinds a rebuild can cure
  restart every worker from the newest checkpoint, up to ``faults.max_restarts`` times; the
  others (a full disk, CUDA out of memory, an exception in worker code) stop the run with
  what to do. A checkpoint save that finds the disk full is retried at the next save point;
* a NaN or Inf appears in scores, log-probs, values, advantages or losses: the step is
  skipped (``faults.nonfinite=skip``) or the run stops (``stop``), naming the tensor, its
  source and the rows.

Every fault becomes one JSON line in ``<run>/faults.jsonl``, so nothing is lost silently.
So does one finding that is not a fault: a cost threshold the policy cannot reach (λ held at
its cap), which the run reports and survives. This module imports nothing else of rayrlhf, so
the config schema can name its policies and the workers can bound their waits by its deadlines.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

log = logging.getLogger(__name__)
NONFINITE_POLICIES = ("skip", "stop")
UNREACHABLE = "lagrange/threshold_unreachable"


class NonFiniteError(RuntimeError):
    """A NaN/Inf where a finite number was required; the message says where it came from."""


class WorkerFailedError(RuntimeError):
    """A worker fault stopped the run: one kept recurring past ``faults.max_restarts``
    restarts, or it is of a kind a restart cannot cure (``FAILURES``)."""


class PhaseTimeoutError(TimeoutError):
    """A phase ran past its deadline: the calls of ``actor_ids`` had not returned."""

    def __init__(self, phase: str, seconds: float, actor_ids: list[str]) -> None:
        self.phase, self.seconds, self.actor_ids = phase, seconds, actor_ids
        super().__init__(f"phase {phase!r} ran past its deadline of {seconds:.0f} s "
                         f"({len(actor_ids)} call(s) had not returned)")


def actor_failure_types() -> tuple[type[BaseException], ...]:
    """Ray's errors for a dead actor or worker process (the OOM killer raises its own)."""
    from ray import exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError)


def nonfinite_rows(values: torch.Tensor, mask: torch.Tensor | None = None) -> list[int]:
    """Rows of ``values`` ([b], [b, T] or [b, T, K]) holding a NaN or ±Inf; positions where ``mask`` is 0
    (padding after a response ends) do not count."""
    bad = ~torch.isfinite(values.float())
    if mask is not None:
        mask = mask.bool()
        while mask.dim() < bad.dim():  # [b, T] mask of per-category [b, T, K] values
            mask = mask.unsqueeze(-1)
        bad = bad & mask
    if bad.dim() > 1:
        bad = bad.flatten(1).any(dim=1)
    return [int(i) for i in torch.nonzero(bad).flatten()]


def describe_nonfinite(tensors: Mapping[str, tuple[torch.Tensor, torch.Tensor | None, str]]) -> list[dict[str, Any]]:
    """One finding per tensor with non-finite entries: ``{"tensor", "source", "rows"}``.

    ``tensors`` maps a name to (values, mask or None, where the values came from)."""
    findings = []
    for name, (values, mask, source) in tensors.items():
        rows = nonfinite_rows(values, mask)
        if rows:
            findings.append({"tensor": name, "source": source, "rows": rows, "of_rows": int(values.shape[0])})
    return findings


def findings_message(step: int, findings: list[dict[str, Any]]) -> str:
    parts = [f"{f['tensor']} from {f['source']}: rows {f['rows'][:10]}{' ...' if len(f['rows']) > 10 else ''} "
             f"({len(f['rows'])} of {f['of_rows']})" for f in findings]
    return f"step {step}: NaN/Inf in " + "; ".join(parts)


class FaultLog:
    """Appends one JSON object per fault to ``faults.jsonl`` (``path=None``: records nothing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def record(self, kind: str, **details: Any) -> dict[str, Any]:
        entry = {"time": time.time(), "kind": kind, **details}
        if self.path is None:
            return entry
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, default=str) + "\n")
        except OSError as exc:  # a full disk must not hide the fault that filled it
            log.error("could not append to %s (%s); the fault was: %s", self.path, exc,
                      json.dumps(entry, default=str)[:4000])
        return entry


def note_unreachable_threshold(metrics: dict[str, float], *, after: int, lambda_max: float, threshold: float,
                               fault_log: FaultLog) -> None:
    """Mark a step whose λ has sat at ``lambda_max`` for ``after`` steps in a row
    (``faults.threshold_unreachable_after``; ``metrics["lagrange/threshold_unreachable"]`` 1.0):
    the cost stayed above the threshold however hard the constraint pulled. Said once in the
    log and faults.jsonl when the streak reaches that length; the run goes on at the cap."""
    at_cap = int(metrics.get("lagrange/at_cap_steps", 0))
    metrics[UNREACHABLE] = float(at_cap >= after)
    if at_cap != after:
        return
    message = (f"step {metrics['step']}: λ has sat at lagrange.lambda_max={lambda_max:g} for "
               f"{at_cap} steps while the cost stays above lagrange.threshold={threshold:g}: "
               "the threshold is not reachable with this policy/budget; training goes on at the cap")
    log.warning(message)
    fault_log.record("threshold_unreachable", step=metrics["step"], at_cap_steps=at_cap,
                     lambda_max=lambda_max, threshold=threshold,
                     cost=metrics.get("cost/mean"), message=message)


# ------------------------------------------------------------------ phase deadlines
# The phases whose waits on workers are bounded: building the workers (and loading a
# checkpoint into them), the step's phases that call workers, and saving a checkpoint.
DEADLINE_PHASES = ("start", "generate", "score", "train", "sync", "save")

_DEADLINE: ContextVar[tuple[str, float, float] | None] = ContextVar("rayrlhf_phase_deadline", default=None)


@contextmanager
def deadline_scope(phase: str, seconds: float) -> Iterator[None]:
    """Every wait on workers inside (``rayrlhf.workers.group.get_fail_fast``) ends with a
    ``PhaseTimeoutError`` once ``seconds`` have passed since the scope began (inf: never)."""
    # No deadline is None, not an infinite one: ray.wait cannot take an infinite timeout.
    token = _DEADLINE.set((phase, seconds, time.monotonic() + seconds) if math.isfinite(seconds) else None)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> tuple[str, float, float] | None:
    """(phase, its deadline in seconds, the ``time.monotonic()`` it ends) of the innermost
    ``deadline_scope`` in progress, or None outside any."""
    return _DEADLINE.get()


def phase_of(exc: BaseException) -> str | None:
    """The phase an exception left (``PhaseDeadlines.enforce`` tags it), or None."""
    return getattr(exc, "rayrlhf_phase", None)


@dataclass
class PhaseDeadlines:
    """How long each phase may wait on its workers before they count as hung.

    ``fixed`` (``faults.phase_timeout_s``) sets phases outright (inf: no deadline). Every
    other phase gets ``first_s`` until it has completed once with these workers (its first run
    loads models, compiles kernels and allocates memory), then ``factor`` times the slowest
    run measured so far, and never less than ``floor_s``."""

    factor: float
    floor_s: float
    first_s: float
    fixed: dict[str, float] = field(default_factory=dict)
    slowest: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, faults: Any) -> "PhaseDeadlines":
        """From a ``faults`` config section (``rayrlhf.config.schema.FaultsConfig``)."""
        return cls(factor=faults.phase_timeout_factor, floor_s=faults.phase_timeout_min_s,
                   first_s=faults.first_phase_timeout_s, fixed=fixed_deadlines(faults.phase_timeout_s))

    def seconds(self, phase: str) -> float:
        if phase in self.fixed:
            return self.fixed[phase]
        if phase not in self.slowest:
            return self.first_s
        return max(self.floor_s, self.factor * self.slowest[phase])

    def measured(self, phase: str, seconds: float) -> None:
        self.slowest[phase] = max(seconds, self.slowest.get(phase, 0.0))

    @contextmanager
    def enforce(self, phase: str) -> Iterator[None]:
        """Run a phase: its waits on workers are bounded by ``seconds(phase)`` (phases outside
        ``DEADLINE_PHASES`` wait on none), a run that completes is measured, and an exception
        that leaves it is tagged with its name (``phase_of``)."""
        start = time.monotonic()
        try:
            if phase in DEADLINE_PHASES:
                with deadline_scope(phase, self.seconds(phase)):
                    yield
            else:
                yield
        except BaseException as exc:
            if phase_of(exc) is None:
                exc.rayrlhf_phase = phase  # the innermost phase names where it happened
            raise
        if phase in DEADLINE_PHASES:
            self.measured(phase, time.monotonic() - start)


def fixed_deadlines(setting: Any) -> dict[str, float]:
    """``faults.phase_timeout_s`` as {phase: seconds}: None sets none, a number sets every
    phase, a mapping the phases it names; 0 means no deadline (inf)."""
    if setting is None:
        return {}
    chosen = dict(setting) if isinstance(setting, Mapping) else dict.fromkeys(DEADLINE_PHASES, setting)
    return {str(phase): float(seconds) if seconds else math.inf for phase, seconds in chosen.items()}


def phase_timeout_problem(setting: Any) -> str | None:
    """Why a ``faults.phase_timeout_s`` value cannot work (None when it can)."""
    if setting is None:
        return None
    chosen = dict(setting) if isinstance(setting, Mapping) else {"every phase": setting}
    unknown = sorted(str(phase) for phase in chosen if phase not in DEADLINE_PHASES and phase != "every phase")
    if unknown:
        return f"names no phase: {', '.join(unknown)} (phases: {', '.join(DEADLINE_PHASES)})"
    bad = {phase: v for phase, v in chosen.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0}
    if bad:
        return "must be seconds >= 0 (0: no deadline), or a mapping of phases to such seconds"
    return None


# ------------------------------------------------------------------ failure kinds
@dataclass(frozen=True)
class Failure:
    """A kind of worker failure and what the run does about it."""

    restart: bool  # True: rebuild every worker and continue from the newest checkpoint
    what: str
    remedy: str = ""  # for the kinds that stop: what to do before resuming


# The README's fault table says the same, for users.
FAILURES: dict[str, Failure] = {
    "worker_died": Failure(True, "a worker process died (OOM kill, lost node, crash in native code)"),
    "worker_hung": Failure(True, "a phase ran past its deadline (faults.phase_timeout_s): a stuck engine, "
                                 "collective or call; its workers are killed"),
    "object_store_full": Failure(True, "Ray's object store was full (ObjectStoreFullError); the rebuilt workers "
                                       "start with their objects freed"),
    "object_lost": Failure(True, "every copy of an object was lost with its node or owner (ObjectLostError)"),
    "collective_failed": Failure(True, "a NCCL/gloo collective failed or timed out (a peer died or the network "
                                       "dropped)"),
    "disk_full": Failure(False, "a disk is full (ENOSPC/EDQUOT, or Ray's spill folder: OutOfDiskError); a "
                                "restart would fill it again",
                         "free space there (checkpoints below the run folder keep keep_last_checkpoints), "
                         "then resume"),
    "accelerator_oom": Failure(False, "CUDA out of memory: the same step would need the same memory again",
                               "lower ppo.minibatch_size, rollout.prompts_per_step or rollout.max_new_tokens, "
                               "or set ppo.gradient_checkpointing=true, then resume with "
                               "resume_allow_changes=true"),
    "task_error": Failure(False, "an exception in a worker's code: a restart would repeat it",
                          "fix its cause (the traceback is in faults.jsonl), then resume"),
}

# Error texts of a failed NCCL/gloo collective raised as a plain RuntimeError.
_COLLECTIVE_MARKERS = ("nccl", "gloo", "collective operation timeout", "connection closed by peer")


def worker_error(exc: BaseException) -> BaseException:
    """What was raised inside the worker, for an error a Ray call re-raised (else ``exc``)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def classify_failure(exc: BaseException) -> str | None:
    """The kind (a key of ``FAILURES``) of a failure a wait on workers raised, or None for an
    error of the driver's own making (a NaN stop, a bad config), which propagates as it is.
    A full disk counts wherever it happened: the driver writes on the same disks."""
    import torch.distributed as dist
    from ray import exceptions as rex

    if isinstance(exc, PhaseTimeoutError):
        return "worker_hung"
    cause = worker_error(exc)
    in_worker = cause is not exc
    if isinstance(cause, rex.ObjectStoreFullError):
        return "object_store_full"
    if isinstance(cause, rex.OutOfDiskError) or is_disk_full(cause):
        return "disk_full"
    if isinstance(cause, rex.ObjectLostError):
        return "object_lost"
    if isinstance(cause, actor_failure_types()):
        return "worker_died"
    if isinstance(cause, torch.OutOfMemoryError):
        return "accelerator_oom"
    if isinstance(cause, (dist.DistBackendError, dist.DistNetworkError)) or (
            in_worker and isinstance(cause, RuntimeError)
            and any(marker in str(cause).lower() for marker in _COLLECTIVE_MARKERS)):
        return "collective_failed"
    if in_worker or isinstance(exc, rex.RayError):
        return "task_error"
    return None


def blame_actor(exc: BaseException, actor_id: str) -> None:
    """Note on ``exc`` the actor (hex id) whose call raised it: the exception a failed actor
    method raises in the driver does not say (a dead actor's does)."""
    if actor_id and getattr(exc, "rayrlhf_actor_id", None) is None:
        exc.rayrlhf_actor_id = actor_id


def name_actors(exc: BaseException, names: Mapping[str, str]) -> BaseException:
    """Give ``exc`` the names of actors by hex id (for ``failed_actors``; names attached
    earlier win); returns ``exc``."""
    exc.rayrlhf_actor_names = {**names, **getattr(exc, "rayrlhf_actor_names", {})}
    return exc


def failed_actors(exc: BaseException) -> list[str]:
    """The actors a failure concerns, by name where ``name_actors`` gave one: for a timeout
    those whose calls had not returned, else the one whose call failed or that died."""
    if isinstance(exc, PhaseTimeoutError):
        ids = list(exc.actor_ids)
    else:
        actor_id = getattr(exc, "rayrlhf_actor_id", None) or getattr(exc, "actor_id", None)
        ids = [actor_id if isinstance(actor_id, str) or actor_id is None else actor_id.hex()]
    names = getattr(exc, "rayrlhf_actor_names", {})
    found = [names.get(i, f"actor {i[:12]}") for i in ids if i]
    return sorted(set(found), key=found.index) or ["a worker"]
