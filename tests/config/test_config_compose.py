"""Every shipped config composes into its typed schema; bad keys and types are rejected."""

from __future__ import annotations

import shutil

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import MissingMandatoryValue

from rayrlhf import paths
from rayrlhf.cli import STAGES
from rayrlhf.config import SCHEMAS, compose_config, config_error_message, to_object

CONF = paths.conf_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Values a stage asks the user for on purpose (``???`` in its YAML).
REQUIRED = {"ppo_lag": ["reward=/models/reward", "cost=rule:rayrlhf.rewards.synthetic:forbidden_excess"]}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_config_composes_into_its_schema(stage):
    config_name = STAGES[stage].config_name
    cfg = compose_config(config_name, REQUIRED.get(config_name, []), output_dir="/tmp/out")
    obj = to_object(cfg)
    # The stage YAML names its schema first in its defaults list.
    first_default = yaml.safe_load((CONF / f"{config_name}.yaml").read_text())["defaults"][0]
    assert type(obj) is SCHEMAS[first_default]
    assert obj.run.output_dir == "/tmp/out"


@pytest.mark.parametrize("option", options("model"))
def test_every_model_option_composes(option):
    cfg = compose_config("sample", [f"model={option}"], output_dir="/tmp/out")
    if option == "hub":  # the hub option asks the user for an id on purpose
        with pytest.raises(MissingMandatoryValue):
            to_object(cfg)
        cfg = compose_config("sample", ["model=hub", "model.name_or_path=org/model"], output_dir="/tmp/o")
    assert to_object(cfg).model.name_or_path


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_option_composes(option, monkeypatch):
    monkeypatch.setenv("RAYRLHF_SHARED_DATA", "/data/shared")
    ds = to_object(compose_config("data_check", [f"dataset={option}"], output_dir="/tmp/o")).dataset
    assert ds.schema in ("preference", "pairwise", "prompt", "qa_classification", "sft")
    if option.startswith("shared_"):
        assert ds.source.startswith("/data/shared/") and ds.source.endswith(".json")


@pytest.mark.parametrize("option", options("cluster"))
def test_every_cluster_option_composes(option):
    cluster = to_object(compose_config("pipeline", [f"cluster={option}"], output_dir="/tmp/o")).cluster
    assert cluster.address in (None, "auto") or cluster.address.startswith("ray://")


def test_misspelled_override_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("sample", ["generation.max_new_tokns=3"])
    assert "max_new_tokns" in config_error_message(info.value)


def test_wrong_type_is_rejected_with_the_key_named():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("sample", ["generation.max_new_tokens=many"])
    message = config_error_message(info.value)
    assert "max_new_tokens" in message and "many" in message


def test_misspelled_key_inside_a_yaml_file_is_rejected(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    bad = conf / "model" / "tiny-llama.yaml"
    bad.write_text(bad.read_text() + "dtpye: float16\n")
    monkeypatch.setenv("RAYRLHF_CONF_DIR", str(conf))
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("sample", ["model=tiny-llama"])
    assert "dtpye" in config_error_message(info.value)


def test_overrides_reach_the_typed_config():
    obj = to_object(compose_config(
        "pipeline", ["model=tiny-llama", "template.name=safe_rlhf", "generation.max_new_tokens=5",
                     "prompts.limit=3", "dataset@sft=shared_alpaca_sample", "lagrange.threshold=0.5"],
        output_dir="/tmp/o"))
    assert obj.lagrange.threshold == 0.5
    assert obj.model.name_or_path == "tiny-llama" and obj.model.dtype == "float32"
    assert obj.template.name == "safe_rlhf"
    assert obj.generation.max_new_tokens == 5 and obj.prompts.limit == 3
    assert obj.sft.source.endswith("alpaca_sample.json")


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes(option):
    assert to_object(compose_config("ppo_lag", [f"+experiment={option}"], output_dir="/tmp/o")).steps > 0


def test_ppo_lag_without_judges_says_what_is_missing():
    with pytest.raises(MissingMandatoryValue, match="reward"):
        to_object(compose_config("ppo_lag", output_dir="/tmp/o"))


def test_smoke_profile_switches_the_pipeline_to_the_tiny_model():
    obj = to_object(compose_config("pipeline", ["+profile=smoke"], output_dir="/tmp/o"))
    assert obj.model.name_or_path == "tiny-llama" and obj.rollout.engine == "hf" and obj.ppo_steps == 3


@pytest.mark.parametrize("option", options("lagrange"))
def test_every_lagrange_option_instantiates_its_controller_with_every_argument(option):
    """A node of the lagrange group holds exactly its controller's constructor arguments
    (besides _target_, and per_category, which builds one such controller per constraint), so
    each can be set from the command line, and builds that controller from the composed config
    and from its typed form alike."""
    import inspect

    from hydra.utils import instantiate

    from rayrlhf.algorithms import LAGRANGE_CONTROLLERS
    from rayrlhf.trainers.ppo_lag import lagrange_from_config

    cfg = compose_config("ppo_lag", [*REQUIRED["ppo_lag"], f"lagrange={option}"], output_dir="/tmp/o")
    arguments_node = {key: cfg.lagrange[key] for key in cfg.lagrange if key != "per_category"}
    controller = instantiate(arguments_node)
    assert type(controller) in LAGRANGE_CONTROLLERS.values()
    arguments = set(inspect.signature(type(controller)).parameters)
    assert set(cfg.lagrange) - {"_target_", "per_category"} == arguments
    typed = lagrange_from_config(to_object(cfg).lagrange)
    assert typed.state_dict() == controller.state_dict() and typed.threshold == controller.threshold


def test_lagrange_overrides_reach_the_controller():
    from rayrlhf.trainers.ppo_lag import lagrange_from_config

    pid = lagrange_from_config(compose_config("ppo_lag", [*REQUIRED["ppo_lag"], "lagrange=pid", "lagrange.kp=0.5",
                                                          "lagrange.integral_max=2", "lagrange.threshold=-0.1",
                                                          "lagrange.derivative_ema_alpha=0.9"],
                                              output_dir="/tmp/o").lagrange)
    assert (pid.kp, pid.integral_max, pid.threshold, pid.derivative_ema_alpha) == (0.5, 2.0, -0.1, 0.9)
    # +experiment=synthetic picks the fast log-λ, and a lagrange=... choice replaces it whole.
    synthetic = compose_config("ppo_lag", ["+experiment=synthetic"], output_dir="/tmp/o")
    assert lagrange_from_config(synthetic.lagrange).value == 0.5
    plain = compose_config("ppo_lag", ["+experiment=synthetic", "lagrange=constant", "lagrange.value=0"],
                           output_dir="/tmp/o")
    assert lagrange_from_config(plain.lagrange).value == 0.0 and "lambda_lr" not in plain.lagrange


def test_an_unknown_lagrange_option_names_the_options():
    with pytest.raises(Exception) as info:
        compose_config("ppo_lag", [*REQUIRED["ppo_lag"], "lagrange=lagrangian"], output_dir="/tmp/o")
    message = config_error_message(info.value)
    assert "lagrange/lagrangian" in message
    assert all(option in message for option in options("lagrange"))


@pytest.mark.parametrize("option", options("lagrange"))
def test_per_category_builds_one_controller_of_the_chosen_kind_per_constraint(option):
    """lagrange.per_category with any controller: one controller of that kind per constraint,
    each with its own threshold and every other argument of the node."""
    from rayrlhf.algorithms import PerCategoryLagrange
    from rayrlhf.trainers.ppo_lag import constraint_groups, lagrange_from_config

    cfg = compose_config("ppo_lag", ["+experiment=synthetic_per_category", f"lagrange={option}",
                                     "lagrange.lambda_max=3" if option != "constant" else "lagrange.value=0.25"],
                         output_dir="/tmp/o")
    for node in (cfg.lagrange, to_object(cfg).lagrange):
        vector = lagrange_from_config(node)
        assert isinstance(vector, PerCategoryLagrange)
        assert vector.names == ["forbidden_a", "forbidden_b"] and vector.thresholds == [0.0, 0.3]
        assert {type(c).kind for c in vector.controllers.values()} == {option.removesuffix("_fast")}
        if option != "constant":
            assert [c.lambda_max for c in vector.controllers.values()] == [3.0, 3.0]
        else:
            assert vector.value == [0.25, 0.25]
    assert constraint_groups(to_object(cfg).lagrange) == {"forbidden_a": ["forbidden_a"], "forbidden_b": ["forbidden_b"]}


def test_per_category_names_are_checked_against_the_cost_source():
    from rayrlhf.config.validate import ConfigValueError, validate_config
    from rayrlhf.trainers.ppo_lag import constraint_groups

    # A moderation model's categories are BeaverTails' 14; a group's cost is its members' max.
    ok = compose_config("ppo_lag", [*REQUIRED["ppo_lag"], "cost=/models/moderation",
                                    '+lagrange.per_category.groups.violence=["violence,aiding_and_abetting,incitement",'
                                    '"terrorism,organized_crime"]',
                                    "+lagrange.per_category.thresholds.violence=-2",
                                    "+lagrange.per_category.thresholds.privacy_violation=-1"], output_dir="/tmp/o")
    validate_config(ok)
    assert constraint_groups(to_object(ok).lagrange) == {
        "violence": ["violence,aiding_and_abetting,incitement", "terrorism,organized_crime"],
        "privacy_violation": ["privacy_violation"]}
    bad = compose_config("ppo_lag", [*REQUIRED["ppo_lag"], "cost=/models/moderation",
                                     "+lagrange.per_category.thresholds.violense=0",
                                     "+lagrange.per_category.groups.orphan=[self_harm]"], output_dir="/tmp/o")
    with pytest.raises(ConfigValueError) as info:
        validate_config(bad)
    message = str(info.value)
    assert "lagrange.per_category.thresholds='violense': ['violense'] not among the categories" in message
    assert "animal_abuse" in message  # the 14 it may choose from
    assert "lagrange.per_category.groups.orphan=['self_harm']: has no threshold" in message
    # A rule names its own categories.
    rule = compose_config("ppo_lag", ["+experiment=synthetic_per_category",
                                      "+lagrange.per_category.thresholds.self_harm=0"], output_dir="/tmp/o")
    with pytest.raises(ConfigValueError, match="not among the categories of cost=rule:.*forbidden_a, forbidden_b"):
        validate_config(rule)
    scalar_rule = compose_config("ppo_lag", ["+experiment=synthetic", "+lagrange.per_category.thresholds.x=0"],
                                 output_dir="/tmp/o")
    with pytest.raises(ConfigValueError, match="names no categories"):
        validate_config(scalar_rule)
