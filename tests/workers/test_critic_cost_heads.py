"""The critic's K cost value heads (lagrange.per_category), in process on the tiny model:
values come back [b, R, K] for the cost stream, and the scalar layout is unchanged."""

from __future__ import annotations

import torch

from rayrlhf.models import resolve_model_path
from rayrlhf.types import build_rollout_batch
from rayrlhf.workers.base import OptimConfig
from rayrlhf.workers.critic import CriticWorker, load_critic


def test_shared_critic_has_one_head_per_category_and_returns_them_stacked():
    path = resolve_model_path("tiny-llama")
    torch.manual_seed(0)
    critic = CriticWorker(("reward", "cost"), path, optim=OptimConfig(lr=1e-3), dtype="float32", cost_heads=3)
    assert critic.model.inner.score.out_features == 4
    assert critic.model.labels == ["reward_value", "cost_value_0", "cost_value_1", "cost_value_2"]
    assert critic.head_columns() == {"reward": 0, "cost": slice(1, 4)}
    batch = build_rollout_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], [True, False], pad_token_id=0)
    values = critic.values(batch)
    assert values["reward"].shape == (2, 3) and values["cost"].shape == (2, 3, 3)
    # Each column is its own head: the same forward pass read at columns 1..3.
    scalar = CriticWorker(("reward", "cost"), path, optim=OptimConfig(lr=1e-3), dtype="float32")
    scalar.model.inner.score.weight.data.copy_(critic.model.inner.score.weight.data[[0, 2]])
    if scalar.model.inner.score.bias is not None:
        scalar.model.inner.score.bias.data.copy_(critic.model.inner.score.bias.data[[0, 2]])
    scalar.model.inner.model.load_state_dict(critic.model.inner.model.state_dict())
    plain = scalar.values(batch)
    assert plain["cost"].shape == (2, 3)
    torch.testing.assert_close(plain["cost"], values["cost"][..., 1])
    torch.testing.assert_close(plain["reward"], values["reward"])
    assert values["cost"][0, 2].abs().sum() == 0 and values["cost"][1].abs().sum() > 0  # padding is 0


def test_separate_cost_critic_with_one_category_is_the_one_head_model():
    model = load_critic(("cost",), {"cost": resolve_model_path("tiny-llama")}, cost_heads=1)
    assert model.inner.score.out_features == 1
