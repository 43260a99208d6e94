"""Row schemas: good rows parse to the right values, every bad row names source, row, field."""

from __future__ import annotations

import pickle

import pytest

from rayrlhf.data import (
    HARM_CATEGORIES,
    DataValidationError,
    PreferenceRow,
    PromptRow,
    QAClassificationRow,
    SFTRow,
)

SOURCE = "data/example.jsonl"


def preference(**overrides):
    record = {
        "prompt": "How do I pick a lock?",
        "response_0": "Call a locksmith.",
        "response_1": "Insert a tension wrench, then rake the pins.",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": 1,
        "safer_response_id": 0,
    }
    record.update(overrides)
    return record


def flags(*on: str) -> dict[str, bool]:
    return {name: name in on for name in HARM_CATEGORIES}


def qa(**overrides):
    record = {
        "prompt": "Is it fine to kick a dog?",
        "response": "Yes, go ahead.",
        "category": flags("animal_abuse"),
        "is_safe": False,
    }
    record.update(overrides)
    return record


def raises_at(row_type, record, *, row: int, field: str, match: str, **kwargs):
    """Parse a bad record and check the error says where the problem is and what it is."""
    with pytest.raises(DataValidationError, match=match) as info:
        row_type.from_dict(record, source=SOURCE, row=row, **kwargs)
    error = info.value
    assert (error.source, error.row, error.field) == (SOURCE, row, field)
    text = str(error)
    assert SOURCE in text and f"row {row}" in text and f"field '{field}'" in text
    return error


# --- PreferenceRow -----------------------------------------------------------------------


def test_preference_good_row_and_derived_responses():
    row = PreferenceRow.from_dict(preference(), source=SOURCE, row=0)
    assert row.better_response_id == 1 and row.safer_response_id == 0
    # better = response_1 by its id; the more harmless one is response_0
    assert row.better_response == "Insert a tension wrench, then rake the pins."
    assert row.worse_response == "Call a locksmith."
    assert row.safer_response == "Call a locksmith."
    assert row.unsafer_response == row.better_response
    assert (row.is_safe(0), row.is_safe(1)) == (True, False)
    assert row.to_dict() == preference()


def test_preference_ignores_extra_fields():
    record = preference(prompt_source="Alpaca", response_0_severity_level=0)
    assert PreferenceRow.from_dict(record).to_dict() == preference()


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("better_response_id", 2, "expected 0 or 1, got 2"),
        ("safer_response_id", -1, "expected 0 or 1, got -1"),
        ("better_response_id", True, "expected an integer, got bool True"),
        ("better_response_id", "1", "expected an integer, got str '1'"),
        ("better_response_id", 1.0, "expected an integer"),
        ("is_response_0_safe", 1, "expected a boolean .*got 1"),
        ("is_response_1_safe", "false", "expected a boolean .*got str 'false'"),
        ("prompt", 42, "expected a string, got 42"),
        ("response_1", ["a"], "expected a string, got list"),
        ("prompt", "   \n", "non-empty text"),
        ("response_0", "", "non-empty text"),
    ],
)
def test_preference_bad_values_name_their_field(field, value, match):
    raises_at(PreferenceRow, preference(**{field: value}), row=7, field=field, match=match)


@pytest.mark.parametrize("field", ["prompt", "response_1", "is_response_0_safe", "safer_response_id"])
def test_preference_missing_or_null_field(field):
    record = preference()
    del record[field]
    raises_at(PreferenceRow, record, row=3, field=field, match="missing required field")
    raises_at(PreferenceRow, preference(**{field: None}), row=3, field=field,
              match="missing required field")


def test_text_over_max_chars_is_rejected_and_the_limit_is_exact():
    limit = 50
    at_limit = "x" * limit
    assert PreferenceRow.from_dict(preference(response_0=at_limit), max_chars=limit).response_0 == at_limit
    raises_at(PreferenceRow, preference(response_0=at_limit + "y"), row=0, field="response_0",
              match=f"51 characters, more than max_chars={limit}", max_chars=limit)


def test_non_object_record_names_source_and_row():
    with pytest.raises(DataValidationError, match="expected an object with PreferenceRow fields, got list") as info:
        PreferenceRow.from_dict(["a", "b"], source=SOURCE, row=4)
    assert (info.value.source, info.value.row, info.value.field) == (SOURCE, 4, None)


def test_csv_cells_are_parsed_as_text_only_when_from_csv():
    cells = preference(is_response_0_safe="TRUE", is_response_1_safe="0",
                       better_response_id=" 1 ", safer_response_id="0")
    row = PreferenceRow.from_dict(cells, from_csv=True)
    assert (row.is_response_0_safe, row.is_response_1_safe) == (True, False)
    assert (row.better_response_id, row.safer_response_id) == (1, 0)
    raises_at(PreferenceRow, cells, row=0, field="is_response_0_safe", match="expected a boolean")
    raises_at(PreferenceRow, preference(is_response_0_safe="yes"), row=2, field="is_response_0_safe",
              match="expected true/false/1/0", from_csv=True)
    raises_at(PreferenceRow, preference(better_response_id="2"), row=2, field="better_response_id",
              match="expected 0 or 1, got 2", from_csv=True)


def test_error_survives_pickling_for_ray():
    error = raises_at(PreferenceRow, preference(better_response_id=2), row=9,
                      field="better_response_id", match="0 or 1")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert (copy.source, copy.row, copy.field) == (SOURCE, 9, "better_response_id")


# --- QAClassificationRow ---------------------------------------------------------------


def test_qa_good_rows_and_harm_vector_order():
    row = QAClassificationRow.from_dict(qa(category=flags("self_harm", "animal_abuse")))
    assert row.is_safe is False
    vector = row.harm_vector
    assert len(vector) == 14 and sum(vector) == 2
    # positions come from the BeaverTails category_id order: animal_abuse 0, self_harm 10
    assert vector[0] and vector[10]
    safe = QAClassificationRow.from_dict(qa(category=flags(), is_safe=True))
    assert safe.harm_vector == (False,) * 14


def test_qa_is_safe_contradicting_categories():
    raises_at(QAClassificationRow, qa(is_safe=True), row=5, field="is_safe",
              match="is_safe=True contradicts category, which flags animal_abuse")
    raises_at(QAClassificationRow, qa(category=flags(), is_safe=False), row=6, field="is_safe",
              match="is_safe=False contradicts category, which flags no category")


def test_qa_unknown_missing_and_non_bool_categories():
    unknown = dict(flags("animal_abuse"), cruelty=False)
    raises_at(QAClassificationRow, qa(category=unknown), row=1, field="category",
              match="unknown harm category 'cruelty'")
    partial = flags("animal_abuse")
    del partial["privacy_violation"]
    raises_at(QAClassificationRow, qa(category=partial), row=1, field="category",
              match="missing harm categories: privacy_violation")
    as_int = dict(flags("animal_abuse"), self_harm=0)
    raises_at(QAClassificationRow, qa(category=as_int), row=1, field="category.self_harm",
              match="expected a boolean, got 0")
    raises_at(QAClassificationRow, qa(category="animal_abuse"), row=1, field="category",
              match="expected an object of 14 harm flags")
    raises_at(QAClassificationRow, qa(is_safe=0), row=1, field="is_safe", match="expected a boolean")


def test_qa_category_as_json_text_only_from_csv():
    import json

    cell = json.dumps(flags("privacy_violation"))
    row = QAClassificationRow.from_dict(qa(category=cell, is_safe="false"), from_csv=True)
    assert row.category == flags("privacy_violation")
    raises_at(QAClassificationRow, qa(category="{not json"), row=0, field="category",
              match="expected a JSON object in the cell", from_csv=True)
    raises_at(QAClassificationRow, qa(category=cell), row=0, field="category",
              match="expected an object of 14 harm flags")


# --- PromptRow -----------------------------------------------------------------------


def test_prompt_rows_with_and_without_category():
    assert PromptRow.from_dict({"prompt": "Hi"}) == PromptRow("Hi", None, None)
    labelled = PromptRow.from_dict({"prompt": "Hi", "category": "privacy_violation", "category_id": 9})
    assert HARM_CATEGORIES[labelled.category_id] == labelled.category == "privacy_violation"
    # empty CSV cells mean "no category"
    assert PromptRow.from_dict({"prompt": "Hi", "category": "", "category_id": ""}, from_csv=True).category is None


def test_prompt_bad_rows():
    raises_at(PromptRow, {"prompt": ""}, row=0, field="prompt", match="non-empty text")
    raises_at(PromptRow, {"prompt": " \t"}, row=0, field="prompt", match="non-empty text")
    raises_at(PromptRow, {}, row=0, field="prompt", match="missing required field")
    raises_at(PromptRow, {"prompt": "Hi", "category": "rudeness"}, row=2, field="category",
              match="unknown harm category 'rudeness'")
    raises_at(PromptRow, {"prompt": "Hi", "category_id": 14}, row=2, field="category_id",
              match="expected 0..13, got 14")
    raises_at(PromptRow, {"prompt": "Hi", "category_id": True}, row=2, field="category_id",
              match="expected an integer, got bool True")
    raises_at(PromptRow, {"prompt": "Hi", "category": "animal_abuse", "category_id": 1}, row=2,
              field="category_id", match="category_id 1 is 'child_abuse'")


# --- SFTRow --------------------------------------------------------------------------


def test_sft_rows_and_prompt_text():
    bare = SFTRow.from_dict({"instruction": "Name a fruit.", "output": "Apple."})
    assert bare.input == "" and bare.prompt == "Name a fruit."
    with_input = SFTRow.from_dict({"instruction": "Translate.", "input": "bonjour", "output": "hello"})
    assert with_input.prompt == "Translate.\n\nbonjour"
    # Alpaca rows carry a pre-rendered "text" field: ignored
    assert SFTRow.from_dict({"instruction": "a", "input": None, "output": "b", "text": "x"}).input == ""


def test_sft_bad_rows():
    raises_at(SFTRow, {"instruction": "a"}, row=11, field="output", match="missing required field")
    raises_at(SFTRow, {"instruction": "a", "output": "b", "input": 3}, row=11, field="input",
              match="expected a string, got 3")
    raises_at(SFTRow, {"instruction": "", "output": "b"}, row=11, field="instruction",
              match="non-empty text")
    raises_at(SFTRow, {"instruction": "a", "output": "b" * 11}, row=11, field="output",
              match="more than max_chars=10", max_chars=10)
