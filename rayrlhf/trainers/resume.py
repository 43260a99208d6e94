"""Continuing an interrupted PPO-Lag run: the same settings, and the one command that does it.

A run writes its resolved config (``ppo_lag_config.yaml``) and, when started from the command
line, ``resume_command.txt`` into its folder. ``resume_from=<run dir>`` continues from the
newest complete checkpoint there; a resume whose settings differ from the saved ones (other
than ``RESUME_FREE_KEYS``) is refused unless ``resume_allow_changes=true``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

CONFIG_SNAPSHOT = "ppo_lag_config.yaml"
RESUME_COMMAND = "resume_command.txt"
# Keys a resumed run may change without changing what it computes.
RESUME_FREE_KEYS = ("steps", "save_every", "resume_from", "resume_allow_changes", "logger", "tracking",
                    "run.output_dir", "run.log_level", "run.verbose", "cluster", "faults", "keep_last_checkpoints",
                    "ppo.lora.merged_checkpoints")


def config_changes(saved: dict, current: dict, free_keys: tuple[str, ...] = RESUME_FREE_KEYS) -> list[str]:
    """``key: saved -> current`` for every leaf that differs, ignoring ``free_keys`` (and
    everything below them)."""
    def leaves(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    def free(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in free_keys)

    old, new = dict(leaves(saved)), dict(leaves(current))
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
            for key in sorted(set(old) | set(new)) if not free(key) and old.get(key) != new.get(key)]


def check_resume_config(cfg, resume_dir: Path) -> None:
    """A resumed run must compute what the interrupted one would have: same settings, same
    data and judges (``rayrlhf.trainers.fingerprints``), and the interrupted run must be over."""
    from omegaconf import OmegaConf

    from rayrlhf.run_folder import run_in_progress
    from rayrlhf.trainers.fingerprints import fingerprint_changes, ppo_lag_inputs

    if run_in_progress(resume_dir):
        raise RuntimeError(f"resume_from={resume_dir}: that run is still going (another process holds its "
                           "folder's lock); stop it first")
    if cfg.resume_allow_changes:
        return
    snapshot = resume_dir / CONFIG_SNAPSHOT
    if not snapshot.is_file():
        raise ValueError(f"resume_from={resume_dir}: no {CONFIG_SNAPSHOT}, so this run cannot be checked against "
                         "the one it resumes; pass resume_allow_changes=true to resume anyway")
    saved = OmegaConf.to_container(OmegaConf.load(snapshot), resolve=False)
    changes = config_changes(saved, OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    changes += fingerprint_changes(resume_dir, ppo_lag_inputs(cfg))
    if changes:
        raise ValueError(
            f"resume_from={resume_dir}: this run's config differs from the one it resumes "
            f"({snapshot}):\n  " + "\n  ".join(changes)
            + f"\nRun the command in {resume_dir / RESUME_COMMAND} to continue the same run, or pass "
              "resume_allow_changes=true to change these settings on purpose.")


def write_resume_command(out: Path) -> None:
    """``<run>/resume_command.txt``: the one command that continues this run after a crash."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().job.name != "ppo-lag":
        return  # composed in code (tests, the pipeline): no command line to repeat
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("resume_from=", "hydra."))]
    words = ["rayrlhf", "ppo-lag", *overrides, f"resume_from={out}"]
    (out / RESUME_COMMAND).write_text(" ".join(shlex.quote(w) for w in words) + "\n")


def resume_hint(out: Path) -> str:
    command = out / RESUME_COMMAND
    return f" Continue with: {command.read_text().strip()}" if command.is_file() else ""
