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

    mlruns = (tmp_path / "mlruns").as_uri()
    cfg = compose_config("pipeline", ["+profile=smoke", "score_training.num_workers=1", "run_sft=true",
                                      "logger=[jsonl,tensorboard,wandb,mlflow]", "tracking.wandb_mode=offline",
                                      f"tracking.mlflow_tracking_uri={mlruns}"], output_dir=str(tmp_path))
    report = run(cfg)
    trackers_hold_every_step(tmp_path, mlruns, report)
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
    if report["splits"]["heldout_harmful_source"] != "demo held-out split":  # ../shared/data present
        assert report["splits"]["redteam_train_rows"] == 8
    # The cost threshold is the starting policy's mean cost over its sampled answers.
    assert report["start_cost"]["answers"] == report["onpolicy"]["prompts"]
    ppo_rows = [json.loads(line) for line in (tmp_path / "ppo-lag" / "metrics.jsonl").read_text().splitlines()]
    assert ppo_rows[0]["cost/threshold"] == pytest.approx(report["start_cost"]["mean"], abs=1e-6)

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
    assert text.index("## PPO-Lag training") < text.index("## Score-model and SFT training")
    for png in ("training.png", "unsafe_by_category.png", "loss_curves.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000 and f"({png})" in text
    saved = json.loads((tmp_path / "pipeline_report.json").read_text())
    assert set(saved["timing_s"]) >= {"split", "onpolicy_judge_data", "train_reward", "train_cost",
                                      "train_moderation", "ppo_lag", "eval_initial", "eval_ppo_lag"}


def trackers_hold_every_step(out, mlruns: str, report: dict) -> None:
    """Every trainer's per-step metrics, read back from metrics.jsonl, the W&B offline files and
    the MLflow store: the same steps and values in each, one tracker run per stage, grouped."""
    from tracker_files import read_mlflow, read_wandb_offline

    mlflow_runs = read_mlflow(mlruns)
    stages = {"train-sft": "train/loss", "train-reward": "train/loss", "train-cost": "train/loss",
              "train-moderation": "train/loss", "ppo-lag": "reward/mean"}
    assert len(mlflow_runs) == len(stages)
    for stage, key in stages.items():
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows]
        assert steps == list(range(1, len(rows) + 1)) and len(rows) >= 3, stage
        wandb_run = read_wandb_offline(out / stage)
        assert wandb_run["group"] == out.name and wandb_run["name"].endswith(stage)
        assert sorted(wandb_run["history"]) == steps, stage
        assert [wandb_run["history"][s][key] for s in steps] == pytest.approx([r[key] for r in rows]), stage
        (mlflow_run,) = [run for name, run in mlflow_runs.items() if name.endswith(stage)]
        assert [s for s, _ in mlflow_run["metrics"][key]] == steps, stage
        assert [v for _, v in mlflow_run["metrics"][key]] == pytest.approx([r[key] for r in rows]), stage
        assert mlflow_run["tags"]["rayrlhf.group"] == out.name
        assert (out / stage / "tensorboard").is_dir()
    assert len(json.loads((out / "train-reward" / "metrics.jsonl").read_text().splitlines()[-1])) >= 3
    # The SFT stage ran; its config is in both trackers.
    assert "sft" in report and read_wandb_offline(out / "train-sft")["config"]["dataset"]["schema"] == "sft"
    (sft_run,) = [run for name, run in mlflow_runs.items() if name.endswith("train-sft")]
    assert sft_run["params"]["training.lr"] == "0.001"
