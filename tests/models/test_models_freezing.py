"""Training only the top layers: what is frozen, and that the backward pass stops there."""

from __future__ import annotations

import pytest
import torch

from rayrlhf.models import load_causal_lm
from rayrlhf.models.freezing import decoder_layers, freeze_lower_layers
from rayrlhf.models.score_model import ScoreModel


def test_causal_lm_top_layers_only(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="float32")
    layers = decoder_layers(model)
    counts = freeze_lower_layers(model, 1)
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for layer in layers[:-1] for p in layer.parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    assert model.model.norm.weight.requires_grad
    assert 0 < counts["trainable_parameters"] < counts["parameters"]
    # The loss reaches the top layer only: no gradient is computed below it.
    ids = torch.tensor([[5, 6, 7, 8]])
    model(ids, labels=ids).loss.backward()
    assert layers[-1].mlp.down_proj.weight.grad is not None
    assert all(p.grad is None for p in layers[0].parameters())


def test_score_model_head_stays_trainable_and_none_trains_all(tiny_model_dir):
    model = ScoreModel.from_pretrained(tiny_model_dir, kind="reward", dtype="float32")
    freeze_lower_layers(model, 0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("score" in n or "norm" in n for n in trainable)
    whole = ScoreModel.from_pretrained(tiny_model_dir, kind="reward", dtype="float32")
    counts = freeze_lower_layers(whole, None)
    assert counts["trainable_parameters"] == counts["parameters"]
    assert freeze_lower_layers(whole, 99)["trainable_parameters"] == counts["parameters"]
    with pytest.raises(ValueError, match=">= 0"):
        freeze_lower_layers(whole, -1)
