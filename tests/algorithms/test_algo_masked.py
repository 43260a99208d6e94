"""Masked reductions against numpy on the valid entries only."""

import numpy as np
import pytest
import torch

from rayrlhf.algorithms import masked_mean, masked_sum, masked_var, masked_whiten

# Right-padded rows of lengths 5, 3 and 1; padding holds large garbage that must not leak in.
LENGTHS = [5, 3, 1]


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = True
    x = torch.where(mask, x, torch.full_like(x, 1e6))
    return x, mask


def test_sum_and_mean_over_all_valid_entries():
    x, mask = _example()
    valid = x.numpy()[mask.numpy()]
    assert masked_sum(x, mask).item() == pytest.approx(valid.sum())
    assert masked_mean(x, mask).item() == pytest.approx(valid.mean())


def test_mean_along_a_dimension_is_per_row():
    x, mask = _example()
    expected = [x[row, :length].mean().item() for row, length in enumerate(LENGTHS)]
    assert masked_mean(x, mask, dim=-1).tolist() == pytest.approx(expected)


def test_mean_of_an_all_padding_slice_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0]])
    assert masked_mean(x, torch.zeros_like(x)).item() == 0.0


def test_var_uses_bessel_correction_and_is_zero_for_one_entry():
    x, mask = _example()
    valid = x.numpy()[mask.numpy()]
    assert masked_var(x, mask).item() == pytest.approx(np.var(valid, ddof=1))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(np.var(valid))
    single = torch.tensor([[4.0, 9.0]], dtype=torch.float64)
    assert masked_var(single, torch.tensor([[1, 0]])).item() == 0.0


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_numpy_on_valid_entries_and_zeroes_padding(shift_mean):
    x, mask = _example()
    eps = 1e-8
    valid = x.numpy()[mask.numpy()]
    expected = (valid - valid.mean()) / np.sqrt(valid.var(ddof=1) + eps)
    if not shift_mean:
        expected = expected + valid.mean()
    whitened = masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
    np.testing.assert_allclose(whitened.numpy()[mask.numpy()], expected, rtol=1e-12)
    assert torch.all(whitened[~mask] == 0)


def test_numeric_mask_behaves_like_bool_mask():
    x, mask = _example()
    assert masked_mean(x, mask.float()).item() == pytest.approx(masked_mean(x, mask).item())


def test_loss_aggregation_by_hand():
    from rayrlhf.algorithms.masked import aggregate_token_losses

    losses = torch.tensor([[1.0, 3.0, 5.0, 7.0], [10.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    # Row means 4 and 10 (the empty row is left out): (4 + 10) / 2.
    assert aggregate_token_losses(losses, mask, "seq_mean").item() == pytest.approx(7.0)
    # All valid tokens pooled: (1 + 3 + 5 + 7 + 10) / 5; the long row dominates.
    assert aggregate_token_losses(losses, mask, "token_mean").item() == pytest.approx(5.2)
    assert aggregate_token_losses(losses, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        aggregate_token_losses(losses, mask, "sum")


def test_seq_mean_gives_each_response_equal_gradient_weight():
    from rayrlhf.algorithms.masked import aggregate_token_losses

    x = torch.ones(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    aggregate_token_losses(x, mask, "seq_mean").backward()
    # Row 0 spreads 1/2 over 4 tokens, row 1 puts 1/2 on its single token.
    torch.testing.assert_close(x.grad, torch.tensor([[0.125] * 4, [0.5, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("how", ["seq_mean", "token_mean"])
def test_shares_of_parts_add_up_to_the_whole_batch_loss(how):
    """A mini-batch computed as several micro-batches: Σ share · loss(part) = loss(whole), by
    hand for rows of 3, 1 and 2 valid tokens (the third row is empty in the second part)."""
    from rayrlhf.algorithms import aggregate_token_losses, aggregation_share

    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 7.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    # seq_mean by hand: row means 2, 4, 6 (the empty row is left out) -> 4;
    # token_mean: (1 + 2 + 3 + 4 + 5 + 7) / 6 = 11/3.
    assert float(aggregate_token_losses(losses, mask, how)) == pytest.approx(4.0 if how == "seq_mean" else 11 / 3)
    parts = [[0], [1, 3], [2]]
    shares = [aggregation_share(mask[p], mask, how) for p in parts]
    assert shares == pytest.approx([1 / 3, 1 / 3, 1 / 3] if how == "seq_mean" else [3 / 6, 1 / 6, 2 / 6])
    total = sum(s * float(aggregate_token_losses(losses[p], mask[p], how)) for s, p in zip(shares, parts))
    assert total == pytest.approx(float(aggregate_token_losses(losses, mask, how)))
    assert aggregation_share(mask[[3]], mask[[3]], how) == 0.0  # nothing valid anywhere
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregation_share(mask, mask, "row_sum")
