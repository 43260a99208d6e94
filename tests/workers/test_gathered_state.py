"""``gathered_state``: a model's state_dict, one module at a time, as new tensors (under
ZeRO-3 gathered from the ranks: tests/trainers/test_ppo_lag_zero3.py runs that on 2 ranks)."""

from __future__ import annotations

import torch

from rayrlhf.workers.base import gathered_state, is_partitioned, parameter_count


def tied_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 10, bias=False),
                                torch.nn.BatchNorm1d(10))
    model[2].weight = model[0].weight  # tied, as an LM head and its input embedding
    return model


def test_gathered_state_is_the_state_dict_as_new_tensors_with_tied_weights_kept_shared():
    model = tied_model()
    state = model.state_dict()
    got = list(gathered_state(model, dtype=torch.bfloat16))
    assert [name for name, _ in got] == list(state)  # same names, same order, buffers included
    got = dict(got)
    for name, tensor in state.items():
        assert got[name].data_ptr() != tensor.data_ptr()  # a copy, never a view
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert got[name].dtype == expected.dtype and torch.equal(got[name], expected)
    assert got["2.weight"] is got["0.weight"]  # one tensor under both names, as in state_dict
    assert got["3.num_batches_tracked"].dtype == torch.int64  # integers keep their dtype
    assert list(gathered_state(model, keep=False)) == []  # a rank that only helps gather
    assert not is_partitioned(model)
    assert sum(parameter_count(p) for p in model.parameters()) == 10 * 4 + 2 * 4 + 2 * 10
