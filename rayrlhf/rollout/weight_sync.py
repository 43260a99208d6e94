"""Weight sync through the object store in size-bounded buckets, in the engine's dtype.

The policy's rank 0 walks its weights one module at a time (under ZeRO-3 each gathered only
while it is copied), casts each tensor to the precision the engines compute in, and puts a
bucket into Ray's object store as soon as it holds ``bucket_bytes``: the policy process never
holds more than one bucket of copies (under LoRA the merged model is one whole copy first),
and the object store holds one copy of the model in the engines' dtype (half of fp32 for bf16
engines), never a second fp32 one. Each engine reads the
buckets one after the other (``stream_buckets``); the HF engine copies each tensor into its
model as it arrives, vLLM hands the whole list to its own loader (which wants every weight at
once). The collective path (below: ``rollout.sync_path=collective``) sends the same buckets
by broadcast instead, with nothing in the object store.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class SyncSeconds:
    """One engine's side of a sync: from its start to the weights in place (``total_s``: for a
    broadcast this includes waiting for the sender), and the engine's own load of them."""

    total_s: float
    load_s: float


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


# ---------------------------------------------------------------- the collective path
#
# ``rollout.sync_path=collective``: policy rank 0 broadcasts the buckets over a process group
# of its own with the engines (rank 0 = policy rank 0, ranks 1..N = the engines), gloo on CPUs,
# NCCL on GPUs (untested here: the CPU machines have no GPU). The policy process already has a
# default torch.distributed group (its DeepSpeed ranks), and ``new_group`` can only carve
# subgroups out of that one, so this group is built directly on a TCPStore of its own and never
# registered as a default or named group: it is used only through its own methods.

SYNC_BACKENDS = ("gloo", "nccl")


class SyncGroup:
    """One member of a weight-sync process group (``join_sync_group``)."""

    def __init__(self, group, store, rank: int, world_size: int, device: str) -> None:
        self.group, self.store = group, store  # the store must outlive the group
        self.rank, self.world_size, self.device = rank, world_size, device

    def broadcast(self, tensor: torch.Tensor) -> None:
        """``tensor`` from rank 0 into every member's ``tensor`` (in place). A dead member or
        one that never calls makes every other fail after the group's timeout, never hang."""
        from torch.distributed import BroadcastOptions

        options = BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        shutdown = getattr(self.group, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.group = self.store = None


def join_sync_group(address: str, port: int, rank: int, world_size: int, backend: str = "gloo",
                    timeout_s: float = 300.0) -> SyncGroup:
    """Join the weight-sync group whose rendezvous rank 0 hosts at ``address:port`` (every
    member calls this at the same time; it returns once all have joined). ``timeout_s``
    bounds the rendezvous and every broadcast."""
    from datetime import timedelta

    import torch.distributed as dist

    if backend not in SYNC_BACKENDS:
        raise ValueError(f"weight-sync backend must be one of {SYNC_BACKENDS}, got {backend!r}")
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout,
                          wait_for_workers=False)
    prefixed = dist.PrefixStore("rayrlhf-weight-sync", store)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        device = "cpu"
    else:  # GPU clusters only; not exercised by the CPU tests
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        device = f"cuda:{torch.cuda.current_device()}"
    member = SyncGroup(group, store, rank, world_size, device)
    # Gloo connects lazily on some builds: one tiny broadcast makes "joined" mean "connected".
    member.broadcast(torch.zeros(1, device=device))
    return member


def _broadcast_bytes(group: SyncGroup, payload: bytes | None) -> bytes:
    """A pickled header from rank 0 to everyone: its length, then its bytes."""
    length = torch.tensor([len(payload) if payload is not None else 0], dtype=torch.int64, device=group.device)
    group.broadcast(length)
    if not length.item():
        return b""
    data = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(group.device) if payload is not None
            else torch.empty(int(length.item()), dtype=torch.uint8, device=group.device))
    group.broadcast(data)
    return payload if payload is not None else data.cpu().numpy().tobytes()


_ALIGN = 8  # each tensor starts at a multiple of 8 bytes, so any dtype can view its slice


def _flatten(bucket: dict[str, torch.Tensor], device: str) -> tuple[list, torch.Tensor]:
    """One uint8 buffer of a bucket's tensors (any dtypes, each padded to ``_ALIGN`` bytes)
    and their (name, shape, dtype, padded bytes)."""
    header, parts = [], []
    for name, tensor in bucket.items():
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        pad = -flat.numel() % _ALIGN
        header.append((name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), flat.numel() + pad))
        parts += [flat, torch.zeros(pad, dtype=torch.uint8, device=flat.device)] if pad else [flat]
    return header, torch.cat(parts).to(device) if parts else torch.empty(0, dtype=torch.uint8, device=device)


def broadcast_buckets(group: SyncGroup, named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> WeightBuckets:
    """Rank 0: pack ``named`` into buckets (``pack_buckets``) and broadcast each as one flat
    buffer after its header; an empty header ends the sync. Returns what was sent (no refs)."""
    import pickle

    out = WeightBuckets()
    for bucket in pack_buckets(named, bucket_bytes):
        header, flat = _flatten(bucket, group.device)
        _broadcast_bytes(group, pickle.dumps(header))
        group.broadcast(flat)
        out.bytes += bucket_bytes_of(bucket)  # the weights' bytes, as the object-store path counts them
        out.tensors += len(header)
        out.refs.append(None)  # one entry per bucket, to count them
        del bucket, flat
    _broadcast_bytes(group, b"")
    return out


def receive_buckets(group: SyncGroup) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks 1..N: (name, tensor) of every bucket rank 0 broadcasts, one bucket at a time, on
    the CPU (the engines load from there), until the empty header that ends the sync."""
    import pickle

    while True:
        payload = _broadcast_bytes(group, None)
        if not payload:
            return
        header = pickle.loads(payload)
        flat = torch.empty(sum(size for *_, size in header), dtype=torch.uint8, device=group.device)
        group.broadcast(flat)
        flat = flat.cpu()
        offset = 0
        for name, shape, dtype, size in header:
            dtype = getattr(torch, dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            yield name, flat[offset:offset + nbytes].view(dtype).reshape(shape)
            offset += size
        del flat
