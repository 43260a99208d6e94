"""What a stage's config is made of, read from ``conf/`` without composing it: its config
groups (and the override syntax each needs), their options, and the presets a stage takes.

``rayrlhf <stage> --help`` prints this; composing is not needed for it, so help stays fast.
A group placed at another key is chosen with ``group@key=option`` (``model@policy=tiny-llama``,
``dataset@prompts=shared_beavertails_evaluation``); a group at its own key with
``group=option`` (``lagrange=pid``, ``cluster=existing``); a preset is added with
``+group=option`` (``+experiment=synthetic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from rayrlhf import paths


@dataclass(frozen=True)
class GroupChoice:
    group: str  # folder under conf/ (model, dataset, lagrange, cluster)
    package: str | None  # the key it fills when not the group's own name (policy, prompts)
    default: str | None  # the option the stage's YAML chooses (None: no default)

    @property
    def override(self) -> str:
        """The left-hand side of the override that picks another option."""
        return f"{self.group}@{self.package}" if self.package else self.group


def group_options(group: str, conf_dir: Path | None = None) -> list[str]:
    """The options of a config group: the YAML files in ``conf/<group>/``."""
    folder = (conf_dir or paths.conf_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def stage_groups(config_name: str, conf_dir: Path | None = None) -> list[GroupChoice]:
    """The config groups a stage's YAML chooses from, in its defaults list's order (schema
    and shared nodes such as ``/hydra_common/default`` are left out: they are not options)."""
    conf = conf_dir or paths.conf_dir()
    loaded = yaml.safe_load((conf / f"{config_name}.yaml").read_text(encoding="utf-8")) or {}
    choices = []
    for entry in loaded.get("defaults", []):
        if not isinstance(entry, dict) or len(entry) != 1:
            continue  # "ppo_lag_schema", "_self_", "/hydra_common/default"
        (key, value), = entry.items()
        group, _, package = str(key).lstrip("/").partition("@")
        if group.startswith(("override ", "optional ")) or not (conf / group).is_dir():
            continue
        choices.append(GroupChoice(group, package or None, None if value is None else str(value)))
    return choices
