"""Impossible config values fail before any worker starts, with every bad key named."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from rayrlhf.cli import STAGES
from rayrlhf.config import compose_config, to_object
from rayrlhf.config.validate import ConfigValueError, config_problems, validate_config

JUDGES = ["reward=rule:rayrlhf.rewards.synthetic:rewarded_share",
          "cost=rule:rayrlhf.rewards.synthetic:forbidden_excess"]
REQUIRED = {"ppo_lag": JUDGES}


@functools.lru_cache(maxsize=None)
def _composed(stage_config: str, overrides: tuple[str, ...] = ()):
    return compose_config(stage_config, REQUIRED.get(stage_config, []) + list(overrides),
                          output_dir="/tmp/rayrlhf-validate-test")


def _chooses_a_group(override: str) -> bool:
    return override.startswith("+") or override.split("=", 1)[0] in ("lagrange",)


def compose(stage_config: str, overrides: list[str] | None = None):
    """The stage's config with ``key=value`` overrides merged in (the schema checks their
    types as Hydra does); composing each stage once keeps these tests quick. Overrides that
    choose a config group option are composed by Hydra."""
    plain = [o for o in overrides or [] if not _chooses_a_group(o)]
    base = _composed(stage_config, tuple(o for o in overrides or [] if _chooses_a_group(o)))
    return OmegaConf.merge(base, OmegaConf.from_dotlist(plain)) if plain else base.copy()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_default_config_is_valid(stage):
    config_name = STAGES[stage].config_name
    cfg = compose(config_name)
    assert config_problems(cfg) == []
    validate_config(to_object(cfg))  # the typed dataclass form too


@pytest.mark.parametrize(("stage", "overrides"), [
    ("ppo_lag", ["+experiment=synthetic"]),
    ("pipeline", ["+profile=smoke"]),
    ("ppo_lag", ["resources.policy_ranks=2", "resources.critic_ranks=2", "rollout.num_engines=2"]),
    ("eval", ["num_prompts=0", "judge.temperature=0"]),
    ("ppo_lag", ["lagrange=pid", "lagrange.lambda_init=0"]),
    ("ppo_lag", ["lagrange=pid", "lagrange.integral_max=0", "lagrange.derivative_ema_alpha=0.9"]),
    ("ppo_lag", ["lagrange=constant", "lagrange.value=0"]),
    ("ppo_lag", ["cluster.num_cpus=8"]),  # the defaults reserve 4.5 CPUs
])
def test_shipped_presets_and_edge_values_are_valid(stage, overrides):
    assert config_problems(compose(stage, overrides)) == []


# (stage, override, the key the message must name, what it must say)
BAD = [
    ("ppo_lag", "ppo.actor_lr=-1e-5", "ppo.actor_lr=-1e-05", "must be > 0"),
    ("ppo_lag", "ppo.critic_lr=0", "ppo.critic_lr=0.0", "must be > 0"),
    ("train_reward", "training.lr=-1", "training.lr=-1.0", "must be > 0"),
    ("pipeline", "score_training.lr=0", "score_training.lr=0.0", "must be > 0"),
    ("ppo_lag", "lagrange.threshold=nan", "lagrange.threshold=nan", "finite"),
    ("ppo_lag", "lagrange.lambda_lr=inf", "lagrange.lambda_lr=inf", "finite"),
    ("ppo_lag", "ppo.kl_coef=-inf", "ppo.kl_coef=-inf", "finite"),
    ("ppo_lag", "ppo.clip_ratio=0", "ppo.clip_ratio=0.0", "must be > 0"),
    ("ppo_lag", "rollout.threads_per_engine=0", "rollout.threads_per_engine=0", "must be >= 1"),
    ("ppo_lag", "faults.nonfinite=ignore", "faults.nonfinite='ignore'", "must be one of skip, stop"),
    ("ppo_lag", "faults.max_restarts=-1", "faults.max_restarts=-1", "must be >= 0"),
    ("ppo_lag", "ppo.clip_range_value=-1", "ppo.clip_range_value=-1.0", "must be > 0"),
    ("ppo_lag", "ppo.clip_range_score=0", "ppo.clip_range_score=0.0", "must be > 0"),
    ("ppo_lag", "ppo.gamma=1.5", "ppo.gamma=1.5", "[0, 1]"),
    ("ppo_lag", "ppo.gae_lambda=-0.1", "ppo.gae_lambda=-0.1", "[0, 1]"),
    ("ppo_lag", "rollout.top_p=0", "rollout.top_p=0.0", "(0, 1]"),
    ("sample", "generation.top_p=1.5", "generation.top_p=1.5", "(0, 1]"),
    ("ppo_lag", "rollout.temperature=0", "rollout.temperature=0.0", "must be > 0"),
    ("sample", "generation.temperature=-1", "generation.temperature=-1.0", "must be > 0"),
    ("ppo_lag", "resources.policy_ranks=0", "resources.policy_ranks=0", "must be >= 1"),
    ("ppo_lag", "resources.critic_ranks=-2", "resources.critic_ranks=-2", "must be >= 1"),
    ("ppo_lag", "rollout.num_engines=0", "rollout.num_engines=0", "must be >= 1"),
    ("ppo_lag", "steps=0", "steps=0", "must be >= 1"),
    ("ppo_lag", "ppo.minibatch_size=0", "ppo.minibatch_size=0", "must be >= 1"),
    ("ppo_lag", "rollout.prompts_per_step=0", "rollout.prompts_per_step=0", "must be >= 1"),
    ("ppo_lag", "resources.cpus_per_worker=0", "resources.cpus_per_worker=0.0", "must be > 0"),
    ("train_reward", "training.per_device_batch_size=0", "training.per_device_batch_size=0", ">= 1"),
    ("train_reward", "training.num_workers=0", "training.num_workers=0", "must be >= 1"),
    ("train_reward", "training.save_every=0", "training.save_every=0", "must be >= 1"),
    ("train_reward", "training.warmup_ratio=1.5", "training.warmup_ratio=1.5", "[0, 1]"),
    ("train_reward", "training.zero_stage=4", "training.zero_stage=4", "one of 0, 1, 2, 3"),
    ("train_reward", "eval_fraction=1.0", "eval_fraction=1.0", "[0, 1)"),
    ("pipeline", "eval_fraction=-0.1", "eval_fraction=-0.1", "[0, 1)"),
    ("data_check", "dataset.max_chars=0", "dataset.max_chars=0", "must be >= 1"),
    ("data_check", "dataset.limit=0", "dataset.limit=0", "must be >= 1"),
    ("ppo_lag", "lagrange._target_=os.system", "lagrange._target_='os.system'", "LogLambdaController, "),
    ("ppo_lag", "rollout.engine=tgi", "rollout.engine='tgi'", "vllm, hf"),
    ("pipeline", "eval_engine=tgi", "eval_engine='tgi'", "vllm, hf"),
    ("ppo_lag", "rollout.placement=pack", "rollout.placement='pack'", "default, spread"),
    ("ppo_lag", "rollout.sync_path=nccl", "rollout.sync_path='nccl'", "object_store, collective"),
    ("ppo_lag", "rollout.sync_timeout_s=0", "rollout.sync_timeout_s=0.0", "must be > 0"),
    ("train_reward", "training.lr_scheduler=step", "training.lr_scheduler='step'", "cosine, linear"),
    ("sample", "template.name=alpaca", "template.name='alpaca'", "chat, safe_rlhf"),
    ("train_reward", "kind=judge", "kind='judge'", "reward, cost, moderation"),
    ("pipeline", "score_models=[reward,judge]", "score_models=['reward', 'judge']", "unknown ['judge']"),
    ("data_check", "dataset.schema=rows", "dataset.schema='rows'", "preference, prompt"),
    ("sample", "model.dtype=int8", "model.dtype='int8'", "auto, float32"),
    ("serve", "moderation_threshold=1", "moderation_threshold=1.0", "(0, 1)"),
    ("serve", "port=0", "port=0", "[1, 65535]"),
    ("serve", "max_items=0", "max_items=0", "must be >= 1"),
    ("sample", "run.seed=-1", "run.seed=-1", "[0, 4.29497e+09]"),
    ("ppo_lag", "faults.nonfinite=ignore", "faults.nonfinite='ignore'", "skip, stop"),
    ("ppo_lag", "lagrange.window=0", "lagrange.window=0", "must be >= 1"),
    # rules across fields
    ("ppo_lag", "lagrange.lambda_init=0", "lagrange.lambda_init=0.0", "lagrange=log_lambda"),
    ("ppo_lag", "lagrange.lambda_max=0.5", "lagrange.lambda_max=0.5", ">= lagrange.lambda_init=1.0"),
    ("ppo_lag", "rollout.max_model_len=100", "rollout.max_model_len=100", "max_new_tokens = 320"),
]
# Options of the lagrange group with a bad value of their own: (options, key, what it must say).
BAD_CONTROLLER = [
    (["lagrange=pid", "lagrange.kp=-1"], "lagrange.kp=-1.0", "must be >= 0"),
    (["lagrange=pid", "lagrange.derivative_ema_alpha=1"], "lagrange.derivative_ema_alpha=1.0", "[0, 1)"),
    (["lagrange=pid", "lagrange.integral_max=-2"], "lagrange.integral_max=-2.0", "must be >= 0"),
    (["lagrange=pid", "lagrange.lambda_max=0.5"], "lagrange.lambda_max=0.5", ">= lagrange.lambda_init=1.0"),
    (["lagrange=constant", "lagrange.value=-0.1"], "lagrange.value=-0.1", "must be >= 0"),
    (["lagrange=constant", "lagrange.threshold=inf"], "lagrange.threshold=inf", "finite"),
]


@pytest.mark.parametrize(("stage", "override", "key", "says"), BAD, ids=[b[1] for b in BAD])
def test_each_rule_names_the_key_its_value_and_why(stage, override, key, says):
    with pytest.raises(ConfigValueError) as info:
        validate_config(compose(stage, [override]))
    message = str(info.value)
    assert f"{key}: " in message and says in message, message
    assert len(info.value.problems) == 1, message


@pytest.mark.parametrize(("overrides", "key", "says"), BAD_CONTROLLER, ids=[" ".join(b[0]) for b in BAD_CONTROLLER])
def test_each_controllers_rules_name_the_key(overrides, key, says):
    with pytest.raises(ConfigValueError) as info:
        validate_config(compose("ppo_lag", overrides))
    message = str(info.value)
    assert f"{key}: " in message and says in message, message
    assert len(info.value.problems) == 1, message


def test_every_problem_is_listed_at_once():
    cfg = compose("ppo_lag", ["ppo.actor_lr=-1e-5", "lagrange.threshold=nan", "rollout.top_p=1.5",
                              "lagrange.window=0", "steps=0"])
    with pytest.raises(ConfigValueError) as info:
        validate_config(cfg)
    keys = [key for key, _, _ in info.value.problems]
    assert sorted(keys) == ["lagrange.threshold", "lagrange.window", "ppo.actor_lr", "rollout.top_p", "steps"]
    assert str(info.value).startswith("5 invalid config value(s):")
    assert math.isnan(dict((k, v) for k, v, _ in info.value.problems)["lagrange.threshold"])


def test_prompts_must_split_evenly_over_the_data_parallel_ranks():
    cfg = compose("ppo_lag", ["rollout.prompts_per_step=15", "resources.policy_ranks=2",
                              "resources.critic_ranks=3"])
    problems = config_problems(cfg)
    assert [(k, v) for k, v, _ in problems] == [("rollout.prompts_per_step", 15)]
    assert "multiple of resources.policy_ranks=2" in problems[0][2]
    assert config_problems(compose("ppo_lag", ["rollout.prompts_per_step=18", "resources.policy_ranks=2",
                                               "resources.critic_ranks=3"])) == []


def test_zero3_refuses_lora_and_needs_ptx_rows_on_every_rank():
    """Under ZeRO-3 whole weights exist only while gathered: LoRA's merge and adapters-off
    reference read them whole, and every forward pass needs every policy rank."""
    problems = config_problems(compose("ppo_lag", ["ppo.zero_stage=3", "ppo.lora.enabled=true"]))
    assert [(k, v) for k, v, _ in problems] == [("ppo.zero_stage", 3)]
    assert "LoRA (ppo.lora.enabled=true) does not run under ZeRO-3" in problems[0][2]
    ptx = ["+dataset@ptx=demo_sft", "ppo.ptx_coef=1.0", "ppo.ptx_rows_per_step=1", "resources.policy_ranks=2",
           "rollout.prompts_per_step=16"]
    problems = config_problems(compose("ppo_lag", ptx + ["ppo.zero_stage=3"]))
    assert [(k, v) for k, v, _ in problems] == [("ppo.ptx_rows_per_step", 1)]
    assert config_problems(compose("ppo_lag", ptx + ["ppo.zero_stage=2"])) == []
    assert config_problems(compose("ppo_lag", ["ppo.zero_stage=3", "resources.policy_ranks=2"])) == []


@pytest.mark.parametrize(("stage", "overrides", "needed"), [
    # 1 policy + 1 shared critic x 1 CPU (frozen models ride with them), 4 engines x 1
    # (cluster.required_cpus)
    ("ppo_lag", ["rollout.num_engines=4"], 6),
    ("train_reward", ["training.num_workers=3"], 3),
    ("serve", ["num_cpus=4"], 4),
    ("pipeline", ["score_training.num_workers=6"], 6),
])
def test_more_actors_than_the_local_cluster_has_cpus_fails(stage, overrides, needed):
    with pytest.raises(ConfigValueError) as info:
        validate_config(compose(stage, [*overrides, "cluster.num_cpus=2"]))
    assert f"cluster.num_cpus=2: the local Ray cluster needs at least {needed:g} CPUs" in str(info.value)
    # The same run on a cluster it joins (not a private local one) is not sized here.
    assert config_problems(compose(stage, [*overrides, "cluster.num_cpus=2", "cluster.address=auto"])) == []


def test_pipeline_sub_configs_of_a_valid_pipeline_are_valid():
    """The pipeline validates once, at the top; what it derives for each stage stays valid."""
    from rayrlhf.stages.pipeline import ppo_lag_config, score_model_config

    cfg = compose("pipeline", ["+profile=smoke", "cluster.num_cpus=16"])
    assert config_problems(cfg) == []
    for kind in ("reward", "cost", "moderation"):
        assert config_problems(score_model_config(cfg, kind, "/tmp/o")) == []
    assert config_problems(ppo_lag_config(cfg, "rule:a:b", "rule:a:c", "/tmp/o")) == []
    # and a bad pipeline value is caught at the top, under the pipeline's own key
    with pytest.raises(ConfigValueError, match=r"ppo\.actor_lr=-1\.0: must be > 0"):
        validate_config(compose("pipeline", ["ppo.actor_lr=-1"]))


# (stage, key, the consumer's own constant of the values it accepts)
def _consumer_choices():
    from rayrlhf.algorithms import LAGRANGE_CONTROLLERS
    from rayrlhf.algorithms.schedules import LR_SCHEDULES
    from rayrlhf.cluster import ROLLOUT_PLACEMENTS
    from rayrlhf.data import SCHEMA_TYPES, TEMPLATES
    from rayrlhf.faults import NONFINITE_POLICIES
    from rayrlhf.models.score_model import JUDGE_KINDS
    from rayrlhf.models.zoo import DTYPES
    from rayrlhf.rollout import ENGINE_KINDS

    targets = [f"{cls.__module__}.{cls.__qualname__}" for cls in LAGRANGE_CONTROLLERS.values()]
    return [("ppo_lag", "rollout.engine", ENGINE_KINDS), ("pipeline", "eval_engine", ENGINE_KINDS),
            ("ppo_lag", "rollout.placement", ROLLOUT_PLACEMENTS), ("ppo_lag", "faults.nonfinite", NONFINITE_POLICIES),
            ("ppo_lag", "lagrange._target_", targets), ("sample", "template.name", TEMPLATES),
            ("data_check", "dataset.schema", SCHEMA_TYPES), ("sample", "model.dtype", ["auto", *DTYPES]),
            ("train_reward", "training.lr_scheduler", LR_SCHEDULES), ("train_reward", "kind", JUDGE_KINDS)]


def test_choices_are_the_constants_of_the_code_that_consumes_them():
    """Every value the consumer knows passes; anything else fails, naming the consumer's choices."""
    for stage, key, choices in _consumer_choices():
        for choice in choices:
            assert config_problems(compose(stage, [f"{key}={choice}"])) == [], (key, choice)
        (problem,) = config_problems(compose(stage, [f"{key}=not-a-choice"]))
        assert problem[0] == key and all(str(choice) in problem[2] for choice in choices), problem
    # The consumers accept them all, too.
    from rayrlhf.algorithms.schedules import LR_SCHEDULES, lr_multiplier
    from rayrlhf.cluster import ROLLOUT_PLACEMENTS, rollout_placement_options

    for schedule in LR_SCHEDULES:
        lr_multiplier(1, 10, 1, schedule)
    for placement in ROLLOUT_PLACEMENTS:
        rollout_placement_options(placement)


def test_cli_fails_fast_before_ray_starts_naming_the_key(tmp_path):
    # The stage module (torch, ray) is imported before the clock starts: its import time on a
    # busy shared machine is not what is measured; composing, checking and failing is.
    script = textwrap.dedent(f"""
        import time
        import rayrlhf.trainers.ppo_lag
        from rayrlhf.cli import main
        start = time.perf_counter()
        try:
            main(["ppo-lag", *{JUDGES!r}, "ppo.actor_lr=-1"])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        elapsed = time.perf_counter() - start
        import ray
        print("RESULT", code, ray.is_initialized(), round(elapsed, 2))
    """)
    env = {**os.environ, "RAYRLHF_RUNS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert result, proc.stdout + proc.stderr
    _, code, ray_started, elapsed = result[0].split()
    assert code != "0" and ray_started == "False"
    assert "ppo.actor_lr=-1.0: must be > 0" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert float(elapsed) < 5, f"the stage took {elapsed} s to refuse its config"


@pytest.mark.parametrize(("overrides", "key", "why"), [
    # Tensor parallelism shards a vLLM engine over GPUs.
    (["rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size", "needs resources.use_gpu=true"),
    (["rollout.tensor_parallel_size=2", "rollout.engine=hf", "resources.use_gpu=true"],
     "rollout.tensor_parallel_size", "needs rollout.engine=vllm"),
    (["rollout.tensor_parallel_size=2", "resources.use_gpu=true", "resources.layout=colocate"],
     "rollout.tensor_parallel_size", "use layout=separate"),
    (["rollout.sleep_mode=true"], "rollout.sleep_mode", "needs resources.use_gpu=true"),
    (["rollout.engine=hf", "rollout.enforce_eager=false"], "rollout.enforce_eager", "needs rollout.engine=vllm"),
    (["rollout.gpu_memory_utilization=1.5"], "rollout.gpu_memory_utilization", "must be in (0, 1]"),
    (["rollout.tensor_parallel_size=0"], "rollout.tensor_parallel_size", "must be >= 1"),
    (["resources.layout=hybrid"], "resources.layout", "must be one of separate, colocate"),
    (["resources.placement_strategy=pack"], "resources.placement_strategy",
     "must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"),
    (["resources.placement_timeout_s=0"], "resources.placement_timeout_s", "must be > 0"),
    (["resources.layout=colocate", "rollout.placement=spread"], "rollout.placement", "use rollout.placement=default"),
    (["+resources.custom_resources.H100=0"], "resources.custom_resources.H100", "must be a number > 0"),
])
def test_gpu_rollout_and_placement_values_that_cannot_work_are_named(overrides, key, why):
    problems = config_problems(compose("ppo_lag", overrides))
    assert [(k, why in w) for k, _, w in problems] == [(key, True)], problems


def test_tensor_parallel_engines_must_fit_the_local_clusters_gpus():
    """TP x engines GPUs, beside one per trainer rank: 2 engines x TP 2 + policy + critic = 6."""
    gpu_run = ["resources.use_gpu=true", "rollout.num_engines=2", "rollout.tensor_parallel_size=2"]
    with pytest.raises(ConfigValueError) as info:
        validate_config(compose("ppo_lag", [*gpu_run, "cluster.num_gpus=4"]))
    assert "cluster.num_gpus=4: the local Ray cluster needs at least 6 GPUs" in str(info.value)
    assert "rollout.tensor_parallel_size per engine" in str(info.value)
    assert config_problems(compose("ppo_lag", [*gpu_run, "cluster.num_gpus=6"])) == []
    # colocate: one shared GPU per rank/engine index, TP 1: 2 GPUs for the same roles.
    colocated = ["resources.use_gpu=true", "rollout.num_engines=2", "resources.layout=colocate"]
    assert config_problems(compose("ppo_lag", [*colocated, "cluster.num_gpus=2"])) == []
    # A cluster it joins is not sized here (the driver checks it against Ray's own count).
    assert config_problems(compose("ppo_lag", [*gpu_run, "cluster.num_gpus=4", "cluster.address=auto"])) == []


def test_gpu_knobs_are_fine_where_they_apply():
    assert config_problems(compose("ppo_lag", [
        "resources.use_gpu=true", "rollout.tensor_parallel_size=2", "rollout.gpu_memory_utilization=0.7",
        "rollout.enforce_eager=true", "rollout.sleep_mode=false", "resources.placement_strategy=STRICT_PACK"])) == []
    assert config_problems(compose("ppo_lag", ["resources.use_gpu=true", "resources.layout=colocate",
                                               "rollout.sleep_mode=true"])) == []
