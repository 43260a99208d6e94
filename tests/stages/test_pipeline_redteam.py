"""The pipeline's red-team training prompts and its threshold from the starting policy (issue 11):
the BeaverTails prompts not drawn for evaluation train PPO-Lag and the judges, never the
held-out ones; the cost threshold is the starting policy's mean cost as PPO-Lag would score it."""

from __future__ import annotations

import json

import pytest

from rayrlhf.config import compose_config
from rayrlhf.data import PromptRow, load_rows
from rayrlhf.data.schemas import HARM_CATEGORIES
from rayrlhf.data.splits import normalize_prompt
from rayrlhf.eval.refusal import is_refusal
from rayrlhf.stages.pipeline import build_splits, redteam_training_rows, start_cost


def _pool(per_category: int) -> list[PromptRow]:
    return [PromptRow(prompt=f"red-team prompt {c} #{i}", category=category, category_id=c)
            for c, category in enumerate(HARM_CATEGORIES) for i in range(per_category)]


def test_redteam_rows_skip_the_heldout_ones_and_cover_every_category():
    pool = _pool(5)
    heldout = pool[::5]  # one per category
    rows = redteam_training_rows(pool, heldout, 28)
    assert len(rows) == 28
    assert {normalize_prompt(r.prompt) for r in rows}.isdisjoint({normalize_prompt(r.prompt) for r in heldout})
    assert {r.category for r in rows} == set(HARM_CATEGORIES)
    assert redteam_training_rows(pool, heldout, 0) == []
    assert len(redteam_training_rows(pool, heldout, 10_000)) == len(pool) - len(heldout)


def test_build_splits_adds_the_redteam_rows_to_the_ppo_prompts_only(tmp_path):
    pool_file = tmp_path / "redteam.json"
    pool_file.write_text(json.dumps([{"prompt": r.prompt, "category": r.category} for r in _pool(4)]))
    cfg = compose_config("pipeline", ["+profile=smoke",
                                      f"heldout_harmful.source={pool_file}", "num_heldout_harmful=14",
                                      "num_redteam_train=20", "benign_prompt_share=0.5", "ptx_refusal_share=0"],
                         output_dir=str(tmp_path))
    splits = build_splits(cfg, tmp_path / "splits")
    heldout = {normalize_prompt(r.prompt) for r in splits["harmful"]}
    assert len(heldout) == 14 and splits["counts"]["redteam_train_rows"] == 20
    trained = load_rows(str(tmp_path / "splits" / "prompts_train.json"), "prompt").rows
    redteam = [r for r in trained if r.prompt.startswith("red-team prompt")]
    assert len(redteam) == 20 and all(r.category in HARM_CATEGORIES for r in redteam)
    assert heldout.isdisjoint(normalize_prompt(r.prompt) for r in trained)
    assert [r.prompt for r in splits["train_prompts"]] == [r.prompt for r in trained]
    # PPO-Lag draws from the same prompts, the benign ones repeated up to the configured share.
    ppo = splits["ppo_prompts"]
    assert {r.prompt for r in ppo} == {r.prompt for r in trained}
    benign = sum(not r.category for r in ppo) / len(ppo)
    assert benign >= cfg.benign_prompt_share > sum(not r.category for r in trained) / len(trained)
    assert splits["counts"]["prompts_ppo_benign_share"] == pytest.approx(benign)
    # The other training sets are the demo ones: no red-team prompt was added there.
    sft = load_rows(str(tmp_path / "splits" / "sft_train.json"), "sft").rows
    assert not any(r.prompt.startswith("red-team prompt") for r in sft)
    # PTX trains on the SFT rows without their refusals (ptx_refusal_share=0).
    ptx = load_rows(str(tmp_path / "splits" / "ptx_train.json"), "sft").rows
    assert [r.prompt for r in ptx] == [r.prompt for r in sft if not is_refusal(r.output)]
    assert 0 < len(ptx) < len(sft) == splits["counts"]["sft_train_rows"]


def test_without_the_external_set_no_redteam_rows_are_added(tmp_path):
    cfg = compose_config("pipeline", ["+profile=smoke", "heldout_harmful=null", "num_redteam_train=50"],
                         output_dir=str(tmp_path))
    splits = build_splits(cfg, tmp_path / "splits")
    assert splits["counts"]["redteam_train_rows"] == 0


def test_start_cost_scores_cut_answers_as_unfinished(tiny_model_dir, tmp_path):
    """The threshold is the cost PPO-Lag's rollouts would get: an answer the length limit cut
    off is scored open (no end of turn), as the driver scores it."""
    from rayrlhf.models.score_model import ScoreModel
    from rayrlhf.rewards import make_scorer

    import torch

    from rayrlhf.models import load_tokenizer

    path = str(tmp_path / "cost")
    torch.manual_seed(0)
    ScoreModel.from_pretrained(tiny_model_dir, kind="cost").save_pretrained(path, load_tokenizer(tiny_model_dir))
    sampled = [{"prompt": "How do I pick a lock?", "response": "First you take a tension wrench and", "finished": False},
               {"prompt": "Write a haiku about tea.", "response": "Steam curls from the cup.", "finished": True}]
    result = start_cost(path, sampled)
    scorer = make_scorer(path)
    prompts, responses = [s["prompt"] for s in sampled], [s["response"] for s in sampled]
    as_driver = scorer(prompts, responses, [[], []], [False, True])
    assert result["mean"] == pytest.approx(float(as_driver.mean()), abs=1e-6)
    assert result["answers"] == 2
    # Weighted by how often each prompt occurs in PPO-Lag's prompt rows (the haiku 3 times).
    rows = [PromptRow(prompt="How do I pick a lock?", category="privacy_violation", category_id=0),
            *[PromptRow(prompt="Write a haiku about tea.", category=None, category_id=None)] * 3]
    weighted = start_cost(path, sampled, rows)
    assert weighted["mean"] == pytest.approx((float(as_driver[0]) + 3 * float(as_driver[1])) / 4, abs=1e-6)
    assert weighted["unweighted_mean"] == pytest.approx(result["mean"], abs=1e-6)
    closed = scorer(prompts, responses, [[], []], [True, True])
    assert float(closed[0]) != pytest.approx(float(as_driver[0]), abs=1e-6)


def test_threshold_from_start_needs_sampled_answers():
    from rayrlhf.config.validate import validate_config

    with pytest.raises(ValueError, match="threshold_from_start"):
        validate_config(compose_config("pipeline", ["threshold_from_start=true", "threshold_answers=sampled",
                                                   "onpolicy.samples_per_prompt=1"],
                                       output_dir="/tmp/o"))
    # Greedy answers need one answer per prompt, but the on-policy answers all the same.
    validate_config(compose_config("pipeline", ["threshold_from_start=true", "threshold_answers=greedy",
                                                "onpolicy.samples_per_prompt=1"], output_dir="/tmp/o"))
    with pytest.raises(ValueError, match="greedy answers: onpolicy.enabled=true"):
        validate_config(compose_config("pipeline", ["threshold_from_start=true", "threshold_answers=greedy",
                                                    "onpolicy.enabled=false"], output_dir="/tmp/o"))
