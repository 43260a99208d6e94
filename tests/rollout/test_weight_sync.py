"""Weight sync buckets: bounded, in order, every tensor once (the object-store round trip
runs in tests/trainers/test_ppo_lag_zero3.py)."""

from __future__ import annotations

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
