"""Two rollout engines on a simulated three-node Ray cluster; prints one JSON line.

Run by ``test_multinode_rollout.py`` in its own process, because ``ray.cluster_utils.Cluster``
needs its own driver (the pytest process may hold a Ray session already). The head has no
CPUs and each worker node has 8, so either node could hold both engines: where they land is
the scheduling strategy's choice (``rollout.placement=spread``), not forced by resources.
(With ``default`` placement Ray's scheduler put both on one node in every trial run here.)

Engine 1 then receives the weights of a differently seeded tiny model through the object
store (a cross-node weight sync), which makes its outputs tell apart from engine 0's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPTS = [[5 + i, 40 + 3 * i, 7 + 11 * i, 90 + i][: 1 + i % 4] for i in range(8)]  # distinct, ragged
BATCH_SIZE = 4  # one HF batch per shard, so a shard's samples depend only on its seed


def main(work_dir: Path) -> dict:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from rayrlhf.models import load_causal_lm, resolve_model_path
    from rayrlhf.models.tiny import TinyLlamaSpec, build_tiny_llama
    from rayrlhf.rollout import HFEngine, SamplingSpec, shard_spec
    from rayrlhf.cluster import rollout_placement_options
    from rayrlhf.workers.rollout_worker import RolloutWorker, generate_across, split_evenly

    torch.set_num_threads(1)
    model_path = resolve_model_path("tiny-llama")
    other_weights = load_causal_lm(build_tiny_llama(work_dir / "seed1", TinyLlamaSpec(seed=1)),
                                   dtype="float32").state_dict()
    temp_dir = str(work_dir / "ray")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "temp_dir": temp_dir})
    for _ in range(2):
        cluster.add_node(num_cpus=8, temp_dir=temp_dir)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        head_id = ray.get_runtime_context().get_node_id()
        alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        workers = [
            RolloutWorker.options(num_cpus=1, name=f"rollout-{i}", **rollout_placement_options("spread"))
            .remote("hf", model_path, {"batch_size": BATCH_SIZE}, 1)
            for i in range(2)
        ]
        ray.get([w.ready.remote() for w in workers])
        engine_nodes = ray.get([w.node_id.remote() for w in workers])
        ray.get(workers[1].update_weights.remote(ray.put(other_weights)))

        spec = SamplingSpec(max_new_tokens=12, temperature=1.0, seed=2024)
        completions = generate_across(workers, PROMPTS, spec)
        chunks = split_evenly(PROMPTS, 2)
        offsets = [0, len(chunks[0])]
        # What each engine gives for its own shard, asked directly, and what the other would give.
        direct = [ray.get(w.generate.remote(chunk, shard_spec(spec, off)))
                  for w, chunk, off in zip(workers, chunks, offsets)]
        swapped = ray.get(workers[0].generate.remote(chunks[1], shard_spec(spec, offsets[1])))
        # Independent reference for shard 0: the same model and seed in this process, no Ray.
        local = HFEngine(model_path, batch_size=BATCH_SIZE).generate(chunks[0], shard_spec(spec, 0))
        shards = [completions[:offsets[1]], completions[offsets[1]:]]
        return {
            "num_nodes": len(alive),
            "head_node": head_id,
            "engine_nodes": engine_nodes,
            "prompt_order_ok": [c.prompt_ids for c in completions] == PROMPTS,
            "shard_sizes": [len(s) for s in shards],
            "shard_responses": [[c.response_ids for c in s] for s in shards],
            "direct_responses": [[c.response_ids for c in d] for d in direct],
            "engine0_on_shard1": [c.response_ids for c in swapped],
            "local_shard0": [c.response_ids for c in local],
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    result = main(Path(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
