"""The run's placement group, computed from the config (``rayrlhf.cluster.plan_placement``):
which bundles each layout asks Ray for and where each role's actors sit, counted by hand."""

from __future__ import annotations

import pytest

from rayrlhf.cluster import (
    Demand, PlacementPlan, Slot, capacity_problems, describe_shortfall, node_shortfall, placement_plan, plan_placement,
    required_cpus, required_resources, shortfall,
)
from rayrlhf.config import compose_config


def config(*overrides):
    return compose_config("ppo_lag", ["+experiment=synthetic", *overrides], output_dir="/tmp/o")


GPU_RUN = ("resources.use_gpu=true", "resources.policy_ranks=2", "resources.critic_ranks=2",
           "rollout.prompts_per_step=16", "rollout.num_engines=2", "rollout.engine=vllm")


def test_default_layout_gives_every_actor_a_bundle_of_what_it_asks_today():
    plan = placement_plan(config())
    # policy 1 CPU, shared critic 1 CPU, one engine 1 CPU; the frozen models ride in the trainers.
    assert plan.layout == "separate" and plan.strategy == "PACK"
    assert plan.bundles == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert plan.slots == {"policy": [Slot(0, 1.0, 0.0)], "critic": [Slot(1, 1.0, 0.0)],
                          "rollout": [Slot(2, 1.0, 0.0)]}
    assert required_resources(config()) == {"CPU": 3.0} and required_cpus(config()) == 3.0


def test_separate_gpu_run_counts_ranks_frozen_shares_and_tensor_parallel_engines():
    cfg = config(*GPU_RUN, "ppo.critic_layout=separate", "resources.frozen_placement=own_actors",
                 "rollout.tensor_parallel_size=2", "+resources.custom_resources.H100=1")
    plan = placement_plan(cfg)
    trainer = {"CPU": 1.0, "GPU": 1.0, "H100": 1.0}
    frozen = {"CPU": 0.5, "GPU": 0.25, "H100": 1.0}
    engine = {"CPU": 1.0, "GPU": 2.0, "H100": 1.0}  # one engine's 2 tensor-parallel GPUs, one bundle
    assert plan.bundles == [trainer] * 6 + [frozen] * 3 + [engine] * 2
    assert [s.bundle for s in plan.slots["policy"]] == [0, 1]
    assert [s.bundle for s in plan.slots["reward-critic"]] == [2, 3]
    assert [s.bundle for s in plan.slots["cost-critic"]] == [4, 5]
    assert [plan.slots[name][0].bundle for name in ("reference", "reward-model", "cost-model")] == [6, 7, 8]
    assert plan.slots["rollout"] == [Slot(9, 1.0, 2.0), Slot(10, 1.0, 2.0)]
    # 6 trainer GPUs + 3 x 0.25 + 2 engines x 2
    assert plan.totals() == {"CPU": 6 + 1.5 + 2, "GPU": 6 + 0.75 + 4, "H100": 11.0}


def test_colocate_shares_one_gpu_per_rank_between_trainers_engines_and_frozen_models():
    cfg = config(*GPU_RUN, "resources.layout=colocate", "resources.frozen_placement=own_actors")
    plan = placement_plan(cfg)
    # bundle 0: policy-0, critic-0, rollout-0 + reference and cost model (emptiest first: 0, 1, 0)
    # bundle 1: policy-1, critic-1, rollout-1 + reward model
    assert [s.bundle for s in plan.slots["policy"]] == [0, 1]
    assert [s.bundle for s in plan.slots["critic"]] == [0, 1]
    assert [s.bundle for s in plan.slots["rollout"]] == [0, 1]
    assert [plan.slots[name][0].bundle for name in ("reference", "reward-model", "cost-model")] == [0, 1, 0]
    assert plan.bundles == [{"CPU": 3 + 2 * 0.5, "GPU": 1.0}, {"CPU": 3 + 0.5, "GPU": 1.0}]
    # Five actors share bundle 0's GPU, four bundle 1's: Ray's 1e-4 units, rounded down.
    assert plan.slots["policy"] == [Slot(0, 1.0, 0.2), Slot(1, 1.0, 0.25)]
    assert plan.totals() == {"CPU": 7.5, "GPU": 2.0}  # 2 GPUs instead of separate's 6.75
    for index, bundle in enumerate(plan.bundles):
        here = [slot for slots in plan.slots.values() for slot in slots if slot.bundle == index]
        assert sum(slot.gpus for slot in here) <= bundle["GPU"]
        assert sum(slot.cpus for slot in here) == pytest.approx(bundle["CPU"])


def test_colocate_on_cpu_keeps_the_default_run_on_three_logical_cpus():
    plan = placement_plan(config("resources.layout=colocate"))
    assert plan.bundles == [{"CPU": 3.0}]
    assert {name: slots[0] for name, slots in plan.slots.items()} == {
        "policy": Slot(0, 1.0, 0.0), "critic": Slot(0, 1.0, 0.0), "rollout": Slot(0, 1.0, 0.0)}


def test_spread_engines_stay_outside_the_group_but_count():
    plan = placement_plan(config("rollout.num_engines=2", "rollout.placement=spread"))
    assert len(plan.bundles) == 2 and plan.slots["rollout"] == [Slot(None, 1.0, 0.0)] * 2
    assert plan.totals() == {"CPU": 4.0}


def test_a_run_without_a_cost_critic_or_reference_actor_reserves_less():
    cfg = config("ppo.critic_layout=separate", "resources.frozen_placement=own_actors")
    full = placement_plan(cfg)
    plain = placement_plan(cfg, critic_groups=("reward-critic",), frozen_actors=("reward-model", "cost-model"))
    assert full.totals() == {"CPU": 5.5} and plain.totals() == {"CPU": 4.0}
    assert "cost-critic" not in plain.slots and "reference" not in plain.slots


def test_unknown_layout_or_strategy_is_named():
    demands = [Demand("policy", 1, 1.0, 0.0, "trainer")]
    with pytest.raises(ValueError, match="resources.layout 'hybrid'"):
        plan_placement(demands, "hybrid")
    with pytest.raises(ValueError, match="resources.placement_strategy 'pack'"):
        plan_placement(demands, "separate", "pack")


def test_shortfall_names_every_missing_resource():
    missing = shortfall({"CPU": 3.0, "GPU": 2.0, "H100": 1.0}, {"CPU": 6.0, "GPU": 1.0})
    assert missing == {"GPU": (2.0, 1.0), "H100": (1.0, 0.0)}
    assert describe_shortfall(missing) == "GPU: needs 2, has 1, H100: needs 1, has 0"


def test_a_bundle_larger_than_any_node_is_found_although_the_sum_fits():
    plan = PlacementPlan("separate", "PACK", [{"CPU": 1.0, "GPU": 2.0}], {})
    two_one_gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert not shortfall(plan.totals(), {"CPU": 16.0, "GPU": 2.0})
    assert "no node can hold bundle {'CPU': 1.0, 'GPU': 2.0}" in node_shortfall(plan, two_one_gpu_nodes)
    assert node_shortfall(plan, [{"CPU": 8.0, "GPU": 2.0}]) is None
    strict = PlacementPlan("separate", "STRICT_PACK", [{"CPU": 6.0}, {"CPU": 6.0}], {})
    assert "whole group" in node_shortfall(strict, [{"CPU": 8.0}, {"CPU": 8.0}])
    spread = PlacementPlan("separate", "STRICT_SPREAD", [{"CPU": 1.0}] * 3, {})
    assert "on a node of its own; there are 2" in node_shortfall(spread, [{"CPU": 8.0}, {"CPU": 8.0}])


def test_capacity_problems_name_the_missing_sum_the_keys_and_the_node_too_small():
    cfg = config("resources.use_gpu=true", "rollout.engine=vllm", "rollout.tensor_parallel_size=8")
    two_nodes = [{"CPU": 8.0, "GPU": 4.0}] * 2
    lacks, node = capacity_problems(placement_plan(cfg), {"CPU": 16.0, "GPU": 8.0}, two_nodes)
    assert lacks.startswith("GPU: needs 10, has 8; GPU = resources.use_gpu")  # 1 + 1 + the engine's 8
    assert "rollout.tensor_parallel_size per engine" in lacks
    assert node.startswith("no node can hold bundle {'CPU': 1.0, 'GPU': 8.0}") and "'GPU': 4.0" in node
    assert capacity_problems(placement_plan(config()), {"CPU": 3.0}, [{"CPU": 3.0}]) == []
