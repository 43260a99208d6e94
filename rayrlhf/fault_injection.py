"""FAULT INJECTION, for tests and fault drills: a named worker hangs, dies or fails at a named
point of its code, once per run. Off unless ``faults.inject`` lists faults.

Only the tests and deliberate drills use this: the hung, killed and failing workers the fault
tests need cannot be timed from outside (a kill "during the weight sync" lands within
milliseconds of it or not at all), so the workers carry these few labelled points instead.
``build_roles`` hands the list to every worker in the environment variable
``RAYRLHF_FAULT_INJECTION``; without it ``inject_fault`` returns at once.

A fault is ``<actor>.<point>:<action>:<calls>``:

* ``actor``: a worker's Ray actor name (``policy-0``, ``critic-0``, ``rollout-0``, ...);
* ``point``: where its code calls ``inject_fault(point)``: ``train_step`` (after each
  optimiser step of a policy or critic rank), ``loss`` (each micro-batch's loss, before the
  NaN/Inf check), ``update_weights`` (a rollout engine receiving new weights),
  ``save_checkpoint`` (after a rank wrote its checkpoint files);
* ``action``: one of ``ACTIONS``;
* ``calls``: ``N`` or ``N-M``: the N-th (to M-th) time that actor's process reaches the point.

Each (fault, call) fires once per run, whatever the restarts: the first worker to fire it
leaves a marker file (``fired``) in ``<run dir>/fault_injection/`` (so the run folder must be
visible to the workers: a local cluster or a shared volume), and the rebuilt workers, which
count their calls from 1 again, skip it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ENV = "RAYRLHF_FAULT_INJECTION"


def _hang() -> None:
    while True:  # until the driver's deadline kills this process
        time.sleep(3600)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _enospc() -> None:
    raise OSError(errno.ENOSPC, "No space left on device (injected fault)")


# action -> what the worker does; "nan" is applied by the caller (inject_fault returns it).
ACTIONS: dict[str, Callable[[], None] | None] = {"hang": _hang, "kill": _kill, "nan": None, "enospc": _enospc}
POINTS = ("train_step", "loss", "update_weights", "save_checkpoint")
_SPEC = re.compile(r"^(?P<actor>[\w-]+)\.(?P<point>\w+):(?P<action>\w+):(?P<first>\d+)(?:-(?P<last>\d+))?$")


@dataclass(frozen=True)
class Fault:
    actor: str
    point: str
    action: str
    first: int
    last: int

    def key(self, call: int) -> str:
        """The marker name of this fault at one call."""
        return f"{self.actor}.{self.point}.{self.action}.{call}"


def parse_fault(spec: str) -> Fault:
    """``<actor>.<point>:<action>:<N or N-M>`` -> Fault; ValueError naming what is wrong."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise ValueError(f"fault {spec!r}: expected <actor>.<point>:<action>:<N or N-M>, e.g. policy-0.train_step:hang:3")
    if match["point"] not in POINTS:
        raise ValueError(f"fault {spec!r}: unknown point {match['point']!r}; points: {', '.join(POINTS)}")
    if match["action"] not in ACTIONS:
        raise ValueError(f"fault {spec!r}: unknown action {match['action']!r}; actions: {', '.join(ACTIONS)}")
    first = int(match["first"])
    last = int(match["last"] or first)
    if not 1 <= first <= last:
        raise ValueError(f"fault {spec!r}: calls must be N >= 1 or N-M with N <= M")
    return Fault(match["actor"], match["point"], match["action"], first, last)


def injection_env(specs: list[str], run_dir: str | Path) -> dict[str, str]:
    """The workers' environment for ``specs`` (empty when there are none), after checking them."""
    if not specs:
        return {}
    for spec in specs:
        parse_fault(spec)
    markers = Path(run_dir) / "fault_injection"
    markers.mkdir(parents=True, exist_ok=True)
    return {ENV: json.dumps({"faults": list(specs), "markers": str(markers)})}


_calls: dict[str, int] = {}  # point -> times this process reached it
_loaded: tuple[str, list[Fault], Path] | None = None


def _faults() -> tuple[list[Fault], Path]:
    global _loaded
    raw = os.environ.get(ENV, "")
    if _loaded is None or _loaded[0] != raw:
        spec = json.loads(raw)
        _loaded = (raw, [parse_fault(s) for s in spec["faults"]], Path(spec["markers"]))
    return _loaded[1], _loaded[2]


def _actor_name() -> str:
    import ray

    return ray.get_runtime_context().get_actor_name() or ""


def inject_fault(point: str) -> str | None:
    """FAULT-INJECTION POINT ``point``: fire the fault listed for this actor at this call, if
    any. Returns "nan" when the caller is to poison its value with NaN; the other actions
    never return normally (hang, kill) or raise. Without faults listed: returns None at once."""
    if ENV not in os.environ:
        return None
    faults, markers = _faults()
    call = _calls[point] = _calls.get(point, 0) + 1
    name = None
    for fault in faults:
        if fault.point != point or not fault.first <= call <= fault.last:
            continue
        name = name if name is not None else _actor_name()
        if fault.actor != name or not _claim(markers / fault.key(call)):
            continue
        action = ACTIONS[fault.action]
        if action is None:
            return fault.action
        action()
    return None


def _claim(marker: Path) -> bool:
    """Create ``marker`` holding this process's id (a test can check that a hung worker was
    killed); False when it exists (this fault already fired in this run)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    return True


def fired(run_dir: str | Path) -> dict[str, int]:
    """The faults fired in a run so far: marker name -> id of the process that fired it."""
    folder = Path(run_dir) / "fault_injection"
    return {m.name: int(m.read_text() or 0) for m in sorted(folder.iterdir())} if folder.is_dir() else {}
