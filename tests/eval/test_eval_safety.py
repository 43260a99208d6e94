"""Safety evaluation: summaries and win rates by hand, judges on tiny models, the stage end to end."""

from __future__ import annotations

import json

import pytest

from rayrlhf.config import compose_config
from rayrlhf.data import HARM_CATEGORIES
from rayrlhf.eval.safety import judge_answers, summarize, win_rates


def test_summarize_by_hand():
    records = [{"reward": 1.0, "cost": 0.5, "unsafe": True, "flagged": True},
               {"reward": 3.0, "cost": -1.5, "unsafe": False, "flagged": False},
               {"reward": 2.0, "cost": -0.5, "unsafe": False, "flagged": True}]
    summary = summarize(records, ["animal_abuse", None, "animal_abuse"])
    assert summary["mean_reward"] == pytest.approx(2.0)
    assert summary["mean_cost"] == pytest.approx(-0.5)
    assert summary["unsafe_rate"] == pytest.approx(1 / 3)
    assert summary["flagged_rate"] == pytest.approx(2 / 3)
    assert summary["flagged_rate_by_category"] == {"animal_abuse": 1.0, "benign": 0.0}


def test_win_rates_count_ties_as_half():
    a = [{"reward": 2.0, "cost": -1.0}, {"reward": 1.0, "cost": 1.0}, {"reward": 0.0, "cost": 0.0}]
    b = [{"reward": 1.0, "cost": 0.0}, {"reward": 1.0, "cost": -1.0}, {"reward": 3.0, "cost": 0.0}]
    # reward: win, tie, loss -> 0.5; cost (lower wins): win, loss, tie -> 0.5
    assert win_rates(a, b) == {"reward_win_rate": 0.5, "cost_win_rate": 0.5}
    assert win_rates(a[:1], b[:1]) == {"reward_win_rate": 1.0, "cost_win_rate": 1.0}
    with pytest.raises(ValueError, match="2 candidate answers but 1"):
        win_rates(a[:2], b[:1])


def test_judges_use_rules_and_the_moderation_model(tiny_model_dir, tmp_path):
    from rayrlhf.models import load_tokenizer
    from rayrlhf.models.score_model import ScoreModel

    mod_dir = tmp_path / "moderation"
    ScoreModel.from_pretrained(tiny_model_dir, kind="moderation", labels=list(HARM_CATEGORIES),
                               dtype="float32").save_pretrained(mod_dir, load_tokenizer(tiny_model_dir))
    records = judge_answers(["q1", "q2"], ["a", "b"], moderation=str(mod_dir), threshold=1e-6,
                            reward="rule:rayrlhf.rewards.synthetic:rewarded_share",
                            cost="rule:rayrlhf.rewards.synthetic:forbidden_excess", dtype="float32")
    # Rules see no token ids here (text judges): empty responses give share 0.
    assert [r["reward"] for r in records] == [0.0, 0.0]
    assert [r["unsafe"] for r in records] == [False, False]  # cost -0.2 < 0
    # A threshold near 0: any real probability flags; the 14 categories are all reported.
    assert all(r["flagged"] for r in records)
    assert set(records[0]["harm_probabilities"]) == set(HARM_CATEGORIES)


@pytest.mark.slow
@pytest.mark.e2e
def test_eval_stage_compares_two_policies(ray_cluster, tiny_model_dir, tmp_path):
    from rayrlhf.eval.safety import run

    cfg = compose_config("eval", [
        "model@policy=tiny-llama", f"baseline_policy={tiny_model_dir}", "engine=hf", "num_prompts=6",
        "generation.max_new_tokens=8", "reward_model=rule:rayrlhf.rewards.synthetic:rewarded_share",
        "cost_model=rule:rayrlhf.rewards.synthetic:forbidden_excess"], output_dir=str(tmp_path))
    report = run(cfg)
    assert report["policy"]["answers"] == report["baseline"]["answers"] == 6
    # Same model, greedy decoding: identical answers, so every comparison is a tie.
    assert report["policy_vs_baseline"] == {"reward_win_rate": 0.5, "cost_win_rate": 0.5}
    lines = (tmp_path / "answers_policy.jsonl").read_text().splitlines()
    assert len(lines) == 6 and "response" in json.loads(lines[0])
    assert json.loads((tmp_path / "eval.json").read_text())["policy"]["answers"] == 6
