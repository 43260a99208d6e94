"""The main job end to end on the tiny model (the `smoke` profile): every stage runs for real."""

from __future__ import annotations

import json

import pytest

from rayrlhf.config import compose_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_smoke_pipeline_writes_the_report(ray_cluster, tmp_path):
    from rayrlhf.stages.pipeline import run

    cfg = compose_config("pipeline", ["+profile=smoke", "score_training.num_workers=1"], output_dir=str(tmp_path))
    report = run(cfg)
    assert set(report["score_models"]) == {"reward", "cost", "moderation"}
    for kind in ("reward", "cost", "moderation"):
        assert (tmp_path / f"train-{kind}" / "model" / "model.safetensors").is_file()
    assert report["ppo_lag"]["step"] == 3
    assert (tmp_path / "ppo-lag" / "policy" / "config.json").is_file()
    before, after = report["eval"]["before"], report["eval"]["after"]
    assert before["answers"] == after["answers"] == 8
    assert {"mean_reward", "mean_cost", "flagged_rate", "flagged_rate_by_category"} <= set(after)
    text = (tmp_path / "report" / "report.md").read_text()
    for png in ("training.png", "cost_distribution.png", "flagged_by_category.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000 and f"({png})" in text
    saved = json.loads((tmp_path / "pipeline_report.json").read_text())
    assert set(saved["timing_s"]) >= {"train_reward", "train_cost", "train_moderation", "ppo_lag", "eval_after"}
