"""The run's placement group on a simulated two-node GPU cluster; prints one JSON line.

STAND-IN for GPU nodes: each worker node is started with ``num_gpus=4`` logical GPUs (no
hardware). Ray reserves, assigns and hides GPU ids exactly as on real nodes, which is all
placement decides; the actors placed are markers that report their node and GPU ids, not the
real workers (those need CUDA). Run by ``test_placement_multinode.py`` in its own process,
because ``ray.cluster_utils.Cluster`` needs its own driver.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GPU_RUN = ["+experiment=synthetic", "resources.use_gpu=true", "rollout.engine=vllm"]
CASES = {
    # a bundle per actor; two tensor-parallel engines of 2 GPUs each
    "separate": ["resources.policy_ranks=2", "resources.frozen_placement=own_actors", "rollout.num_engines=2",
                 "rollout.tensor_parallel_size=2"],
    # bundle i: policy rank i, critic rank i, engine i, frozen actors in the emptiest
    "colocate": ["resources.layout=colocate", "resources.policy_ranks=2", "resources.critic_ranks=2",
                 "rollout.num_engines=2", "resources.frozen_placement=own_actors"],
    "colocate_strict_spread": ["resources.layout=colocate", "resources.policy_ranks=2", "resources.critic_ranks=2",
                               "rollout.num_engines=2", "resources.placement_strategy=STRICT_SPREAD"],
}


class Marker:
    def where(self) -> tuple[str, list[str]]:
        import ray

        context = ray.get_runtime_context()
        return context.get_node_id(), sorted(context.get_accelerator_ids().get("GPU", []))


def main(work_dir: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group_table, remove_placement_group

    from rayrlhf.cluster import PlacementTimeoutError, placement_plan, reserve_placement
    from rayrlhf.config import compose_config, to_object
    from rayrlhf.workers.group import bundle_options

    temp_dir = str(work_dir / "ray")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "temp_dir": temp_dir})
    for _ in range(2):
        cluster.add_node(num_cpus=8, num_gpus=4, temp_dir=temp_dir)
    results: dict = {}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        marker = ray.remote(Marker)

        def config(overrides):
            return to_object(compose_config("ppo_lag", [*GPU_RUN, *overrides], output_dir=str(work_dir / "o")))

        for case, overrides in CASES.items():
            plan = placement_plan(config(overrides))
            pg = reserve_placement(plan, timeout_s=60)
            actors = {f"{role}-{rank}": marker.options(num_cpus=slot.cpus, num_gpus=slot.gpus,
                                                       **bundle_options(pg, slot.bundle)).remote()
                      for role, slots in plan.slots.items() for rank, slot in enumerate(slots)}
            results[case] = {
                "where": {name: ray.get(actor.where.remote(), timeout=60) for name, actor in actors.items()},
                "bundle": {f"{role}-{rank}": slot.bundle for role, slots in plan.slots.items()
                           for rank, slot in enumerate(slots)},
                "bundle_nodes": {str(k): v for k, v in placement_group_table(pg)["bundles_to_node_id"].items()},
                "gpus": plan.totals().get("GPU"),
            }
            for actor in actors.values():
                ray.kill(actor)
            remove_placement_group(pg)
        # An engine of 8 GPUs fits no 4-GPU node, though the cluster has 8 in all.
        too_big = placement_plan(config(["rollout.tensor_parallel_size=8"]))
        try:
            reserve_placement(too_big, timeout_s=3)
        except PlacementTimeoutError as exc:
            results["too_big"] = str(exc)
        results["groups_left"] = [g["state"] for g in placement_group_table().values()]
        return results
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
