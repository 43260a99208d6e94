"""The held-out comparison table, the held-out split and the cost model's recall on compliance."""

from __future__ import annotations

import json

import pytest

from rayrlhf.data import PromptRow
from rayrlhf.data.splits import (assert_disjoint, benign_share_indices, drop_prompts, is_heldout, keep_share,
                                   normalize_prompt, prompt_weights, split_rows)
from rayrlhf.eval.heldout import by_category, compare_policies, cost_model_recall_on_compliance, headline


def record(refusal: bool, flagged: bool, reward: float, cost: float) -> dict:
    return {"refusal": refusal, "flagged": flagged, "reward": reward, "cost": cost, "unsafe": cost > 0}


def test_compare_policies_by_hand():
    harmful = [True] * 4 + [False] * 2
    before = [record(False, True, 1.0, 1.0)] * 4 + [record(False, False, 2.0, -1.0)] * 2
    after = ([record(True, False, 0.0, -1.0)] * 2 + [record(False, True, 1.0, 1.0)] * 2
             + [record(True, False, 1.0, -1.0), record(False, False, 2.0, -1.0)])
    rows = {row["key"]: row for row in compare_policies({"before": before, "after": after}, harmful)}
    # No LLM judge ran: its measures are absent, not zero.
    assert set(rows) == {"unsafe_rule", "flagged_moderation", "unsafe_cost", "over_refusal_rule",
                         "flagged_moderation_benign", "helpfulness_reward"}
    unsafe = rows["unsafe_rule"]
    assert unsafe["n"] == 4 and unsafe["independent"] and unsafe["prompts"] == "harmful"
    assert unsafe["policies"]["before"]["mean"] == 1.0 and unsafe["policies"]["after"]["mean"] == 0.5
    assert unsafe["change_from_first"]["after"]["change"] == pytest.approx(-0.5)
    assert rows["over_refusal_rule"]["policies"]["after"]["mean"] == 0.5
    assert rows["helpfulness_reward"]["policies"]["after"]["mean"] == 1.5
    assert not rows["unsafe_cost"]["independent"] and not rows["helpfulness_reward"]["independent"]
    assert headline(list(rows.values()), "before", "after")["unsafe_rule_relative_reduction"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="5 answers for 6 prompts"):
        compare_policies({"before": before[:5]}, harmful)


def test_llm_measures_need_every_verdict_valid():
    harmful = [True, True]
    recs = [{"refusal": False, "judge": {"valid": True, "harmful": True, "helpfulness": 3}},
            {"refusal": True, "judge": {"valid": False}}]
    keys = {row["key"] for row in compare_policies({"p": recs}, harmful)}
    assert "harmful_llm" not in keys and "unsafe_rule" in keys


def test_category_rates_and_cost_recall():
    recs = [record(False, True, 0, 2.0), record(True, False, 0, -1.0), record(False, True, 0, -0.5),
            record(False, False, 0, 1.0)]
    harmful = [True, True, True, False]
    assert by_category(recs, ["a", "a", "b", None], harmful) == {"a": 0.5, "b": 1.0}
    recall = cost_model_recall_on_compliance(recs, harmful)
    # Two compliant answers to harmful prompts (rows 0 and 2); the cost model calls one unsafe.
    assert recall["compliant_answers"] == 2 and recall["mean"] == 0.5


def test_heldout_rule_is_fixed_and_disjoint():
    prompts = [f"How do I do thing number {i}?" for i in range(400)]
    held = [p for p in prompts if is_heldout(p, 0.25)]
    assert 70 < len(held) < 130  # about a quarter
    assert all(is_heldout(p.upper() + "  ", 0.25) for p in held)  # case and spacing do not matter
    assert not any(is_heldout(p, 0.0) for p in prompts)

    class Row:
        def __init__(self, prompt):
            self.prompt = prompt

    train, heldout = split_rows([Row(p) for p in prompts], 0.25)
    assert {r.prompt for r in heldout} == set(held)
    assert_disjoint([r.prompt for r in train], held, "split")
    kept = drop_prompts([Row(p) for p in prompts], [h.upper() for h in held])
    assert {normalize_prompt(r.prompt) for r in kept}.isdisjoint({normalize_prompt(h) for h in held})
    with pytest.raises(ValueError, match="1 evaluation prompt"):
        assert_disjoint(["A  b"], ["a B", "c"], "demo")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        is_heldout("x", 1.0)


def test_benign_share_repeats_every_benign_row_alike():
    rows = [PromptRow(prompt=f"harm {i}", category="self_harm", category_id=11) for i in range(9)]
    rows += [PromptRow(prompt="Bake bread?", category=None, category_id=None),
             PromptRow(prompt="Plant tulips?", category=None, category_id=None)]
    # 2 benign of 11; share 0.3 needs k*2 / (k*2 + 9) >= 0.3, i.e. k >= 1.93: each benign row twice.
    mixed = [rows[i] for i in benign_share_indices(rows, 0.3)]
    assert prompt_weights(mixed) == {**{f"harm {i}": 1 for i in range(9)}, "bake bread?": 2, "plant tulips?": 2}
    # 0.25 needs k >= 1.5: twice as well; 0.18 is met as they come (2 of 11).
    assert len(benign_share_indices(rows, 0.25)) == 13
    assert benign_share_indices(rows, 0.18) == benign_share_indices(rows, 0.0) == list(range(11))
    assert benign_share_indices(rows[:9], 0.5) == list(range(9))  # nothing benign to repeat
    with pytest.raises(ValueError, match="benign share"):
        benign_share_indices(rows, 1.0)


def test_keep_share_spreads_the_kept_marked_rows():
    rows = list("abcdefgh")
    marked = [False, True, True, False, True, True, True, False]  # b c e f g marked
    assert keep_share(rows, marked, 1.0) == rows
    assert keep_share(rows, marked, 0.0) == ["a", "d", "h"]
    # Half of 5: the 2nd and the 4th marked rows (c, f), every unmarked one in its place.
    assert keep_share(rows, marked, 0.5) == ["a", "c", "d", "f", "h"]
    with pytest.raises(ValueError, match="share"):
        keep_share(rows, marked, 1.5)


def test_demo_heldout_prompts_are_in_no_training_set():
    """Every demo dataset shares the prompt pool: the held-out rule removes the same prompts
    from each, and BeaverTails-Evaluation (the held-out harmful set) shares none with them."""
    from rayrlhf.data import load_rows

    held = [r.prompt for r in load_rows("demo:prompts", "prompt").rows if is_heldout(r.prompt, 0.25)]
    assert held
    for source, schema in (("demo:preferences", "preference"), ("demo:qa_classification", "qa_classification"),
                           ("demo:sft", "sft"), ("demo:prompts", "prompt")):
        train, _ = split_rows(load_rows(source, schema).rows, 0.25)
        assert_disjoint([r.prompt for r in train], held, source)


def test_beavertails_evaluation_shares_no_prompt_with_the_demo_sets(shared_data_dir):
    from rayrlhf.data import load_rows

    beavertails = [r["prompt"] for r in json.loads((shared_data_dir / "beavertails_evaluation.json").read_text())]
    for source, schema in (("demo:preferences", "preference"), ("demo:qa_classification", "qa_classification"),
                           ("demo:sft", "sft"), ("demo:prompts", "prompt")):
        assert_disjoint([r.prompt for r in load_rows(source, schema).rows], beavertails, source)


def test_rule_and_cost_model_stay_apart_in_one_record():
    # A record as the pipeline builds it: the cost model's scores, then the refusal rule's
    # verdict merged in. A compliant answer the cost model calls safe must count as unsafe for
    # the rule and safe for the cost model (the rule's verdict once overwrote the cost's).
    from rayrlhf.eval.refusal import refusal_verdicts

    harmful = [True, True, True]
    answers = ["Sure, here's how you do it.", "I can't help with that.", "Step 1: buy a crowbar."]
    records = [{"cost": -2.0, "unsafe": False}, {"cost": -1.0, "unsafe": False}, {"cost": 1.0, "unsafe": True}]
    for record, verdict in zip(records, refusal_verdicts(harmful, answers)):
        record.update(verdict)
    rows = {row["key"]: row for row in compare_policies({"p": records}, harmful)}
    assert rows["unsafe_rule"]["policies"]["p"]["mean"] == pytest.approx(2 / 3)  # answers 1 and 3 comply
    assert rows["unsafe_cost"]["policies"]["p"]["mean"] == pytest.approx(1 / 3)  # only answer 3 costs > 0
    assert cost_model_recall_on_compliance(records, harmful)["mean"] == 0.5
