"""split_evenly / shard_spec / cut_at_stop: the pure pieces of rollout plumbing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayrlhf.rollout import SamplingSpec, cut_at_stop, make_engine, shard_spec
from rayrlhf.workers.rollout_worker import split_evenly


@given(st.lists(st.integers(), max_size=60), st.integers(min_value=1, max_value=12))
def test_split_evenly_is_contiguous_complete_and_balanced(items, n):
    chunks = split_evenly(items, n)
    assert len(chunks) == n
    assert [x for chunk in chunks for x in chunk] == items
    sizes = [len(chunk) for chunk in chunks]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_split_evenly_small_example_and_bad_n():
    assert split_evenly(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert split_evenly([1], 3) == [[1], [], []]
    with pytest.raises(ValueError):
        split_evenly([1, 2], 0)


def test_shard_spec_shifts_the_seed_by_the_offset_only_when_seeded():
    spec = SamplingSpec(max_new_tokens=4, temperature=0.7, top_p=0.9, seed=10)
    assert shard_spec(spec, 5) == SamplingSpec(max_new_tokens=4, temperature=0.7, top_p=0.9, seed=15)
    unseeded = SamplingSpec(max_new_tokens=4)
    assert shard_spec(unseeded, 5).seed is None


def test_cut_at_stop_keeps_the_first_stop_token():
    assert cut_at_stop([4, 5, 2, 7, 2], [2]) == ([4, 5, 2], True)
    assert cut_at_stop([4, 5, 6], [2, 3]) == ([4, 5, 6], False)
    assert cut_at_stop([], [2]) == ([], False)


def test_sampling_spec_rejects_nonsense():
    with pytest.raises(ValueError):
        SamplingSpec(max_new_tokens=0)
    with pytest.raises(ValueError):
        SamplingSpec(max_new_tokens=1, top_p=0.0)
    with pytest.raises(ValueError):
        SamplingSpec(max_new_tokens=1, temperature=-1.0)


def test_make_engine_names_the_kinds_it_knows():
    with pytest.raises(ValueError, match="vllm.*hf"):
        make_engine("sglang", "tiny-llama")
