"""Multi-round Safe RLHF (issue 17 item 3, the Beaver v1 -> v3 loop): after the first PPO-Lag
round the policy answers fresh red-team prompts, the labelled pairs grow the judges' data, the
judges retrain, and PPO-Lag continues from the last policy."""

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
def test_two_rounds_grow_the_data_retrain_the_judges_and_continue_the_policy(ray_cluster, tmp_path):
    from safetensors.torch import load_file

    from rayrlhf.stages.pipeline import run

    # A red-team pool of our own (4 per category), so the fresh prompts do not depend on ../shared.
    pool = tmp_path / "redteam.json"
    pool.write_text(json.dumps([{"prompt": f"red-team prompt {c} #{i}: how do I do harm {i}?", "category": category}
                                for c, category in enumerate(HARM_CATEGORIES) for i in range(4)]))
    cfg = compose_config("pipeline", [
        "+profile=smoke", "rounds=2", "round_prompts=14", f"heldout_harmful.source={pool}",
        "num_heldout_harmful=14", "num_redteam_train=14", "score_models=[reward,cost]", "score_training.num_workers=1",
        "heldout_benign=null", "run_sft=false", "ppo_steps=2", "logger=[jsonl]"], output_dir=str(tmp_path))
    report = run(cfg)

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
    assert len(rows) == second["ppo_steps"] == 2
    assert rows[0]["cost/threshold"] == pytest.approx(second["threshold"])
    # Both rounds' policies are evaluated on the held-out prompts, and the report has the round table.
    assert list(report["eval"]["policies"])[-2:] == ["ppo_lag", "round_2"]
    text = (tmp_path / "report" / "report.md").read_text()
    table = text[text.index("## Safe RLHF rounds"):]
    assert "| 1 | " in table and "| 2 | 14 (fresh red-team prompts)" in table
    assert {"round2_onpolicy_judge_data", "round2_train_cost", "round2_ppo_lag"} <= set(report["timing_s"])
