"""LoRA adapters (rayrlhf.models.lora) on the tiny Llama and its score model, without Ray or
DeepSpeed: adapters off is the base model bit for bit, the merged weights are W + alpha/r · BA,
and the saved adapter and merged folders reload to the trained model."""

from __future__ import annotations

import pytest
import torch

from rayrlhf.models import load_causal_lm
from rayrlhf.models.lora import (
    LLAMA_LINEAR_LAYERS, LoRASpec, adapters_disabled, add_lora, lora_layers, merged_state_dict, merged_weights,
    save_adapter,
)
from rayrlhf.models.score_model import ScoreModel


def trained_lora_model(path: str, spec: LoRASpec, seed: int = 0):
    """The tiny model with adapters whose B is no longer 0 (as after training)."""
    model = load_causal_lm(path, dtype="float32").eval()
    add_lora(model, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=generator) * 0.05)
    return model


def test_adapters_off_is_the_base_model_exactly_and_on_is_not(tiny_model_dir):
    base = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    model = trained_lora_model(tiny_model_dir, LoRASpec(rank=4, alpha=8))
    ids = torch.randint(3, 200, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        with adapters_disabled(model):
            off = model(input_ids=ids).logits
        on = model(input_ids=ids).logits
    assert torch.equal(off, expected)
    assert (on - expected).abs().max() > 1e-2
    # The switch leaves the adapters trainable, and nothing else.
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)


def test_a_fresh_adapter_starts_as_the_base_model(tiny_model_dir):
    """B = 0 at the start: the LoRA policy's first rollouts are the initial policy's."""
    base = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    add_lora(model, LoRASpec())
    ids = torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_merged_weights_are_w_plus_scaled_ba_under_the_plain_names(tiny_model_dir):
    spec = LoRASpec(rank=4, alpha=12, target_modules=("q_proj", "down_proj"))
    model = trained_lora_model(tiny_model_dir, spec)
    base_state = load_causal_lm(tiny_model_dir, dtype="float32").state_dict()
    merged = merged_state_dict(model)
    assert set(merged) == set(base_state)
    layer = model.model.layers[1].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = base_state["model.layers.1.self_attn.q_proj.weight"] + (12 / 4) * (b @ a)
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"], expected, rtol=0, atol=1e-6)
    assert torch.equal(merged["model.layers.1.self_attn.k_proj.weight"],
                       base_state["model.layers.1.self_attn.k_proj.weight"])  # not targeted


def test_a_sync_of_the_changed_weights_leaves_out_exactly_the_frozen_base(tiny_model_dir):
    """``changed_only`` (what a LoRA weight sync sends): the adapted weights, merged as in the
    full state, and nothing the base checkpoint already holds."""
    spec = LoRASpec(rank=4, alpha=12, target_modules=("q_proj", "down_proj"))
    model = trained_lora_model(tiny_model_dir, spec)
    full = merged_state_dict(model)
    changed = dict(merged_weights(model, changed_only=True))
    assert set(changed) == {f"{name}.weight" for name in lora_layers(model)}
    assert all(torch.equal(tensor, full[name]) for name, tensor in changed.items())
    # A weight that trains outside the adapters (none does under add_lora) would travel too.
    model.model.norm.weight.requires_grad_(True)
    assert set(dict(merged_weights(model, changed_only=True))) == set(changed) | {"model.norm.weight"}


def test_bf16_merge_rounds_once_from_the_fp32_sum(tiny_model_dir):
    """A bf16 engine gets round(W + s·BA) computed in fp32: no second rounding of the delta
    on its way (peft's bf16 delta rounds before the add, off by a bf16 ulp on some entries)."""
    spec = LoRASpec(rank=4, alpha=8, target_modules=("q_proj",))
    model = trained_lora_model(tiny_model_dir, spec)
    model.to(torch.bfloat16)
    merged = merged_state_dict(model, torch.bfloat16)
    layer = model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    w = layer.get_base_layer().weight.float()
    expected = (w + 2.0 * (b @ a)).to(torch.bfloat16)
    got = merged["model.layers.0.self_attn.q_proj.weight"]
    assert got.dtype == torch.bfloat16
    # fp32 sums may differ in their last bits by summation order; after rounding to bf16 they
    # agree except at exact ties, so allow one ulp on a tiny share of entries.
    ulp = (got.float() - expected.float()).abs() > 0
    assert ulp.float().mean() < 1e-3, ulp.float().mean()


def test_saved_adapter_and_merged_folder_reload_to_the_trained_model(tiny_model_dir, tmp_path):
    from peft import PeftModel

    spec = LoRASpec(rank=4, alpha=8)
    model = trained_lora_model(tiny_model_dir, spec)
    save_adapter(model, spec, tmp_path / "adapter", tiny_model_dir)
    model.save_pretrained(tmp_path / "merged", state_dict=merged_state_dict(model))
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        from_adapter = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir, dtype="float32"),
                                                 str(tmp_path / "adapter")).eval()(input_ids=ids).logits
        from_merged = load_causal_lm(tmp_path / "merged", dtype="float32").eval()(input_ids=ids).logits
    assert torch.equal(from_adapter, trained)  # the same computation on the same tensors
    torch.testing.assert_close(from_merged, trained, rtol=0, atol=1e-5)  # W + BA rounded once


def test_backward_reaches_only_the_adapters_and_the_critic_heads(tiny_model_dir):
    """Frozen base weights get no gradient (the backward computes none for them)."""
    from rayrlhf.workers.critic import load_critic

    model = load_causal_lm(tiny_model_dir, dtype="float32")
    add_lora(model, LoRASpec(rank=2))
    ids = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(4))
    model(input_ids=ids).logits.square().mean().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {name for name, _ in model.named_parameters() if ".lora_" in name}
    critic = load_critic(("reward", "cost"), {"reward": tiny_model_dir, "cost": tiny_model_dir})
    add_lora(critic, LoRASpec(rank=2))
    critic.inner.score.requires_grad_(True)  # as CriticWorker does: the value heads train whole
    critic(ids, torch.ones_like(ids)).scores.square().mean().backward()
    with_grad = {name for name, p in critic.named_parameters() if p.grad is not None}
    assert "inner.score.weight" in with_grad
    assert with_grad - {"inner.score.weight", "inner.score.bias"} == {
        name for name, _ in critic.named_parameters() if ".lora_" in name}


def test_target_modules_that_name_no_layer_are_refused_with_the_layers_there(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="float32")
    with pytest.raises(ValueError, match=r"ppo.lora.target_modules=\['qkv'\].*q_proj"):
        add_lora(model, LoRASpec(target_modules=("qkv",)))


def test_config_block_defaults_and_checks():
    from rayrlhf.config import compose_config
    from rayrlhf.config.validate import ConfigValueError, validate_config

    cfg = compose_config("ppo_lag", ["+experiment=synthetic"])
    assert cfg.ppo.lora.enabled is False
    assert tuple(cfg.ppo.lora.target_modules) == LLAMA_LINEAR_LAYERS  # the schema's copy of the default
    bad = compose_config("ppo_lag", ["+experiment=synthetic", "ppo.lora.enabled=true", "ppo.lora.rank=0",
                                     "ppo.lora.alpha=0", "ppo.lora.dropout=1", "ppo.lora.target_modules=[]"])
    with pytest.raises(ConfigValueError) as info:
        validate_config(bad)
    assert {key for key, _, _ in info.value.problems} >= {
        "ppo.lora.rank", "ppo.lora.alpha", "ppo.lora.dropout", "ppo.lora.target_modules"}


def test_the_lm_head_gets_an_adapter_only_where_it_is_not_the_embedding(tiny_model_dir):
    """A tied head adapted would split from the embedding that engines keep as one tensor; an
    untied head can carry an adapter, and its merged weight goes to the engines."""
    from rayrlhf.models import resolve_model_path

    with_head = LoRASpec(rank=2, target_modules=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="ties it to the input embedding"):
        add_lora(load_causal_lm(tiny_model_dir, dtype="float32"), with_head)
    untied = load_causal_lm(resolve_model_path("tiny-llama-untied"), dtype="float32")
    add_lora(untied, with_head)
    assert "lm_head" in lora_layers(untied)
    assert "lm_head.weight" in merged_state_dict(untied)
