"""The SFT loss (response-only next-token NLL) against a hand computation."""

import math

import pytest
import torch

from rayrlhf.algorithms import response_nll

F64 = torch.float64
LN2, LN3 = math.log(2.0), math.log(3.0)


def test_response_nll_counts_only_response_tokens_shifted_by_one():
    # Row 0: tokens [2, 1, 0, 1], prompt = the first two. Row 1: [1, 2, 0(pad), 0(pad)], prompt = token 0.
    input_ids = torch.tensor([[2, 1, 0, 1], [1, 2, 0, 0]])
    response_mask = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    # Column t predicts token t + 1. Counted predictions (target is a response token):
    #   row 0, col 1 -> token 0: logits [ln2, 0, 0] -> p = 2/4 -> −log p = ln 2
    #   row 0, col 2 -> token 1: logits [0, 0, 0]   -> p = 1/3 -> ln 3
    #   row 1, col 0 -> token 2: logits [0, 0, ln2] -> p = 2/4 -> ln 2
    # Everything else is garbage that must not count: col 0 of row 0 predicts a prompt token,
    # the last column predicts nothing, row 1's later columns predict padding.
    logits = torch.tensor([
        [[9.0, -9.0, 3.0], [LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [50.0, -50.0, 0.0]],
        [[0.0, 0.0, LN2], [-7.0, 7.0, 0.0], [30.0, 0.0, 0.0], [0.0, 40.0, 0.0]],
    ], dtype=F64, requires_grad=True)
    loss = response_nll(logits, input_ids, response_mask)
    assert loss.item() == pytest.approx((LN2 + LN3 + LN2) / 3)

    loss.backward()
    grad_norms = logits.grad.abs().sum(-1)
    # Only the three counted columns receive gradient.
    assert (grad_norms > 0).tolist() == [[False, True, True, False], [True, False, False, False]]


def test_response_nll_with_the_prompt_unmasked_differs():
    """Sanity: the mask matters (a full-sequence LM loss would also learn the prompt)."""
    input_ids = torch.tensor([[0, 1, 2]])
    logits = torch.zeros(1, 3, 3, dtype=F64)
    logits[0, 0, 1] = 5.0  # the prompt token 1 is predicted confidently
    response_only = response_nll(logits, input_ids, torch.tensor([[0, 0, 1]]))
    everything = response_nll(logits, input_ids, torch.tensor([[1, 1, 1]]))
    assert response_only.item() == pytest.approx(LN3)
    p1 = math.exp(5.0) / (math.exp(5.0) + 2.0)
    assert everything.item() == pytest.approx((-math.log(p1) + LN3) / 2)
