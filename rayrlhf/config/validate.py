"""Impossible config values, found before any worker starts, every bad key named at once.

Hydra and the dataclass schemas catch misspelled keys and wrong types; this catches values of
the right type that cannot work: a negative learning rate, ``lagrange.threshold=nan``, a
``top_p`` of 2, zero rollout engines, an unknown ``lagrange.kind``, or more actors than the local
Ray cluster has CPUs (which would leave them pending forever instead of failing).

One table, :data:`RULES`, holds a rule per field name, applied wherever that field occurs in
any stage's config (``ppo.actor_lr``, ``score_training.lr`` ...); a name that means different
things in different sections is qualified by its section's schema class
(``TrainingConfig.save_every``). Every float anywhere must be finite. Rules that tie several
fields together are the functions in :data:`CROSS_RULES`. ``validate_config`` is pure: it
reads the config and raises :class:`ConfigValueError` listing every problem, one per line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigValueError(ValueError):
    """Config values that cannot work; ``problems`` holds (key, value, why) for each."""

    def __init__(self, problems: Sequence[tuple[str, Any, str]]) -> None:
        self.problems = list(problems)
        lines = [f"{key}={value!r}: {why}" for key, value, why in self.problems]
        super().__init__(f"{len(lines)} invalid config value(s):\n  " + "\n  ".join(lines))


# A check takes a value and returns None when it is fine, else why it is not.
Check = Callable[[Any], Optional[str]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def greater(bound: float) -> Check:
    return lambda v: None if not _number(v) or v > bound else f"must be > {bound:g}"


def at_least(bound: float) -> Check:
    return lambda v: None if not _number(v) or v >= bound else f"must be >= {bound:g}"


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not _number(v):
            return None
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        if above and below:
            return None
        return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return check


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def each_one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        bad = [item for item in (v or []) if item not in choices]
        return f"unknown {bad}; choose from {', '.join(choices)}" if bad else None
    return check


COUNT = at_least(1)  # ranks, engines, steps, batch sizes, token budgets
POSITIVE = greater(0)
NON_NEGATIVE = at_least(0)
UNIT = within(0, 1)
PROBABILITY_OPEN = within(0, 1, low_open=True, high_open=True)

# Choices, each matching the code that consumes the value (tests check they agree with the
# constants where the code has one: rollout.ENGINE_KINDS, data.TEMPLATES, data.SCHEMA_TYPES,
# models.zoo.DTYPES, trainers.faults.NONFINITE_POLICIES).
ENGINES = ("vllm", "hf")
TEMPLATE_NAMES = ("chat", "safe_rlhf")
DATA_SCHEMAS = ("preference", "prompt", "qa_classification", "sft")
DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
LAGRANGE_KINDS = ("log_lambda", "pid", "constant")  # ppo_lag.lagrange_from_config
PLACEMENTS = ("default", "spread")  # ppo_lag.rollout_placement_options
LR_SCHEDULERS = ("cosine", "linear", "constant")  # score_trainer.lr_multiplier
SCORE_KINDS = ("reward", "cost", "moderation")
NONFINITE_POLICIES = ("skip", "stop")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Field name (or SchemaClass.field where one name means different things) -> its rule.
RULES: dict[str, Check] = {
    # learning rates and optimisation
    "lr": POSITIVE, "actor_lr": POSITIVE, "critic_lr": POSITIVE, "lambda_lr": POSITIVE,
    "weight_decay": NON_NEGATIVE, "max_grad_norm": POSITIVE, "warmup_ratio": UNIT,
    "lr_scheduler": one_of(*LR_SCHEDULERS), "zero_stage": one_of(0, 1, 2, 3),
    # PPO
    "clip_ratio": POSITIVE, "clip_range_value": POSITIVE, "clip_range_score": POSITIVE,
    "kl_coef": NON_NEGATIVE, "entropy_coef": NON_NEGATIVE, "score_l2_coef": NON_NEGATIVE,
    "gamma": UNIT, "gae_lambda": UNIT,
    # the Lagrange multiplier (threshold may be any finite number)
    "LagrangeConfig.kind": one_of(*LAGRANGE_KINDS), "lambda_init": NON_NEGATIVE,
    "lambda_max": POSITIVE, "update_delay": NON_NEGATIVE, "window": COUNT,
    "kp": NON_NEGATIVE, "ki": NON_NEGATIVE, "kd": NON_NEGATIVE, "LagrangeConfig.value": NON_NEGATIVE,
    # sampling
    "temperature": NON_NEGATIVE,  # 0 = greedy where a value is only passed through (LLM judge)
    "RolloutConfig.temperature": POSITIVE, "GenerationConfig.temperature": POSITIVE,
    "top_p": within(0, 1, low_open=True),
    "engine": one_of(*ENGINES), "eval_engine": one_of(*ENGINES),
    "RolloutConfig.placement": one_of(*PLACEMENTS),
    # counts
    "num_engines": COUNT, "prompts_per_step": COUNT, "minibatch_size": COUNT, "epochs": COUNT,
    "policy_ranks": COUNT, "critic_ranks": COUNT, "steps": COUNT, "num_workers": COUNT,
    "per_device_batch_size": COUNT, "gradient_accumulation_steps": COUNT, "batch_size": COUNT,
    "max_new_tokens": COUNT, "max_prompt_tokens": COUNT, "max_model_len": COUNT,
    "max_length": COUNT, "kv_cache_gib": COUNT, "max_items": COUNT, "max_chars": COUNT,
    "max_batch_size": COUNT, "limit": COUNT, "max_steps": COUNT, "stop_at_step": COUNT,
    "threads_per_worker": COUNT, "threads_per_engine": COUNT, "num_heldout_harmful": NON_NEGATIVE, "trainable_layers": NON_NEGATIVE, "samples_per_prompt": COUNT,
    "heldout_fraction": within(0, 1, high_open=True), "moderation_max_false_positive_rate": UNIT, "last_k": COUNT,
    "max_concurrency": COUNT, "max_consecutive_skips": COUNT,
    "num_prompts": NON_NEGATIVE, "SampleConfig.num_prompts": COUNT,  # eval: 0 = every prompt
    "ppo_steps": NON_NEGATIVE, "save_every": NON_NEGATIVE,  # ppo-lag: 0 = only at the end
    "max_restarts": NON_NEGATIVE, "max_retries": NON_NEGATIVE,
    # score training divides by these (step % every)
    "TrainingConfig.save_every": COUNT, "TrainingConfig.eval_every": COUNT,
    "TrainingConfig.log_every": COUNT,
    # resources
    "num_cpus": POSITIVE, "num_gpus": NON_NEGATIVE, "cpus_per_worker": POSITIVE,
    "cpus_per_frozen_worker": POSITIVE, "cpus_per_engine": POSITIVE,
    "batch_wait_timeout_s": NON_NEGATIVE, "timeout_s": POSITIVE, "port": within(1, 65535),
    # fractions and thresholds
    "eval_fraction": within(0, 1, high_open=True), "moderation_threshold": PROBABILITY_OPEN,
    "seed": within(0, 2**32 - 1),  # numpy's seed range
    # names
    "TemplateConfig.name": one_of(*TEMPLATE_NAMES), "schema": one_of(*DATA_SCHEMAS),
    "dtype": one_of(*DTYPE_NAMES), "ScoreTrainConfig.kind": one_of(*SCORE_KINDS),
    "score_models": each_one_of(*SCORE_KINDS), "nonfinite": one_of(*NONFINITE_POLICIES),
    "log_level": one_of(*LOG_LEVELS),
}


# --- walking a config ------------------------------------------------------------------


def _section_type(node: Any) -> str | None:
    if isinstance(node, DictConfig):
        kind = OmegaConf.get_type(node)
        return kind.__name__ if kind is not None and kind is not dict else None
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return type(node).__name__
    return None


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of a config section; keys still ``???`` or unresolvable are left out (they
    fail on their own, with Hydra's message, where the stage reads them)."""
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


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, str | None, str, Any]]:
    """(dotted key, section schema class, field name, value) of every leaf; a list is one leaf."""
    section = _section_type(node)
    for key, value in _children(node):
        path = f"{prefix}{key}"
        if _is_section(value):
            yield from _leaves(value, path + ".")
        else:
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            yield path, section, key, value


def _nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(item) for item in value)
    return False


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, DictConfig):
            if part not in node or OmegaConf.is_missing(node, part):
                return default
            node = node[part]
        elif isinstance(node, Mapping):
            node = node.get(part, default)
        else:
            node = getattr(node, part, default)
        if node is None:
            return default
    return node


def _has(cfg: Any, *dotted: str) -> bool:
    return all(_get(cfg, key) is not None for key in dotted)


# --- rules across fields ---------------------------------------------------------------

Problem = tuple[str, Any, str]


def _ranks_split_the_step(cfg: Any) -> list[Problem]:
    """Each data-parallel rank must take the same number of mini-batch steps (every step is
    a collective), so a step's prompts must split evenly over the ranks of each role."""
    if not _has(cfg, "rollout.prompts_per_step", "resources.policy_ranks", "resources.critic_ranks"):
        return []
    prompts = _get(cfg, "rollout.prompts_per_step")
    problems = []
    for role in ("policy_ranks", "critic_ranks"):
        ranks = _get(cfg, f"resources.{role}")
        if _number(prompts) and _number(ranks) and ranks >= 1 and prompts % ranks:
            problems.append(("rollout.prompts_per_step", prompts,
                             f"must be a multiple of resources.{role}={ranks} (every rank takes "
                             "an equal share of a step's rows)"))
    return problems


def _lambda_bounds(cfg: Any) -> list[Problem]:
    if not _has(cfg, "lagrange.kind"):
        return []
    kind, init, cap = (_get(cfg, f"lagrange.{k}") for k in ("kind", "lambda_init", "lambda_max"))
    problems = []
    if kind == "log_lambda" and _number(init) and init <= 0:
        problems.append(("lagrange.lambda_init", init, "must be > 0 for lagrange.kind=log_lambda "
                                                       "(λ is kept as ln λ)"))
    if kind != "constant" and _number(init) and _number(cap) and cap < init:
        problems.append(("lagrange.lambda_max", cap, f"must be >= lagrange.lambda_init={init}"))
    return problems


def _vllm_context_fits(cfg: Any) -> list[Problem]:
    if _get(cfg, "rollout.engine") != "vllm" or not _has(cfg, "rollout.max_model_len"):
        return []
    prompt, new, limit = (_get(cfg, f"rollout.{k}") for k in ("max_prompt_tokens", "max_new_tokens",
                                                              "max_model_len"))
    if all(_number(v) for v in (prompt, new, limit)) and prompt + new > limit:
        return [("rollout.max_model_len", limit, f"must be >= rollout.max_prompt_tokens + "
                                                 f"rollout.max_new_tokens = {prompt + new} (vLLM)")]
    return []


def required_cpus(cfg: Any) -> tuple[float, str]:
    """The most logical CPUs the stage's actors hold at once, and what asks for them."""
    needs: list[tuple[float, str]] = []
    if _has(cfg, "rollout", "resources"):
        from rayrlhf.trainers.ppo_lag import required_cpus as ppo_lag_cpus

        needs.append((ppo_lag_cpus(cfg), "the PPO-Lag actors (resources.*, rollout.num_engines x "
                                         "rollout.cpus_per_engine)"))
    for section in ("training", "score_training", "sft_training"):
        workers, each = _get(cfg, f"{section}.num_workers"), _get(cfg, f"{section}.cpus_per_worker")
        if _number(workers) and _number(each):
            needs.append((workers * each, f"{section}.num_workers x {section}.cpus_per_worker"))
    if _number(_get(cfg, "num_cpus")):  # serve: the replica's reservation
        needs.append((_get(cfg, "num_cpus"), "the Serve replica (num_cpus)"))
    return max(needs, default=(0.0, "nothing"), key=lambda need: need[0])


def _local_cluster_has_the_cpus(cfg: Any) -> list[Problem]:
    """A private cluster smaller than the run would leave actors pending forever."""
    if _get(cfg, "cluster") is None or _get(cfg, "cluster.address") is not None:
        return []
    available = _get(cfg, "cluster.num_cpus")
    if not _number(available) or available <= 0:
        return []
    needed, what = required_cpus(cfg)
    if needed > available:
        return [("cluster.num_cpus", available,
                 f"the local Ray cluster needs at least {needed:g} CPUs for {what}; raise "
                 "cluster.num_cpus (logical CPUs may exceed the cores) or leave it unset")]
    return []


CROSS_RULES: tuple[Callable[[Any], list[Problem]], ...] = (
    _ranks_split_the_step, _lambda_bounds, _vllm_context_fits, _local_cluster_has_the_cpus,
)


def config_problems(cfg: Any) -> list[Problem]:
    """Every (key, value, why) that makes ``cfg`` impossible; [] when it can run."""
    problems: list[Problem] = []
    for path, section, name, value in _leaves(cfg):
        if _nonfinite(value):
            problems.append((path, value, "must be a finite number"))
            continue
        rule = RULES.get(f"{section}.{name}") or RULES.get(name)
        if rule is None or value is None:  # None: an optional value left unset
            continue
        why = rule(value)
        if why is not None:
            problems.append((path, value, why))
    bad_keys = {key for key, _, _ in problems}
    for cross in CROSS_RULES:  # only between fields that are fine on their own
        problems += [p for p in cross(cfg) if p[0] not in bad_keys]
    return problems


def validate_config(cfg: Any) -> None:
    """Raise :class:`ConfigValueError` naming every impossible value of a stage config (a
    composed DictConfig or its dataclass); return None when it can run."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigValueError(problems)
