"""The run's placement group on a real local Ray cluster: every role's actors sit in the bundle
its layout names (read back from Ray's own actor and placement-group tables, not from our
plan), nothing starts before the group is reserved, and a request the cluster cannot hold
fails at once, or after ``resources.placement_timeout_s``, naming what is missing."""

from __future__ import annotations

import re
import time

import pytest

from rayrlhf.cluster import PlacementTimeoutError, placement_plan
from rayrlhf.config import compose_config, to_object
from rayrlhf.trainers.ppo_lag_roles import build_roles

pytestmark = pytest.mark.slow


def config(tmp_path, *overrides):
    return to_object(compose_config("ppo_lag", ["+experiment=synthetic", *overrides], output_dir=str(tmp_path)))


def actor_places(ray, pg_id: str | None = None) -> dict[str, tuple[str, int, str]]:
    """Live actor name -> (placement group id, bundle index, node id), from the GCS actor table:
    an actor placed in bundle i of group G asks Ray for ``CPU_group_<i>_<G>``. With ``pg_id``,
    only that group's actors (an earlier test's actor of the same name may not be gone yet)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    places = {}
    for raw in state._connect_and_get_accessor().get_actor_table(None, "ALIVE"):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if not actor.name:
            continue
        pg = actor.placement_group_id.hex()
        if pg_id is not None and pg != pg_id:
            continue
        bundles = {int(m.group(1)) for key in actor.required_resources
                   if (m := re.fullmatch(rf"\w+_group_(\d+)_{pg}", key))}
        places[actor.name] = (pg, bundles.pop() if len(bundles) == 1 else None, actor.node_id.hex())
    return places


@pytest.mark.parametrize(("overrides", "expected"), [
    # separate: a bundle per actor, in the order policy, critic, frozen actor, engines.
    (("resources.frozen_placement=one_actor",),
     {"policy-0": 0, "critic-0": 1, "frozen-0": 2, "rollout-0": 3}),
    # colocate: bundle i holds rank i of each trainer and engine i; the frozen actor joins the
    # emptiest bundle (bundle 1: policy-1 and rollout-1 only).
    (("resources.layout=colocate", "resources.policy_ranks=2", "rollout.num_engines=2",
      "resources.frozen_placement=one_actor"),
     {"policy-0": 0, "policy-1": 1, "critic-0": 0, "rollout-0": 0, "rollout-1": 1, "frozen-0": 1}),
], ids=["separate", "colocate"])
def test_roles_land_in_the_bundles_their_layout_names(ray_cluster, tmp_path, tiny_model_dir, overrides, expected):
    from ray.util.placement_group import placement_group_table

    cfg = config(tmp_path, *overrides)
    roles = build_roles(cfg, tiny_model_dir)
    try:
        pg_id = roles.placement_group.id.hex()
        table = placement_group_table(roles.placement_group)
        assert table["state"] == "CREATED" and table["strategy"] == "PACK"
        assert list(table["bundles"].values()) == placement_plan(cfg).bundles
        # An actor build_roles did not wait for (the frozen host loads lazily) may still be
        # starting on a loaded machine: wait until every expected one is listed alive.
        deadline = time.monotonic() + 120
        while set(ours := actor_places(ray_cluster, pg_id)) != set(expected) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert {name: bundle for name, (_, bundle, _) in ours.items()} == expected
        # Each actor runs on the node Ray reserved its bundle on.
        assert all(node == table["bundles_to_node_id"][bundle] for _, bundle, node in ours.values())
    finally:
        pg = roles.placement_group
        roles.shutdown()
    assert placement_group_table(pg)["state"] == "REMOVED"  # the next run's roles get the CPUs back


def role_actors(ray) -> set[str]:
    """Live role actors; one killed by an earlier test may still be listed, so tests compare
    the set before and after rather than expect none."""
    return {name for name in actor_places(ray) if name.startswith(("policy", "critic", "rollout"))}


def test_a_gpu_run_on_a_cpu_cluster_fails_at_once_naming_the_gpus(ray_cluster, tmp_path, tiny_model_dir):
    cfg = config(tmp_path, "resources.use_gpu=true", "rollout.num_engines=2")
    before = role_actors(ray_cluster)
    with pytest.raises(RuntimeError, match=r"GPU: needs 4, has 0") as info:
        build_roles(cfg, tiny_model_dir)
    assert "resources.use_gpu" in str(info.value)  # which keys ask for them
    assert role_actors(ray_cluster) <= before  # no role actor was started


def test_a_joined_cluster_waits_for_the_group_then_names_what_is_missing(ray_cluster, tmp_path, tiny_model_dir):
    """On a cluster that may grow (cluster.address set) the group waits placement_timeout_s,
    then is removed (no bundle stays reserved) and the error names the GPUs and the custom
    resource that never came."""
    from ray.util.placement_group import placement_group_table

    cfg = config(tmp_path, "cluster.address=auto", "resources.use_gpu=true", "resources.placement_timeout_s=2",
                 "+resources.custom_resources.H100=1")
    before = role_actors(ray_cluster)
    with pytest.raises(PlacementTimeoutError) as info:
        build_roles(cfg, tiny_model_dir)
    message = str(info.value)
    assert "resources.placement_timeout_s=2s" in message
    assert "GPU: needs 3, has 0" in message and "H100: needs 3, has 0" in message
    asked = [g["state"] for g in placement_group_table().values() if "H100" in g["bundles"][0]]
    assert asked == ["REMOVED"]
    assert role_actors(ray_cluster) <= before  # no role actor was started
