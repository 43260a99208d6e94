"""The step benchmark's Hydra overrides compose into valid ``ppo-lag`` configs: a key the
config schema dropped once broke every variant of ``benchmarks/ppo_lag_step.py`` unnoticed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rayrlhf.config import compose_config
from rayrlhf.config.validate import validate_config

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "ppo_lag_step.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("ppo_lag_step_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _benchmark()


@pytest.mark.parametrize("variant", list(bench.VARIANTS))
def test_every_benchmark_variant_composes_and_validates(variant, tmp_path):
    args = bench.parse_args(["--prompts", "16", "--new-tokens", "64", "--override", "run.verbose=false"])
    overrides = bench.rayrlhf_overrides(variant, args, str(tmp_path / "reward"), str(tmp_path / "cost"), steps=4)
    cfg = compose_config("ppo_lag", overrides, output_dir=str(tmp_path / "out"))
    validate_config(cfg)
    # Async runs one step more than it measures, so its last measured step overlaps too.
    assert (cfg.rollout.prompts_per_step, cfg.rollout.max_new_tokens) == (16, 64)
    assert cfg.steps == (5 if variant == "async" else 4)
    assert cfg.policy.dtype == ("auto" if "policy.dtype=auto" in bench.VARIANTS[variant] else "float32")
    assert list(cfg.logger) == ["jsonl"] and cfg.run.verbose is False


def test_lora_flag_selects_full_and_lora():
    assert bench.parse_args(["--lora"]).variants == bench.LORA_VARIANTS
    assert bench.parse_args(["--lora", "--variants", "best"]).variants == "best"
