"""What goes wrong in a long PPO-Lag run, how it is recognised, and where it is written down.

Two kinds of faults are handled by the driver (rayrlhf.trainers.ppo_lag):

* a worker actor dies (OOM kill, preempted node, a crash in native code): the driver rebuilds
  its workers and continues from the last checkpoint, up to ``faults.max_restarts`` times;
* a NaN or Inf appears in scores, log-probs, values, advantages or losses: the step is
  skipped (``faults.nonfinite=skip``) or the run stops (``stop``), naming the tensor, its
  source and the rows.

Every fault becomes one JSON line in ``<run>/faults.jsonl``, so nothing is lost silently.
So does one finding that is not a fault: a cost threshold the policy cannot reach (λ held at
its cap), which the run reports and survives. This module imports nothing else of rayrlhf, so
the config schema can name its policies.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)
NONFINITE_POLICIES = ("skip", "stop")
UNREACHABLE = "lagrange/threshold_unreachable"


class NonFiniteError(RuntimeError):
    """A NaN/Inf where a finite number was required; the message says where it came from."""


class WorkerFailedError(RuntimeError):
    """Worker actors kept dying: the run stopped after ``faults.max_restarts`` restarts."""


def actor_failure_types() -> tuple[type[BaseException], ...]:
    """Ray's errors for a dead actor or worker process (the OOM killer raises its own)."""
    from ray import exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError)


def nonfinite_rows(values: torch.Tensor, mask: torch.Tensor | None = None) -> list[int]:
    """Rows of ``values`` ([b] or [b, T]) holding a NaN or ±Inf; positions where ``mask`` is 0
    (padding after a response ends) do not count."""
    bad = ~torch.isfinite(values.float())
    if mask is not None:
        bad = bad & mask.bool()
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
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
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
