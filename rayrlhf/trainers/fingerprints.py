"""Fingerprints of what a run reads besides its config: data files and model folders.

A resumed PPO-Lag run must compute what the interrupted one would have. Its config snapshot
catches changed settings, but not a prompt file edited in place or a judge folder retrained
into the same path; so the run also records a SHA-256 of each input file or folder
(``input_fingerprints.json``) and a resume compares them. Inputs that are not local paths
(``demo:`` sets shipped with the package, ``rule:`` scorers, hub ids pinned by revision) are
named by the config itself and get no fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FINGERPRINTS_FILE = "input_fingerprints.json"
CHUNK = 1 << 20


def path_fingerprint(path: Path) -> str:
    """SHA-256 over a file's bytes, or over a folder's relative file names and contents (in
    sorted order, so the same tree always gives the same digest)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def input_fingerprints(sources: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{name: {"path", "sha256"}}`` for every source that is a local file or folder."""
    found = {}
    for name, source in sources.items():
        if not isinstance(source, str) or not source:
            continue
        path = Path(source).expanduser()
        if path.exists():
            found[name] = {"path": str(path.resolve()), "sha256": path_fingerprint(path)}
    return found


def write_fingerprints(folder: Path, sources: dict[str, Any]) -> dict[str, dict[str, str]]:
    fingerprints = input_fingerprints(sources)
    (folder / FINGERPRINTS_FILE).write_text(json.dumps(fingerprints, indent=2, sort_keys=True) + "\n")
    return fingerprints


def fingerprint_changes(resume_dir: Path, sources: dict[str, Any]) -> list[str]:
    """``name: what changed`` for every input that differs from what the run in
    ``resume_dir`` recorded; a missing record is a change too (nothing can be checked)."""
    record = resume_dir / FINGERPRINTS_FILE
    if not record.is_file():
        return [f"{FINGERPRINTS_FILE}: absent, so the data and judges cannot be checked"]
    saved = json.loads(record.read_text())
    now = input_fingerprints(sources)
    changes = []
    for name in sorted(set(saved) | set(now)):
        old, new = saved.get(name), now.get(name)
        if old is None or new is None:
            changes.append(f"{name}: {'not a local file or folder' if old is None else old['path']} -> "
                           f"{'not a local file or folder' if new is None else new['path']}")
        elif old["sha256"] != new["sha256"]:
            changes.append(f"{name}: the contents of {new['path']} changed "
                           f"(sha256 {old['sha256'][:12]}... -> {new['sha256'][:12]}...)")
    return changes


def ppo_lag_inputs(cfg) -> dict[str, Any]:
    """What a PPO-Lag run reads besides its config: prompts, judges, critic and policy starts."""
    return {"prompts": cfg.prompts.source, "reward": cfg.reward, "cost": cfg.cost,
            "reward_critic_init": cfg.reward_critic_init, "cost_critic_init": cfg.cost_critic_init,
            "policy": cfg.policy.name_or_path}
