"""``rayrlhf analyze``: each measure on rows small enough to count by hand, and the files."""

from __future__ import annotations

import json

import pytest

from rayrlhf.data import HARM_CATEGORIES, PreferenceRow, QAClassificationRow
from rayrlhf.eval import dataset_analysis as da


def pref(prompt, safe0, safe1, better, safer):
    return PreferenceRow(prompt, f"{prompt} a0", f"{prompt} a1", safe0, safe1, better, safer)


PAIRS = [
    pref("p1", True, True, 0, 0),    # both safe, agree
    pref("p2", False, True, 0, 1),   # one safe, helpful pick is the unsafe one
    pref("p3", True, False, 0, 0),   # one safe, agree
    pref("p4", False, False, 1, 0),  # both unsafe, differ
]
RECORDS = [
    {"response_0_harm_category": {}, "response_1_harm_category": {}},
    {"response_0_harm_category": {"self_harm": True, "animal_abuse": True}, "response_0_severity_level": 2},
    {"response_1_harm_category": {"self_harm": True}, "response_1_severity_level": 1},
    {"category": "privacy_violation", "response_0_severity_level": 3, "response_1_severity_level": 3},
]


def test_decoupling_counts_by_safety_pattern():
    d = da.decoupling(PAIRS)
    assert (d["pairs"], d["better_is_safer"], d["better_is_safer_share"]) == (4, 2, 0.5)
    assert d["both_safe"]["better_is_safer"] == 1 and d["both_unsafe"]["better_is_safer"] == 0
    assert d["one_safe"] == {"pairs": 2, "better_is_safer": 1, "better_is_safer_share": 0.5,
                             "better_is_the_safe_answer": 1, "safer_label_conflicts": 0}


def test_categories_co_occurrence_severity_from_record_fields():
    dataset = da.build_dataset(PAIRS, RECORDS, "t", prompt_categories={"p1": frozenset({"child_abuse"})})
    report = da.analyse(dataset)
    # p1 by join (2 safe), p2 both answers under its flags' union (1 unsafe, 1 safe),
    # p3 under self_harm (1 safe, 1 unsafe), p4 under privacy_violation (2 unsafe).
    assert report["category_balance"] == {
        "animal_abuse": {"safe": 1, "unsafe": 1}, "child_abuse": {"safe": 2, "unsafe": 0},
        "privacy_violation": {"safe": 0, "unsafe": 2}, "self_harm": {"safe": 2, "unsafe": 2}}
    co = report["co_occurrence"]
    assert co["categories"] == list(HARM_CATEGORIES)
    i, j = HARM_CATEGORIES.index("self_harm"), HARM_CATEGORIES.index("animal_abuse")
    assert (co["matrix"][i][i], co["matrix"][i][j], co["matrix"][j][i], co["matrix"][j][j]) == (2, 1, 1, 1)
    assert (co["flagged_answers"], co["multi_category_answers"]) == (2, 1)
    assert report["severity"] == {"1": 1, "2": 1, "3": 2}


def test_qa_rows_take_prompt_categories_from_their_answers():
    flags = lambda *on: {c: c in on for c in HARM_CATEGORIES}  # noqa: E731
    rows = [QAClassificationRow("q", "bad", flags("self_harm"), False),
            QAClassificationRow("q", "refusal", flags(), True)]
    report = da.analyse(da.build_dataset(rows, [{}, {}], "t"))
    assert report["category_balance"] == {"self_harm": {"safe": 1, "unsafe": 1}}


def test_correlations_match_hand_values():
    reward, cost = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    # Pearson by hand: deviations (-1.5,-.5,.5,1.5) and (-.5,-1.5,1.5,.5): products 4 x 0.75 = 3, sums of squares 5, 5.
    s = da.score_summary(reward, cost, [True, True, False, False])
    assert s["pearson"] == pytest.approx(0.6) and s["spearman"] == pytest.approx(0.6)
    assert da.ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    assert (s["mean_cost_safe"], s["mean_cost_unsafe"], s["cost_positive_share_unsafe"]) == (1.5, 3.5, 1.0)


def test_stage_writes_markdown_json_and_pngs(tmp_path):
    from omegaconf import OmegaConf

    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{**p.to_dict(), **r} for p, r in zip(PAIRS, RECORDS)]))
    ds = OmegaConf.create({"source": str(path), "schema": "preference", "split": "train", "revision": None,
                           "skip_bad_rows": False, "max_chars": 20000, "limit": None, "field_map": {}})
    report = da.analyse_dataset(ds, tmp_path / "out")
    assert set(report["figures"]) == {"decoupling", "category_balance", "co_occurrence", "severity", "lengths"}
    for name in report["figures"].values():
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert "**2 of 4 pairs (0.500)**" in (tmp_path / "out" / "analysis.md").read_text()
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["decoupling"]["pairs"] == 4
    with pytest.raises(ValueError, match="both reward and cost"):
        da.analyse_dataset(ds, tmp_path / "out2", reward="x")
