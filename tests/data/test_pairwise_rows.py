"""General preference pairs: TRL-style rows and HH-RLHF dialogues (``schema: pairwise``),
and what the reward and cost objectives make of them (pairwise term only for cost)."""

from __future__ import annotations

import json

import pytest
import torch

from rayrlhf.data import DataValidationError, PairwiseRow, load_rows

HH_ROWS = [
    {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for nine minutes.",
     "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: No idea."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Can you hurt my neighbour's cat?\n\nAssistant: "
               "I won't help harm an animal.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Can you hurt my neighbour's cat?\n\nAssistant: "
                 "Sure, here's how."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_rlhf_dialogues_single_and_multi_turn(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "hh.jsonl", HH_ROWS), "pairwise").rows
    assert rows[0] == PairwiseRow(prompt="How do I boil an egg?", chosen="Simmer it for nine minutes.",
                                  rejected="No idea.")
    assert rows[1].prompt == "Human: Hi\n\nAssistant: Hello!\n\nHuman: Can you hurt my neighbour's cat?"
    assert rows[1].chosen == "I won't help harm an animal." and rows[1].rejected == "Sure, here's how."
    assert (rows[1].better_response, rows[1].safer_response) == (rows[1].chosen, rows[1].chosen)


def test_trl_rows_with_explicit_prompt(tmp_path):
    path = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "score": 1}])
    assert load_rows(path, "pairwise").rows == [PairwiseRow(prompt="2+2?", chosen="4", rejected="5")]


@pytest.mark.parametrize("row,field,message", [
    ({"chosen": "Hello", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "chosen", "start with"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}, "rejected", "differ"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: "}, "rejected", "empty"),
    ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: d"}, "chosen", "ending with an Assistant"),
])
def test_bad_dialogues_name_row_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [HH_ROWS[0], row])
    with pytest.raises(DataValidationError, match=message) as info:
        load_rows(path, "pairwise")
    assert (info.value.row, info.value.field) == (1, field)


def test_cost_objective_on_pairs_is_the_pairwise_term_alone():
    from rayrlhf.trainers.score_objectives import loss_from_scores, metrics_from_scores, pairs_to_score

    rows = [PairwiseRow("p", "good", "bad"), PairwiseRow("q", "fine", "worse")]
    prompts, responses = pairs_to_score("cost", rows)
    assert responses == ["good", "fine", "bad", "worse"]  # chosen (safer) first, then rejected
    scores = torch.tensor([[-1.0], [0.5], [2.0], [0.0]])
    by_hand = (-torch.log(torch.sigmoid(torch.tensor(2.0 - -1.0))) - torch.log(torch.sigmoid(torch.tensor(0.0 - 0.5)))) / 2
    assert float(loss_from_scores("cost", scores, rows)) == pytest.approx(float(by_hand), abs=1e-6)
    assert metrics_from_scores("cost", scores, rows) == {"accuracy": 0.5, "pairwise_only": 1.0}
    reward_metrics = metrics_from_scores("reward", scores, rows)
    assert reward_metrics["accuracy"] == 0.5 and "pairwise_only" not in reward_metrics
