"""Weight sync buckets: bounded, in order, every tensor once (the object-store round trip
runs in tests/trainers/test_ppo_lag_zero3.py)."""

from __future__ import annotations

import os

import pytest
import torch

from rayrlhf.rollout.weight_sync import bucket_bytes_of, pack_buckets


def test_buckets_hold_at_most_the_limit_in_order_and_a_shared_tensor_once():
    tied = torch.zeros(10, dtype=torch.bfloat16)  # 20 bytes
    named = [("a", torch.zeros(5)), ("b", torch.zeros(3)), ("tied", tied), ("big", torch.zeros(40)),
             ("c", torch.zeros(2, dtype=torch.int64)), ("head", tied)]
    buckets = list(pack_buckets(named, bucket_bytes=36))
    assert [list(b) for b in buckets] == [["a", "b"], ["tied"], ["big"], ["c"]]
    # Each bucket fits the limit unless one tensor alone is larger (160 bytes: a bucket of its own).
    assert [bucket_bytes_of(b) for b in buckets] == [32, 20, 160, 16]
    assert buckets[1]["tied"] is tied  # the tensors themselves, no copies
    # A view of the same memory (as state_dict gives a tied head) is the same tensor too.
    assert [list(b) for b in pack_buckets([("x", tied), ("y", tied.detach())], 100)] == [["x"]]
    # Memory freed once a tensor was sent may hold the next one (streamed copies): the same
    # address with the first tensor gone is a new tensor, sent too.
    def reused_memory():
        memory = torch.zeros(1000)
        yield "w", memory[:]
        yield "x", torch.ones(1000)
        memory.fill_(2.0)  # "w" was sent and dropped: this is another tensor at its address
        yield "z", memory[:]

    names = []
    for bucket in pack_buckets(reused_memory(), 4000):
        names += list(bucket)
        del bucket  # as put_buckets drops each bucket once it is in the object store
    assert names == ["w", "x", "z"]
    assert list(pack_buckets([], 10)) == []
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(pack_buckets(named, 0))


# ---------------------------------------------------------------- the collective path

def _policy_side(port: int, sync_port: int, bucket_bytes: int, die_after_join: bool, done) -> None:
    """A second process standing in for policy rank 0: it first has a default torch.distributed
    group of its own (as DeepSpeed's), then hosts the weight-sync group beside it."""
    import torch.distributed as dist

    from rayrlhf.rollout.weight_sync import broadcast_buckets, join_sync_group

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    group = join_sync_group("127.0.0.1", sync_port, 0, 2, timeout_s=20)
    if die_after_join:  # an engine or policy that dies mid-sync
        os._exit(1)
    sent = broadcast_buckets(group, _weights().items(), bucket_bytes)
    dist.all_reduce(torch.ones(1))  # the default group still works beside the sync group
    done.put((sent.bytes, len(sent.refs), sent.tensors))


def _weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"embed": torch.randn(7, 3, generator=gen).to(torch.bfloat16),  # 42 bytes: not 8-aligned
            "w": torch.randn(5, 5, generator=gen), "steps": torch.arange(3), "scalar": torch.tensor(2.5),
            "mask": torch.tensor([True, False, True])}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("bucket_bytes", [64, 1 << 20], ids=["many-buckets", "one-bucket"])
def test_collective_sync_between_two_processes_delivers_every_tensor_exactly(bucket_bytes):
    import multiprocessing

    from rayrlhf.rollout.weight_sync import join_sync_group, receive_buckets

    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    sync_port = _free_port()
    sender = ctx.Process(target=_policy_side, args=(_free_port(), sync_port, bucket_bytes, False, done))
    sender.start()
    try:
        group = join_sync_group("127.0.0.1", sync_port, 1, 2, timeout_s=20)
        received = dict(receive_buckets(group))
        sent_bytes, buckets, tensors = done.get(timeout=30)
    finally:
        sender.join(timeout=30)
    expected = _weights()
    assert list(received) == list(expected) and tensors == len(expected)
    for name, tensor in expected.items():
        assert received[name].dtype == tensor.dtype and received[name].shape == tensor.shape
        assert torch.equal(received[name], tensor), name
    assert buckets == (1 if bucket_bytes > 1000 else 3)  # "embed" (42 B), "w" (100 B), the other three (31 B)
    assert sent_bytes == bucket_bytes_of(expected)
    assert sender.exitcode == 0
    group.close()


def test_collective_sync_fails_instead_of_hanging_when_the_sender_dies():
    import multiprocessing

    from rayrlhf.rollout.weight_sync import join_sync_group, receive_buckets

    ctx = multiprocessing.get_context("spawn")
    sync_port = _free_port()
    done = ctx.Queue()
    sender = ctx.Process(target=_policy_side, args=(_free_port(), sync_port, 64, True, done))
    sender.start()
    group = join_sync_group("127.0.0.1", sync_port, 1, 2, timeout_s=30)
    # The peer's socket closes: gloo raises at once (a silent peer would raise after timeout_s).
    with pytest.raises(RuntimeError):
        list(receive_buckets(group))
    sender.join(timeout=30)
    assert sender.exitcode == 1
