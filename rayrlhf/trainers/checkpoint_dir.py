"""Checkpoint folders: one convention for every trainer, and atomic saves.

**Convention.** A checkpoint folder is complete once it holds ``COMPLETE``, a file with its
step, written last. ``latest_checkpoint(run_dir)`` is the complete checkpoint with the highest
step anywhere below a run folder: PPO-Lag's ``checkpoints/step_*`` (published here) and the
Ray Train checkpoints of the score-model and SFT trainers (``rayrlhf.trainers.ray_train``
marks them) are found the same way, so ``resume_from=<run dir>`` means the same for every
stage.

**Atomic saves** (PPO-Lag), below ``root``::

    step_000010/        complete checkpoints (each holds COMPLETE, written last)
    .tmp_step_000020/   a save in progress (or one a crash interrupted; removed on the next save;
                        a save that fails with an error removes its own)
    latest              the name of the newest complete checkpoint

A save writes everything into the temporary folder, flushes every file and folder in it to
the disk (``fsync``: a rename of data still in the page cache can survive a power loss while
the data does not), marks it complete, renames it into place (one atomic ``rename``), flushes
the parent folder (so the rename itself is durable) and then replaces ``latest`` atomically.
A reader trusts ``latest`` only if it names a complete folder, and otherwise takes the newest
complete one. ``keep_last`` bounds the disk a long run fills: older complete checkpoints are
deleted once a newer one is published (their COMPLETE marker first, so a deletion cut short
never leaves a folder that looks complete).
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


def publish_checkpoint(root: Path, step: int, write: Callable[[Path], None], *,
                       keep_last: int | None = None) -> Path:
    """Run ``write(folder)`` into a temporary folder and publish it as ``step_<step>``;
    then keep only the ``keep_last`` newest complete checkpoints (None: keep all).

    A complete checkpoint of the same step is kept as it is (a run re-saving the step it
    resumed from changes nothing, and replacing it would open a window without one)."""
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (or None to keep every checkpoint), got {keep_last}")
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    if not is_complete(final):
        remove_stale_saves(root)
        tmp = root / f".tmp_{final.name}"
        tmp.mkdir()
        try:
            write(tmp)
            fsync_tree(tmp)
            mark_complete(tmp, step)
            _fsync_dir(tmp)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)  # half a save is no use, and a full disk needs the space
            raise
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of the same name
        os.replace(tmp, final)
        _fsync_dir(root)
    pointer_tmp = root / f".{POINTER}.tmp"
    _fsync_write(pointer_tmp, final.name)
    os.replace(pointer_tmp, root / POINTER)
    _fsync_dir(root)
    if keep_last is not None:
        prune_checkpoints(root, keep_last, keep=final)
    return final


def mark_complete(folder: Path, step: int) -> None:
    """Mark ``folder`` as a complete checkpoint of ``step`` (the last thing a save writes)."""
    _fsync_write(Path(folder) / COMPLETE, str(step))


def checkpoint_step(folder: Path) -> int:
    """The step a complete checkpoint folder holds (from its marker)."""
    return int((Path(folder) / COMPLETE).read_text().strip())


def remove_stale_saves(root: Path) -> list[Path]:
    """Delete the temporary folders of saves that never finished (a crash mid-save); only
    call it while no save into ``root`` can be running. Returns what was removed."""
    stale = sorted(root.glob(f".tmp_{PREFIX}*"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def prune_checkpoints(root: Path, keep_last: int, *, keep: Path | None = None) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints (never ``keep``)."""
    complete = sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir() and is_complete(p)),
                      key=lambda p: p.name)
    doomed = [p for p in complete[:-keep_last] if keep is None or p.name != keep.name]
    for folder in doomed:
        (folder / COMPLETE).unlink()  # first: a deletion cut short leaves an incomplete folder
        shutil.rmtree(folder)
    return doomed


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder below ``folder`` (and itself) to the disk."""
    for directory, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
