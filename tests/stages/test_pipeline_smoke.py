"""The main job end to end on the tiny model (the `smoke` profile): every stage runs for real,
with two Safe RLHF rounds (issue 17 item 3, the Beaver v1 -> v3 loop): after the first PPO-Lag
round the policy answers fresh red-team prompts, the labelled pairs grow the judges' data, the
judges retrain, and PPO-Lag continues from the last policy. One pipeline run checks both."""

from __future__ import annotations

import json

import pytest

from rayrlhf.config import compose_config
from rayrlhf.config.validate import ConfigValueError, validate_config
from rayrlhf.data import load_rows
from rayrlhf.data.schemas import HARM_CATEGORIES
from rayrlhf.data.splits import normalize_prompt


def test_later_rounds_need_judges_the_pipeline_trains(tmp_path):
    for override in ("cost=/some/cost-model", "score_models=[moderation]", "onpolicy.enabled=false", "ppo_steps=0"):
        cfg = compose_config("pipeline", ["+profile=smoke", "rounds=2", override], output_dir=str(tmp_path))
        with pytest.raises(ConfigValueError, match="later rounds retrain"):
            validate_config(cfg)
    validate_config(compose_config("pipeline", ["+profile=smoke", "rounds=2"], output_dir=str(tmp_path)))


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_pipeline_with_two_rounds_writes_the_report(ray_cluster, tmp_path):
    from rayrlhf.stages.pipeline import run

    # A red-team pool of our own (4 per category), so the fresh prompts do not depend on ../shared.
    pool = tmp_path / "redteam.json"
    pool.write_text(json.dumps([{"prompt": f"red-team prompt {c} #{i}: how do I do harm {i}?", "category": category}
                                for c, category in enumerate(HARM_CATEGORIES) for i in range(4)]))
    mlruns = (tmp_path / "mlruns").as_uri()
    cfg = compose_config("pipeline", ["+profile=smoke", "score_training.num_workers=1", "run_sft=true",
                                      "rounds=2", "round_prompts=14", f"heldout_harmful.source={pool}",
                                      "num_heldout_harmful=14", "num_redteam_train=14", "benign_prompt_share=0.4",
                                      "threshold_answers=greedy", "ptx_refusal_share=0.5",
                                      "logger=[jsonl,tensorboard,wandb,mlflow]", "tracking.wandb_mode=offline",
                                      f"tracking.mlflow_tracking_uri={mlruns}"], output_dir=str(tmp_path))
    report = run(cfg)
    trackers_hold_every_step(tmp_path, mlruns, report)
    first_round_holds(tmp_path, report)
    second_round_holds(tmp_path, report)


def first_round_holds(tmp_path, report: dict) -> None:
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
    assert report["splits"]["redteam_train_rows"] == 14
    # The cost threshold is the starting policy's mean cost over its greedy answers (as asked).
    assert report["start_cost"]["answers"] == report["onpolicy"]["prompts"]
    assert report["start_cost"]["which_answers"] == "greedy"
    assert len(json.loads((tmp_path / "judge-data" / "onpolicy_greedy_answers.json").read_text())) == \
        report["onpolicy"]["prompts"]
    ppo_rows = [json.loads(line) for line in (tmp_path / "ppo-lag" / "metrics.jsonl").read_text().splitlines()]
    assert ppo_rows[0]["cost/threshold"] == pytest.approx(report["start_cost"]["mean"], abs=1e-6)
    # PPO-Lag draws from the mix the split reported (benign prompts up to benign_prompt_share).
    assert report["splits"]["prompts_ppo_benign_share"] >= 0.4
    drawn = [row["rollout/benign_share"] for row in ppo_rows]
    assert all(0.0 <= share <= 1.0 for share in drawn) and max(drawn) > 0.0

    evaluation = report["eval"]
    policies = list(evaluation["policies"])
    assert policies[0] == "initial" and policies[-2:] == ["ppo_lag", "round_2"]
    measures = {row["key"]: row for row in evaluation["measures"]}
    assert {"unsafe_rule", "flagged_moderation", "over_refusal_rule", "helpfulness_reward", "unsafe_cost"} <= set(measures)
    assert measures["unsafe_rule"]["n"] == report["splits"]["heldout_harmful"] == 14
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


def second_round_holds(tmp_path, report: dict) -> None:
    from safetensors.torch import load_file

    first, second = report["rounds"]
    assert (first["round"], second["round"]) == (1, 2)
    # Round 2's prompts: 14 fresh red-team prompts, none evaluated, none used in round 1.
    assert second["prompts"] == 14 and second["prompts_source"] == "fresh red-team prompts"
    answered = {normalize_prompt(r["prompt"]) for r in
                json.loads((tmp_path / "round-2" / "judge-data" / "onpolicy_sampled_answers.json").read_text())}
    evaluated = {normalize_prompt(r.prompt) for r in load_rows(str(tmp_path / "splits" / "heldout_harmful.json"),
                                                               "prompt").rows}
    round_one = {normalize_prompt(r.prompt) for r in load_rows(str(tmp_path / "splits" / "prompts_train.json"),
                                                               "prompt").rows}
    assert len(answered) == 14 and answered.isdisjoint(evaluated) and answered.isdisjoint(round_one)
    # The data grows: the cost data by every new pair; the red-team pairs do not reach the reward data.
    assert second["cost_rows"] == first["cost_rows"] + second["new_pairs"] > first["cost_rows"]
    assert second["reward_rows"] == first["reward_rows"]
    round_two_prompts = load_rows(str(tmp_path / "round-2" / "prompts_train.json"), "prompt").rows
    assert len(round_two_prompts) == len(round_one) + 14
    # The cost judge retrained on the grown data (new weights); the reward judge had nothing new.
    assert second["retrained"] == ["cost"]
    before = load_file(tmp_path / "train-cost" / "model" / "model.safetensors")
    after = load_file(tmp_path / "round-2" / "train-cost" / "model" / "model.safetensors")
    assert any(not before[name].equal(after[name]) for name in before)
    # PPO-Lag continued from round 1's policy, against the threshold re-read on the new cost model.
    assert second["start_policy"] == str(tmp_path / "ppo-lag" / "policy")
    rows = [json.loads(line) for line in (tmp_path / "round-2" / "ppo-lag" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == second["ppo_steps"] == 3
    assert rows[0]["cost/threshold"] == pytest.approx(second["threshold"])
    # The report has the round table; both rounds' policies were evaluated (checked above).
    text = (tmp_path / "report" / "report.md").read_text()
    table = text[text.index("## Safe RLHF rounds"):]
    assert "| 1 | " in table and "| 2 | 14 (fresh red-team prompts)" in table
    assert {"round2_onpolicy_judge_data", "round2_train_cost", "round2_ppo_lag"} <= set(report["timing_s"])


def trackers_hold_every_step(out, mlruns: str, report: dict) -> None:
    """Every trainer's per-step metrics, read back from metrics.jsonl, the W&B offline files and
    the MLflow store: the same steps and values in each, one tracker run per stage, grouped."""
    from tracker_files import read_mlflow, read_wandb_offline

    mlflow_runs = read_mlflow(mlruns)
    stages = {"train-sft": "train/loss", "train-reward": "train/loss", "train-cost": "train/loss",
              "train-moderation": "train/loss", "ppo-lag": "reward/mean",
              "round-2/train-cost": "train/loss", "round-2/ppo-lag": "reward/mean"}
    # One tracker run per stage, round 2's apart from round 1's: named <group>/<stage folder>.
    assert set(mlflow_runs) == {f"{out.name}/{stage}" for stage in stages}
    for stage, key in stages.items():
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows]
        assert steps == list(range(1, len(rows) + 1)) and len(rows) >= 3, stage
        wandb_run = read_wandb_offline(out / stage)
        assert (wandb_run["group"], wandb_run["name"]) == (out.name, f"{out.name}/{stage}")
        assert sorted(wandb_run["history"]) == steps, stage
        assert [wandb_run["history"][s][key] for s in steps] == pytest.approx([r[key] for r in rows]), stage
        mlflow_run = mlflow_runs[f"{out.name}/{stage}"]
        assert [s for s, _ in mlflow_run["metrics"][key]] == steps, stage
        assert [v for _, v in mlflow_run["metrics"][key]] == pytest.approx([r[key] for r in rows]), stage
        assert mlflow_run["tags"]["rayrlhf.group"] == out.name
        assert (out / stage / "tensorboard").is_dir()
    assert len(json.loads((out / "train-reward" / "metrics.jsonl").read_text().splitlines()[-1])) >= 3
    # The SFT stage ran; its config is in both trackers.
    assert "sft" in report and read_wandb_offline(out / "train-sft")["config"]["dataset"]["schema"] == "sft"
    sft_run = mlflow_runs[f"{out.name}/train-sft"]
    assert sft_run["params"]["training.lr"] == "0.001"
