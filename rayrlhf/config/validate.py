"""Impossible config values, found before any worker starts, every bad key named at once.

Hydra and the dataclass schemas catch misspelled keys and wrong types; this catches values of
the right type that cannot work, and values never given: a mandatory key left ``???``
(``reward``/``cost`` of ppo-lag), a negative learning rate, ``lagrange.threshold=nan``, a
``top_p`` of 2, zero rollout engines, or more actors than the local Ray cluster has CPUs or GPUs
(which would leave them pending forever instead of failing).

The rules live beside the fields they govern (``rayrlhf.config.schema``): each field's checks,
and a schema class's ``checks`` classmethod for fields that depend on each other. This module
is the one walker that applies them to every section of a stage's config, plus the two rules
of a whole config: every float anywhere must be finite, and a private local cluster must
hold the stage's actors. ``validate_config`` is pure: it reads the config and raises
:class:`ConfigValueError` listing every problem, one per line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rayrlhf.config.checks import Problem, field_checks, is_number


class ConfigValueError(ValueError):
    """Config values that cannot work; ``problems`` holds (key, value, why) for each."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [f"{key}={value!r}: {why}" for key, value, why in self.problems]
        super().__init__(f"{len(lines)} invalid config value(s):\n  " + "\n  ".join(lines))


# --- walking a config ------------------------------------------------------------------


def _schema(node: Any) -> type | None:
    """The dataclass a config section was built from (None for plain mappings)."""
    if isinstance(node, DictConfig):
        kind = OmegaConf.get_type(node)
        return kind if kind is not None and dataclasses.is_dataclass(kind) else None
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return type(node)
    return None


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of a config section; keys still ``???`` (``_missing`` reports them) or
    unresolvable are left out."""
    if isinstance(node, DictConfig):
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            try:
                yield str(key), node[key]
            except Exception:  # noqa: BLE001 - an interpolation only the running app can resolve
                continue
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield f.name, getattr(node, f.name)
    elif isinstance(node, Mapping):
        yield from ((str(k), v) for k, v in node.items())


def _is_section(value: Any) -> bool:
    return isinstance(value, (DictConfig, Mapping)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type))


def _sections(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted prefix, section) of the config and every section below it."""
    yield prefix, node
    for key, value in _children(node):
        if _is_section(value):
            yield from _sections(value, f"{prefix}{key}.")


def _leaves(node: Any) -> Iterator[tuple[str, str, Any]]:
    """(dotted key, field name, value) of the section's own leaves; a list is one leaf."""
    for key, value in _children(node):
        if not _is_section(value):
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            yield key, key, value


def _nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(item) for item in value)
    return False


# --- the rule of a whole config ------------------------------------------------------------


def _local_cluster_has_the_resources(cfg: Any) -> list[Problem]:
    """A private cluster smaller than the run would leave actors pending forever: its CPUs,
    and its GPUs where ``cluster.num_gpus`` says how many (unset: Ray counts them at start,
    and the driver's capacity check refuses a run that asks for more)."""
    from rayrlhf.cluster import stage_cpu_need, stage_gpu_need

    cluster = getattr(cfg, "cluster", None)
    if cluster is None or cluster.address is not None:
        return []
    problems: list[Problem] = []
    available = cluster.num_cpus
    if is_number(available) and available > 0:
        needed, what = stage_cpu_need(cfg)
        if needed > available:
            problems.append(("cluster.num_cpus", available,
                             f"the local Ray cluster needs at least {needed:g} CPUs for {what}; raise "
                             "cluster.num_cpus (logical CPUs may exceed the cores) or leave it unset"))
    gpus = cluster.num_gpus
    if is_number(gpus):
        needed, what = stage_gpu_need(cfg)
        if needed > gpus:
            problems.append(("cluster.num_gpus", gpus,
                             f"the local Ray cluster needs at least {needed:g} GPUs for {what}; "
                             "lower those or run on a machine with more GPUs"))
    return problems


def _missing(section: Any, prefix: str) -> list[Problem]:
    """Mandatory keys still ``???``: refused here, not when the stage first reads them (after
    Ray started and models loaded)."""
    if not isinstance(section, DictConfig):
        return []
    return [(prefix + str(key), "???", f"mandatory and not set: add {prefix}{key}=... to the command line")
            for key in section if OmegaConf.is_missing(section, key)]


def config_problems(cfg: Any) -> list[Problem]:
    """Every (key, value, why) that makes ``cfg`` impossible; [] when it can run."""
    problems: list[Problem] = []
    sections = list(_sections(cfg))
    for prefix, section in sections:
        problems += _missing(section, prefix)
        schema = _schema(section)
        for key, name, value in _leaves(section):
            if _nonfinite(value):
                problems.append((prefix + key, value, "must be a finite number"))
                continue
            if value is None or schema is None:  # None: an optional value left unset
                continue
            for check in field_checks(schema, name):
                why = check(value)
                if why is not None:
                    problems.append((prefix + key, value, why))
                    break
    bad_keys = {key for key, _, _ in problems}
    cross: list[Problem] = []  # only between fields that are fine on their own
    for prefix, section in sections:
        schema = _schema(section)
        if schema is not None and hasattr(schema, "checks"):
            cross += schema.checks(section, prefix)
    cross += _local_cluster_has_the_resources(cfg)
    return problems + [p for p in cross if p[0] not in bad_keys]


def validate_config(cfg: Any) -> None:
    """Raise :class:`ConfigValueError` naming every impossible value of a stage config (a
    composed DictConfig or its dataclass); return None when it can run."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigValueError(problems)
