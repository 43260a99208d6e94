"""The main job end to end on the tiny model (the `smoke` profile): every stage runs for real."""

from __future__ import annotations

import json

import pytest

from rayrlhf.config import compose_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_smoke_pipeline_writes_the_report(ray_cluster, tmp_path):
    from rayrlhf.data import load_rows
    from rayrlhf.data.splits import normalize_prompt
    from rayrlhf.stages.pipeline import run

    cfg = compose_config("pipeline", ["+profile=smoke", "score_training.num_workers=1"], output_dir=str(tmp_path))
    report = run(cfg)
    assert set(report["score_models"]) == {"reward", "cost", "moderation"}
    for kind in ("reward", "cost", "moderation"):
        assert (tmp_path / f"train-{kind}" / "model" / "model.safetensors").is_file()
    assert report["ppo_lag"]["step"] == 3
    assert (tmp_path / "ppo-lag" / "policy" / "config.json").is_file()

    # No training set holds an evaluation prompt (checked here from the files, independently
    # of the pipeline's own check).
    splits = tmp_path / "splits"
    evaluated = {normalize_prompt(r.prompt) for name in ("heldout_harmful", "heldout_benign")
                 for r in load_rows(str(splits / f"{name}.json"), "prompt").rows}
    assert len(evaluated) == report["splits"]["heldout_harmful"] + report["splits"]["heldout_benign"]
    for name, schema in (("prompts", "prompt"), ("preferences", "preference"),
                         ("qa_classification", "qa_classification"), ("sft", "sft")):
        trained = {normalize_prompt(r.prompt) for r in load_rows(str(splits / f"{name}_train.json"), schema).rows}
        assert trained and trained.isdisjoint(evaluated), name
    # The judges also trained on the starting policy's own answers, labelled by the refusal rule.
    assert report["onpolicy"]["pairs"] > 0
    assert (tmp_path / "judge-data" / "onpolicy_preferences.json").is_file()

    evaluation = report["eval"]
    policies = list(evaluation["policies"])
    assert policies[0] == "initial" and policies[-1] == "ppo_lag"
    measures = {row["key"]: row for row in evaluation["measures"]}
    assert {"unsafe_rule", "flagged_moderation", "over_refusal_rule", "helpfulness_reward", "unsafe_cost"} <= set(measures)
    assert measures["unsafe_rule"]["n"] == report["splits"]["heldout_harmful"]
    assert measures["unsafe_rule"]["independent"] and not measures["unsafe_cost"]["independent"]
    for row in measures.values():
        for stat in row["policies"].values():
            assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
    # The moderation threshold was calibrated and saved with the model.
    assert 0 < report["score_models"]["moderation"]["eval/threshold"] < 1
    text = (tmp_path / "report" / "report.md").read_text()
    # The held-out table comes first, then the judges' quality.
    assert text.index("## Held-out evaluation") < text.index("## The judges' own quality")
    assert "*(optimised by PPO-Lag)*" in text and "Caveat" in text
    for png in ("training.png", "unsafe_by_category.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000 and f"({png})" in text
    saved = json.loads((tmp_path / "pipeline_report.json").read_text())
    assert set(saved["timing_s"]) >= {"split", "onpolicy_judge_data", "train_reward", "train_cost",
                                      "train_moderation", "ppo_lag", "eval_initial", "eval_ppo_lag"}
