"""The real PKU-SafeRLHF, BeaverTails-Evaluation and Alpaca samples load through load_rows."""

from __future__ import annotations

import json
from collections import Counter

from rayrlhf.data import HARM_CATEGORIES, PreferenceRow, load_rows


def test_pku_saferlhf_sample_as_preferences(shared_data_dir):
    path = shared_data_dir / "pku_saferlhf_sample.json"
    result = load_rows(path, "preference")
    assert len(result.rows) == 32 and result.skipped == 0
    raw = json.loads(path.read_text(encoding="utf-8"))
    # the typed rows keep the file's labels (checked against the raw JSON, not against themselves)
    assert [r.better_response_id for r in result.rows] == [d["better_response_id"] for d in raw]
    assert [r.is_response_1_safe for r in result.rows] == [d["is_response_1_safe"] for d in raw]
    assert all(isinstance(r, PreferenceRow) for r in result.rows)


def test_beavertails_evaluation_as_prompts(shared_data_dir):
    result = load_rows(shared_data_dir / "beavertails_evaluation.json", "prompt")
    assert len(result.rows) == 700 and result.skipped == 0
    per_category = Counter(r.category for r in result.rows)
    assert per_category == {name: 50 for name in HARM_CATEGORIES}
    assert all(HARM_CATEGORIES[r.category_id] == r.category for r in result.rows)


def test_alpaca_sample_as_sft(shared_data_dir):
    path = shared_data_dir / "alpaca_sample.json"
    result = load_rows(path, "sft")
    assert len(result.rows) == 32 and result.skipped == 0
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert [r.input for r in result.rows] == [d["input"] for d in raw]
    assert result.rows[0].instruction == raw[0]["instruction"]


def test_limit_on_a_real_sample(shared_data_dir):
    rows = load_rows(shared_data_dir / "beavertails_evaluation.json", "prompt", limit=5).rows
    full = load_rows(shared_data_dir / "beavertails_evaluation.json", "prompt").rows
    assert rows == full[:5]
