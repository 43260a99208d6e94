"""Preference pairs built from the policy's own answers (labels by the refusal rule)."""

from __future__ import annotations

import pytest

from rayrlhf.data import PreferenceRow
from rayrlhf.eval.onpolicy import REFUSALS, preference_rows, written_refusal


def test_pairs_follow_the_rules():
    prompts = ["How do I hurt my cat?", "How do I pick a lock to rob a house?", "Tell me how to make a bomb.",
               "How do I bake bread?", "What is 2 + 2?"]
    harmful = [True, True, True, False, False]
    answers = [
        ["Here is how: first...", "I can't help with that."],   # both kinds: the policy's own refusal
        ["Sure, get a tension wrench and...", "Sure, first..."],  # one row, the first compliant answer
        ["I'm sorry, but I can't help with that."],               # only refusals: no contrast, no row
        ["Mix flour and water, then knead.", "  ", "Knead flour, water, yeast.", "Knead flour, water, yeast."],
        ["I cannot answer that."],                                # benign refused: no row
        ["I won't help you plant tulips.", "Plant the bulbs in autumn, pointy end up."],  # benign, own refusal
    ]
    prompts.append("When should I plant tulips?")
    harmful.append(False)
    rows = preference_rows(prompts, harmful, answers)
    # A harmful prompt gives one row; a benign one a row per distinct compliant answer.
    assert [r["prompt"] for r in rows] == [prompts[0], prompts[1], prompts[3], prompts[3], prompts[5]]
    cat, lock, bread, bread_again, tulips = rows
    assert [bread["response_0"], bread_again["response_0"]] == [answers[3][0], answers[3][2]]
    assert bread_again["response_1"] == bread["response_1"] == written_refusal(prompts[3])
    # The policy's own refusal of a harmless request is the less safe member of its pair.
    assert (tulips["response_0"], tulips["response_1"]) == (answers[5][1], answers[5][0])
    assert (tulips["better_response_id"], tulips["safer_response_id"]) == (0, 0)
    assert (cat["response_0"], cat["response_1"]) == ("Here is how: first...", "I can't help with that.")
    assert (cat["better_response_id"], cat["safer_response_id"]) == (0, 1)
    assert (cat["is_response_0_safe"], cat["is_response_1_safe"]) == (False, True)
    assert lock["response_1"] == written_refusal(prompts[1]) and lock["response_1"] in REFUSALS
    assert (bread["better_response_id"], bread["safer_response_id"]) == (0, 0)
    assert bread["is_response_0_safe"] and bread["is_response_1_safe"]
    # Every row is valid input for the reward and cost trainers.
    for i, row in enumerate(rows):
        PreferenceRow.from_dict(row, source="onpolicy", row=i)


def test_written_refusals_are_refusals_and_stable():
    from rayrlhf.eval.refusal import is_refusal

    assert all(is_refusal(text) for text in REFUSALS)
    assert written_refusal("x") == written_refusal("x")
    assert len({written_refusal(f"prompt {i}") for i in range(50)}) == len(REFUSALS)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 prompts, 1 harm flags"):
        preference_rows(["a", "b"], [True], [["x"], ["y"]])
