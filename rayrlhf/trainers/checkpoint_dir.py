"""Checkpoint folders: one convention for every trainer, and atomic saves.

**Convention.** A checkpoint folder is complete once it holds ``COMPLETE``, a file with its
step, written last. ``latest_checkpoint(run_dir)`` is the complete checkpoint with the highest
step anywhere below a run folder: PPO-Lag's ``checkpoints/step_*`` (published here) and the
Ray Train checkpoints of the score-model and SFT trainers (``rayrlhf.trainers.ray_train``
marks them) are found the same way, so ``resume_from=<run dir>`` means the same for every
stage.

**Atomic saves** (PPO-Lag), below ``root``::

    step_000010/        complete checkpoints (each holds COMPLETE, written last)
    .tmp_step_000020/   a save in progress (or one a crash interrupted; removed on the next save)
    latest              the name of the newest complete checkpoint

A save writes everything into the temporary folder, marks it complete, renames it into
place (one atomic ``rename``) and then replaces ``latest`` atomically. A reader trusts
``latest`` only if it names a complete folder, and otherwise takes the newest complete one;
a temporary folder never counts, even when its marker was written before the crash.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

COMPLETE = "COMPLETE"
POINTER = "latest"
PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def publish_checkpoint(root: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Run ``write(folder)`` into a temporary folder and publish it as ``step_<step>``.

    A complete checkpoint of the same step is kept as it is (a run re-saving the step it
    resumed from changes nothing, and replacing it would open a window without one)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    if not is_complete(final):
        for stale in root.glob(f".tmp_{PREFIX}*"):  # left by a save that crashed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".tmp_{final.name}"
        tmp.mkdir()
        write(tmp)
        mark_complete(tmp, step)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of the same name
        os.replace(tmp, final)
    pointer_tmp = root / f".{POINTER}.tmp"
    _fsync_write(pointer_tmp, final.name)
    os.replace(pointer_tmp, root / POINTER)
    return final


def mark_complete(folder: Path, step: int) -> None:
    """Mark ``folder`` as a complete checkpoint of ``step`` (the last thing a save writes)."""
    _fsync_write(Path(folder) / COMPLETE, str(step))


def checkpoint_step(folder: Path) -> int:
    """The step a complete checkpoint folder holds (from its marker)."""
    return int((Path(folder) / COMPLETE).read_text().strip())


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint below ``root``, a run folder or its checkpoints folder
    (None if there is none): the one ``root/latest`` names when that is complete, else the
    complete one with the highest step."""
    root = Path(root)
    pointer = root / POINTER
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if is_complete(named):
            return named
    complete = [marker.parent for marker in root.rglob(COMPLETE)
                if marker.is_file() and not any(part.startswith(".tmp_") for part in marker.relative_to(root).parts)]
    return max(complete, key=lambda folder: (checkpoint_step(folder), folder.name), default=None)


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
