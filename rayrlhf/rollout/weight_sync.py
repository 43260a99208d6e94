"""Weight sync through the object store in size-bounded buckets, in the engine's dtype.

The policy's rank 0 walks its weights one module at a time (under ZeRO-3 each gathered only
while it is copied), casts each tensor to the precision the engines compute in, and puts a
bucket into Ray's object store as soon as it holds ``bucket_bytes``: the policy process never
holds more than one bucket of copies (under LoRA the merged model is one whole copy first),
and the object store holds one copy of the model in the engines' dtype (half of fp32 for bf16
engines), never a second fp32 one. Each engine reads the
buckets one after the other (``stream_buckets``); the HF engine copies each tensor into its
model as it arrives, vLLM hands the whole list to its own loader (which wants every weight at
once).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch


def pack_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """``named`` tensors in consecutive buckets of at most ``bucket_bytes`` (a tensor larger
    than that is a bucket of its own), in order. A tensor already sent under another name (a
    tied head, which the engines tie again themselves) is sent once, under its first name."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    sent: dict[tuple, weakref.ref] = {}
    for name, tensor in named:
        # Tied tensors share memory (state_dict gives them as two views of one storage). The
        # earlier tensor must still be alive: a streamed copy that was sent and freed leaves its
        # address to the next one.
        key = ((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
               if tensor.numel() else (id(tensor),))
        if key in sent and sent[key]() is not None:
            continue
        sent[key] = weakref.ref(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield bucket


def bucket_bytes_of(bucket: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in bucket.values())


@dataclass
class WeightBuckets:
    """What one sync sends: the buckets' object refs (in order) and their size."""

    refs: list[Any] = field(default_factory=list)  # ray.ObjectRef of dict[str, Tensor]
    bytes: int = 0
    tensors: int = 0


def put_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> WeightBuckets:
    """Pack ``named`` into buckets and put each into the object store as soon as it is full
    (``named`` is consumed lazily, so a generator's copies are dropped bucket by bucket)."""
    import ray

    out = WeightBuckets()
    for bucket in pack_buckets(named, bucket_bytes):
        out.refs.append(ray.put(bucket))
        out.bytes += bucket_bytes_of(bucket)
        out.tensors += len(bucket)
    return out


def stream_buckets(refs: list[Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every bucket, fetched from the object store one bucket at a time."""
    import ray

    for ref in refs:
        bucket = ray.get(ref)
        yield from bucket.items()
        del bucket
