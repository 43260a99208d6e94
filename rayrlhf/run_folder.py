"""A run's output folder belongs to one run: claimed at the start, locked while the run lives.

Hydra names run folders by the second, so two runs started in the same second were handed the
same folder: the second appended to the first's metrics, overwrote its config, deleted its
half-written checkpoint and took over its ``latest`` pointer. Now a run claims its folder by
creating ``.rayrlhf-run`` in it with ``O_EXCL`` (of two runs racing, exactly one succeeds); the
loser takes ``<folder>_1`` (``_2`` ...) instead and says so. The claim file stays behind after
the run, so a finished run's folder is never reused either, and while the run lives it holds an
``flock`` on that file, so a later run can tell a live run from a dead one (resume refuses to
continue a run that is still going).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLAIM_FILE = ".rayrlhf-run"
MAX_SUFFIX = 1000
# Folders this process claimed -> the open claim file holding the flock (kept open for the
# process's lifetime: a run's lock must outlive every function that writes into its folder).
_claimed: dict[Path, int] = {}


def claim_run_folder(path: str | Path) -> Path:
    """``path``, or the first free ``path_<n>``, created and claimed for this process.

    Claiming a folder this process already holds returns it unchanged (a stage and the
    pipeline around it may both ask)."""
    path = Path(path)
    if _key(path) in _claimed:
        return path
    for suffix in range(MAX_SUFFIX):
        candidate = path if suffix == 0 else path.with_name(f"{path.name}_{suffix}")
        if _key(candidate) in _claimed:
            continue
        candidate.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(candidate / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another run's folder (running or finished)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a file only we have opened: cannot block
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.write(fd, (json.dumps(owner) + "\n").encode())
        os.fsync(fd)
        _claimed[_key(candidate)] = fd
        if suffix:
            log.warning("run folder %s belongs to another run; this run writes to %s", path, candidate)
        return candidate
    raise RuntimeError(f"no free run folder next to {path} ({path.name}_1 ... _{MAX_SUFFIX - 1} are all taken)")


def run_in_progress(path: str | Path) -> bool:
    """True when another live process holds ``path``'s claim (its run is still going).

    A folder this process claimed counts as finished: within one process runs follow each
    other, so one that resumes from it comes after it."""
    path = Path(path)
    claim = path / CLAIM_FILE
    if _key(path) in _claimed or not claim.is_file():
        return False
    fd = os.open(claim, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our own shared lock too
    return False


def _key(path: Path) -> Path:
    return path.resolve()
