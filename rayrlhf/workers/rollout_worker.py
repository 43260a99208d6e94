"""The rollout worker: one Ray actor that owns one rollout engine.

``_RolloutWorker`` is a plain class (testable without Ray); ``RolloutWorker`` is its Ray
actor class, so callers write ``RolloutWorker.options(num_cpus=1).remote(kind, path)``.
vLLM needs its own process, which an actor is; its environment is set before the engine
imports vLLM.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Sequence, TypeVar

import ray
import torch

from rayrlhf.fault_injection import inject_fault
from rayrlhf.rollout import Completion, SamplingSpec, make_engine, shard_spec
from rayrlhf.rollout.weight_sync import SyncSeconds, join_sync_group, receive_buckets, stream_buckets
from rayrlhf.workers.group import get_fail_fast

log = logging.getLogger(__name__)

T = TypeVar("T")


class _RolloutWorker:
    """Generates completions and accepts weight pushes; the engine is chosen by ``kind``."""

    def __init__(self, kind: str, model_path: str, engine_kwargs: dict[str, Any] | None = None,
                 torch_threads: int | None = None) -> None:
        start = time.perf_counter()
        if kind == "vllm":
            from rayrlhf.rollout.vllm_engine import apply_vllm_env

            apply_vllm_env((engine_kwargs or {}).get("env"))
        if torch_threads is not None:
            # vLLM's CPU kernels use OpenMP directly: its pool must match torch's.
            os.environ["OMP_NUM_THREADS"] = str(torch_threads)
            torch.set_num_threads(torch_threads)
        self.threads = torch.get_num_threads()
        self.kind = kind
        self.model_path = str(model_path)
        self.engine = make_engine(kind, model_path, **(engine_kwargs or {}))
        self.startup_s = time.perf_counter() - start

    def ready(self) -> dict[str, Any]:
        """What runs here and how long it took to start (await this before timing anything)."""
        dtype = getattr(self.engine, "dtype", None)
        return {"kind": self.kind, "model_path": self.model_path, "startup_s": self.startup_s,
                "threads": self.threads, "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
                "kv_cache_gib": getattr(self.engine, "kv_cache_gib", None)}

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Completion]:
        return self.engine.generate(prompt_ids, spec)

    def node_id(self) -> str:
        """The Ray node this engine runs on (placement checks on multi-node clusters)."""
        return ray.get_runtime_context().get_node_id()

    def update_weights(self, named_tensors: dict[str, torch.Tensor] | list[ray.ObjectRef],
                       partial: bool = False) -> SyncSeconds:
        """Push new policy weights: a dict, or the object refs of ``PolicyWorker.weight_buckets``'s
        buckets, read one at a time; ``partial``: only some of the weights (the rest are kept)."""
        inject_fault("update_weights")  # FAULT-INJECTION POINT (tests and drills only)
        start = time.perf_counter()
        named = named_tensors.items() if isinstance(named_tensors, dict) else stream_buckets(named_tensors)
        load_s = self.engine.update_weights(named, partial=partial)
        return self.sync_seconds(start, load_s, "weight sync")

    def join_weight_sync(self, address: str, port: int, rank: int, world_size: int, backend: str,
                         timeout_s: float) -> None:
        """Join policy rank 0's weight-sync group as ``rank`` (``rollout.sync_path=collective``)."""
        self.sync_group = join_sync_group(address, port, rank, world_size, backend, timeout_s)

    def receive_weights(self, partial: bool = False) -> SyncSeconds:
        """Load the weights policy rank 0 broadcasts now (``PolicyWorker.broadcast_weights``),
        bucket by bucket, into the engine as ``update_weights`` does."""
        inject_fault("update_weights")  # FAULT-INJECTION POINT (tests and drills only)
        start = time.perf_counter()
        load_s = self.engine.update_weights(receive_buckets(self.sync_group), partial=partial)
        return self.sync_seconds(start, load_s, "collective weight sync")

    def sync_seconds(self, start: float, load_s: float | None, what: str) -> SyncSeconds:
        total = time.perf_counter() - start
        log.info("%s rollout worker: %s took %.3f s", self.kind, what, total)
        # An engine that loads as the tensors arrive (HF) has no load step apart: all of it counts.
        return SyncSeconds(total_s=total, load_s=total if load_s is None else load_s)

    def sleep(self) -> None:
        """Release the engine's GPU memory until ``wake_up`` (vLLM sleep mode, rollout.sleep_mode)."""
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.engine.close()


RolloutWorker = ray.remote(_RolloutWorker)


def split_evenly(items: Sequence[T], n: int) -> list[list[T]]:
    """``n`` contiguous chunks whose sizes differ by at most one (the first ones are larger)."""
    if n < 1:
        raise ValueError(f"need at least one chunk, got n={n}")
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for index in range(n):
        stop = start + size + (1 if index < extra else 0)
        chunks.append(list(items[start:stop]))
        start = stop
    return chunks


def generate_across(workers: Sequence, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Completion]:
    """Generate on all workers in parallel; completions come back in the prompts' order."""
    return collect_generation(start_generation(workers, prompt_ids, spec))


def start_generation(workers: Sequence, prompt_ids: list[list[int]], spec: SamplingSpec) -> list:
    """Start generating on all workers (one contiguous shard each) without waiting: the refs
    for :func:`collect_generation`.

    Each shard's seed is shifted by its offset in the batch (``shard_spec``), so workers never
    draw the same random numbers, and vLLM workers sample what one worker would have sampled.
    """
    if not workers:
        raise ValueError("generate_across needs at least one worker")
    refs, offset = [], 0
    for worker, chunk in zip(workers, split_evenly(prompt_ids, len(workers))):
        if chunk:
            refs.append(worker.generate.remote(chunk, shard_spec(spec, offset)))
        offset += len(chunk)
    return refs


def collect_generation(refs: list) -> list[Completion]:
    """The completions of :func:`start_generation`'s refs, in the prompts' order."""
    return [completion for part in get_fail_fast(refs) for completion in part]
