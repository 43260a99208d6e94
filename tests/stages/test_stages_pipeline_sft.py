"""The pipeline's optional SFT stage: off by default; when on, its output is PPO-Lag's policy."""

from __future__ import annotations

from rayrlhf.config import compose_config, to_object
from rayrlhf.config.schema import PPOLagConfig, SFTConfig
from rayrlhf.stages.pipeline import ppo_lag_config, sft_config


def test_sft_is_on_by_default_and_ptx_uses_its_rows():
    cfg = compose_config("pipeline", [], output_dir="/tmp/o")
    assert cfg.run_sft is True and cfg.ppo.ptx_coef > 0
    sub = ppo_lag_config(cfg, "r", "c", "/tmp/o/ppo-lag", ptx=cfg.sft)
    assert sub.ptx.source == cfg.sft.source
    no_ptx = ppo_lag_config(compose_config("pipeline", ["ppo.ptx_coef=0"], output_dir="/tmp/o"), "r", "c",
                            "/tmp/o/ppo-lag", ptx=cfg.sft)
    assert no_ptx.ptx is None


def test_sft_stage_config_follows_the_pipeline(tmp_path):
    cfg = compose_config("pipeline", ["+profile=smoke", "run_sft=true", "template.name=safe_rlhf",
                                      "sft_training.epochs=3", "eval_fraction=0.2"], output_dir=str(tmp_path))
    sub = to_object(sft_config(cfg, tmp_path / "train-sft"))
    assert type(sub) is SFTConfig
    assert sub.model.name_or_path == "tiny-llama" and sub.dataset.schema == "sft"
    assert sub.dataset.source == cfg.sft.source and sub.template.name == "safe_rlhf"
    assert sub.training.epochs == 3 and sub.training.lr == 1e-3  # smoke profile's sft_training
    assert sub.eval_fraction == 0.2 and sub.run.output_dir == str(tmp_path / "train-sft")


def test_ppo_lag_starts_from_the_given_policy(tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_config("pipeline", ["+profile=smoke"], output_dir=str(tmp_path))
    sft_dir = str(tmp_path / "train-sft" / "model")
    policy = OmegaConf.merge(cfg.model, {"name_or_path": sft_dir})
    sub = to_object(ppo_lag_config(cfg, "rule:a:b", "rule:a:c", tmp_path / "ppo-lag", policy=policy))
    assert type(sub) is PPOLagConfig
    assert sub.policy.name_or_path == sft_dir and sub.policy.dtype == cfg.model.dtype
    # Without one, the pipeline's model as before.
    plain = to_object(ppo_lag_config(cfg, "rule:a:b", "rule:a:c", tmp_path / "ppo-lag"))
    assert plain.policy.name_or_path == "tiny-llama"
