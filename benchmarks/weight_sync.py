"""Weight sync at SmolLM2-135M size: the object-store path before and after bucketing, and
the collective path.

    .venv/bin/python benchmarks/weight_sync.py > result.json
    .venv/bin/python benchmarks/weight_sync.py --engine-dtype bfloat16 --repeats 3

One HF rollout engine (a Ray actor, as in a PPO-Lag run) receives the policy's weights from
this process, ``--repeats`` times per path; reported per path: median seconds from the first
copy to the engine's return, bytes sent (object store or broadcast), buckets, and this process's
peak RSS growth while sending (ru_maxrss, so each path runs in a fresh child process).

* ``full_fp32``: main's path before bucketing: one fp32 copy of every state_dict entry (a
  tied head twice) in one object.
* ``buckets``: ``PolicyWorker.weight_buckets``'s path: ``gathered_state`` in the engine's
  dtype, ``put_buckets`` of ``--bucket-mb`` MB, the engine streaming them in.
* ``collective``: ``PolicyWorker.broadcast_weights``'s path (``rollout.sync_path=collective``):
  the same buckets flattened and broadcast over a gloo group between this process (rank 0)
  and the engine (rank 1), which loads each bucket as it arrives; nothing in the object store.
  The group is set up once, before the timed repeats (as a run does at start).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


PATHS = ("full_fp32", "buckets", "collective")


def measure(path: str, engine_dtype: str, bucket_mb: float, repeats: int) -> dict:
    import ray
    import torch

    from rayrlhf.models import load_causal_lm, resolve_model_path
    from rayrlhf.rollout.weight_sync import put_buckets
    from rayrlhf.workers.base import gathered_state
    from rayrlhf.workers.rollout_worker import RolloutWorker

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    model_path = resolve_model_path("smollm2-135m-instruct")
    policy = load_causal_lm(model_path, dtype="float32")
    engine = RolloutWorker.options(num_cpus=1).remote("hf", model_path, {"dtype": engine_dtype}, 1)
    ray.get(engine.ready.remote())
    if path == "collective":
        from rayrlhf.rollout.weight_sync import broadcast_buckets, join_sync_group
        from rayrlhf.workers.base import free_address

        address, port = free_address()
        joined = engine.join_weight_sync.remote(address, port, 1, 2, "gloo", 300.0)
        group = join_sync_group(address, port, 0, 2, "gloo", 300.0)
        ray.get(joined)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, sent, buckets = [], 0, 1
    for _ in range(repeats):
        start = time.perf_counter()
        if path == "full_fp32":
            state = {name: t.detach().to(torch.float32, copy=True) for name, t in policy.state_dict().items()}
            sent = sum(t.numel() * t.element_size() for t in state.values())
            ref = ray.put(state)
            del state
            ray.get(engine.update_weights.remote(ref))
            del ref
        elif path == "collective":
            received = engine.receive_weights.remote()
            sent = broadcast_buckets(group, gathered_state(policy, dtype=getattr(torch, engine_dtype)),
                                     int(bucket_mb * 1e6))
            ray.get(received)
            sent, buckets = sent.bytes, len(sent.refs)
        else:
            put = put_buckets(gathered_state(policy, dtype=getattr(torch, engine_dtype)), int(bucket_mb * 1e6))
            sent, buckets = put.bytes, len(put.refs)
            ray.get(engine.update_weights.remote(put.refs))
            del put
        seconds.append(time.perf_counter() - start)
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    ray.shutdown()
    return {"path": path, "engine_dtype": engine_dtype, "bucket_mb": bucket_mb if path != "full_fp32" else None,
            "seconds_median": round(statistics.median(seconds), 3), "seconds": [round(s, 3) for s in seconds],
            "bytes": sent, "buckets": buckets, "sender_peak_rss_growth_mib": round(rss_growth / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--bucket-mb", type=float, default=256.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--one", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.engine_dtype, args.bucket_mb, args.repeats)))
        return
    results = []
    for path in args.paths:  # each in a fresh process: its own peak RSS
        out = subprocess.run([sys.executable, __file__, "--one", path, "--engine-dtype", args.engine_dtype,
                              "--bucket-mb", str(args.bucket_mb), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True, env=os.environ.copy())
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"model": "smollm2-135m-instruct", "results": results}, indent=2))


if __name__ == "__main__":
    main()
