"""load_rows / write_rows over every source kind, with the errors a person must act on."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from rayrlhf.data import (
    DEMO_DATASETS,
    HARM_CATEGORIES,
    SCHEMA_TYPES,
    DataValidationError,
    PreferenceRow,
    PromptRow,
    QAClassificationRow,
    SFTRow,
    demo_dir,
    iter_raw_records,
    load_rows,
    write_rows,
)

# Text that breaks naive writers: separators, quotes, both newline kinds, braces, non-ASCII.
AWKWARD = 'He said "hi, there"\nthen left;\r\nnext line {x} — café 🚲'


def flags(*on: str) -> dict[str, bool]:
    return {name: name in on for name in HARM_CATEGORIES}


SAMPLES = {
    "preference": [
        PreferenceRow("How do I pick a lock?", "Call a locksmith.", AWKWARD, True, False, 1, 0),
        PreferenceRow(AWKWARD, "No.", "Sure: step one...", True, True, 0, 0),
        PreferenceRow("Third", "a", "b", False, False, 0, 1),
    ],
    "qa_classification": [
        QAClassificationRow("Kick a dog?", AWKWARD, flags("animal_abuse", "self_harm"), False),
        QAClassificationRow("Capital of France?", "Paris.", flags(), True),
    ],
    "prompt": [
        PromptRow(AWKWARD, "privacy_violation", 9),
        PromptRow("Plain prompt"),
        PromptRow("Only a category", "animal_abuse", None),
        PromptRow("Only an id", None, 13),
    ],
    "sft": [
        SFTRow(instruction="Name a fruit.", output="Apple."),
        SFTRow(instruction="Translate.", input=AWKWARD, output="hello"),
    ],
}


def preference_record(i: int = 0, **overrides) -> dict:
    record = {
        "prompt": f"prompt {i}",
        "response_0": "r0",
        "response_1": "r1",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": i % 2,
        "safer_response_id": 0,
    }
    record.update(overrides)
    return record


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".csv"])
@pytest.mark.parametrize("schema", sorted(SAMPLES))
def test_write_then_load_gives_equal_rows(tmp_path, schema, suffix):
    rows = SAMPLES[schema]
    path = write_rows(rows, tmp_path / f"nested/out{suffix}")
    result = load_rows(path, schema)
    assert result.rows == rows
    assert (result.skipped, result.skipped_errors) == (0, [])
    assert not list(path.parent.glob(".*tmp*")), "the staging file must not be left behind"


def test_written_files_are_in_the_format_their_suffix_names(tmp_path):
    rows = SAMPLES["qa_classification"]
    import pyarrow.parquet as pq

    table = pq.read_table(write_rows(rows, tmp_path / "a.parquet"))
    assert table.num_rows == 2 and table.column("is_safe").to_pylist() == [False, True]
    lines = write_rows(rows, tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["response"] for line in lines] == [AWKWARD, "Paris."]
    assert json.loads(write_rows(rows, tmp_path / "a.json").read_text(encoding="utf-8"))[1]["prompt"] == (
        "Capital of France?"
    )
    with write_rows(rows, tmp_path / "a.csv").open(encoding="utf-8", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert cells[0]["is_safe"] == "false"
    assert json.loads(cells[0]["category"]) == flags("animal_abuse", "self_harm")


def test_write_rows_refuses_empty_mixed_and_unknown(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_rows([], tmp_path / "x.json")
    with pytest.raises(TypeError, match="mix"):
        write_rows([SAMPLES["sft"][0], SAMPLES["prompt"][0]], tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"\.json, \.jsonl, \.parquet, \.csv"):
        write_rows(SAMPLES["sft"], tmp_path / "x.txt")


# --- JSON ----------------------------------------------------------------------------


def test_json_must_be_a_top_level_array(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": [preference_record()]}), encoding="utf-8")
    with pytest.raises(DataValidationError, match="expected a JSON array .* got dict") as info:
        load_rows(path, "preference")
    assert info.value.source == str(path) and str(path) in str(info.value)


def test_json_syntax_error_reports_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]', encoding="utf-8")
    with pytest.raises(DataValidationError, match="invalid JSON") as info:
        load_rows(path, "prompt")
    assert info.value.line == 3


def test_json_bad_row_names_file_row_and_field(tmp_path):
    records = [preference_record(0), preference_record(1), preference_record(2, better_response_id=2)]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        load_rows(path, "preference")
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 2, "better_response_id")
    assert str(info.value) == f"{path}: row 2, field 'better_response_id': expected 0 or 1, got 2"


def test_json_bad_utf8_reports_byte_offset_and_line(tmp_path):
    head = '[{"prompt": "ok"},\n{"prompt": "caf'.encode()
    path = tmp_path / "latin1.json"
    path.write_bytes(head + b"\xe9" + b'"}]')  # é in Latin-1, not UTF-8
    with pytest.raises(DataValidationError, match="invalid UTF-8") as info:
        load_rows(path, "prompt")
    assert (info.value.byte_offset, info.value.line) == (len(head), 2)


# --- JSONL ---------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_counts_rows_not_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps(preference_record(0)) + "\n\n   \n" + json.dumps(preference_record(1)) + "\n"
        + json.dumps(preference_record(2, prompt="")) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataValidationError) as info:
        load_rows(path, "preference")
    # third record (row 2) sits on line 5 after two blank lines
    assert (info.value.row, info.value.line, info.value.field) == (2, 5, "prompt")
    assert f"{path}: row 2, line 5, field 'prompt'" in str(info.value)


def test_jsonl_bad_json_line_reports_row_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(preference_record(0)) + "\n\n{not json}\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="invalid JSON") as info:
        load_rows(path, "preference")
    assert (info.value.source, info.value.row, info.value.line) == (str(path), 1, 3)


def test_jsonl_bad_utf8_reports_absolute_byte_offset(tmp_path):
    # multi-byte characters before the bad byte: the offset counts bytes, not characters
    first = (json.dumps({"prompt": "fine café ✓"}, ensure_ascii=False) + "\n").encode()
    second_head = b'{"prompt": "na'
    path = tmp_path / "p.jsonl"
    path.write_bytes(first + second_head + b"\xff\xfe" + b've"}\n')
    with pytest.raises(DataValidationError, match="invalid UTF-8") as info:
        load_rows(path, "prompt")
    error = info.value
    assert (error.row, error.line, error.byte_offset) == (1, 2, len(first) + len(second_head))
    assert f"byte {len(first) + len(second_head)}" in str(error)


def test_jsonl_non_object_line_is_a_row_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataValidationError, match="expected an object") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line) == (1, 2)


# --- CSV and Parquet -----------------------------------------------------------------


def test_csv_cells_spell_booleans_and_integers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "prompt,response_0,response_1,is_response_0_safe,is_response_1_safe,better_response_id,"
        "safer_response_id,extra\n"
        "q,a,b,1,FALSE,1,0,ignored\n"
        "\n"
        'q2,"multi\nline",b,true,0,0,1,\n',
        encoding="utf-8",
    )
    rows = load_rows(path, "preference").rows
    assert rows == [
        PreferenceRow("q", "a", "b", True, False, 1, 0),
        PreferenceRow("q2", "multi\nline", "b", True, False, 0, 1),
    ]


def test_csv_bad_rows_report_row_and_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,category\nfine,\nalso fine,animal_abuse\nbad,not_a_category\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="unknown harm category") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line, info.value.field) == (2, 4, "category")
    path.write_text("prompt,category\nfine,,surplus\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="3 cells but the header has 2 columns"):
        load_rows(path, "prompt")


def test_csv_bad_utf8_and_header_only(tmp_path):
    path = tmp_path / "p.csv"
    head = b"prompt\nok\n"
    path.write_bytes(head + b"bad \xc3\x28\n")
    with pytest.raises(DataValidationError, match="invalid UTF-8") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line, info.value.byte_offset) == (1, 3, len(head) + 4)
    path.write_text("prompt\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="no rows") as info:
        load_rows(path, "prompt")
    assert str(path) in str(info.value)


def test_csv_header_and_quoting_errors_are_file_level(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,prompt\na,b\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"duplicate CSV header column\(s\) \['prompt'\]") as info:
        load_rows(path, "prompt", skip_bad_rows=True)
    assert (info.value.row, info.value.line) == (None, 1)
    path.write_text('prompt\nfine\n"quoted"junk\nlater\n', encoding="utf-8")
    # a broken quote cannot be skipped: the parser no longer knows where records start
    with pytest.raises(DataValidationError, match="malformed CSV") as info:
        load_rows(path, "prompt", skip_bad_rows=True)
    assert (info.value.row, info.value.line) == (1, 3)


def test_parquet_bad_row_and_corrupt_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "category_id": [0, 99, 1]}), path)
    with pytest.raises(DataValidationError, match="expected 0..13, got 99") as info:
        load_rows(path, "prompt")
    assert (info.value.source, info.value.row, info.value.field) == (str(path), 1, "category_id")

    corrupt = tmp_path / "c.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError, match="not a readable Parquet file") as info:
        load_rows(corrupt, "prompt")
    assert str(corrupt) in str(info.value)


# --- skip_bad_rows, limit, field_map -----------------------------------------------


def test_skip_bad_rows_counts_keeps_and_warns(tmp_path, caplog):
    records = []
    for i in range(40):
        bad = i % 3 == 1  # rows 1, 4, 7, ..., 37: 13 bad rows
        records.append(preference_record(i, safer_response_id=5) if bad else preference_record(i))
    path = write_jsonl(tmp_path / "p.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="rayrlhf.data.loaders"):
        result = load_rows(path, "preference", skip_bad_rows=True)
    expected_bad = [i for i in range(40) if i % 3 == 1]
    assert result.skipped == len(expected_bad) == 13
    assert [r.prompt for r in result.rows] == [f"prompt {i}" for i in range(40) if i % 3 != 1]
    assert [e.row for e in result.skipped_errors] == expected_bad
    assert {e.field for e in result.skipped_errors} == {"safer_response_id"}
    warning = caplog.records[-1].getMessage()
    assert "skipped 13 bad" in warning and "row 1, line 2" in warning


def test_skipped_errors_are_capped_but_the_count_is_not(tmp_path):
    records = [{"prompt": ""} for _ in range(30)] + [{"prompt": "good"}]
    result = load_rows(write_jsonl(tmp_path / "p.jsonl", records), "prompt", skip_bad_rows=True)
    assert result.skipped == 30 and len(result.skipped_errors) == 20
    assert result.rows == [PromptRow("good")]


def test_skip_bad_rows_also_skips_unparseable_jsonl_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{oops\n{"prompt": "b"}\n', encoding="utf-8")
    result = load_rows(path, "prompt", skip_bad_rows=True)
    assert [r.prompt for r in result.rows] == ["a", "b"] and result.skipped == 1


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": " "}, {"prompt": 3}])
    with pytest.raises(DataValidationError, match="no valid prompt rows: all 2") as info:
        load_rows(path, "prompt", skip_bad_rows=True)
    assert str(path) in str(info.value)


def test_limit_keeps_the_first_valid_rows_and_stops_reading(tmp_path):
    records = [{"prompt": "p0"}, {"prompt": ""}, {"prompt": "p2"}, {"prompt": "p3"}, {"prompt": ""}]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    result = load_rows(path, "prompt", limit=2, skip_bad_rows=True)
    assert [r.prompt for r in result.rows] == ["p0", "p2"] and result.skipped == 1
    # without skipping, the bad row after the limit is never read
    assert [r.prompt for r in load_rows(path, "prompt", limit=1).rows] == ["p0"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="limit must be a positive integer"):
            load_rows(path, "prompt", limit=bad)


def test_field_map_renames_columns_before_validation(tmp_path):
    records = [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2", "input": "ctx"}]
    path = write_jsonl(tmp_path / "s.jsonl", records)
    rows = load_rows(path, "sft", field_map={"question": "instruction", "answer": "output"}).rows
    assert rows == [SFTRow(instruction="Q1", output="A1"), SFTRow(instruction="Q2", input="ctx", output="A2")]
    # without the map the schema field is missing, and the error says which
    with pytest.raises(DataValidationError, match="missing required field") as info:
        load_rows(path, "sft")
    assert info.value.field == "instruction"
    with pytest.raises(ValueError, match=r"targets \['instrucion'\] are not SFTRow fields"):
        load_rows(path, "sft", field_map={"question": "instrucion"})


# --- source resolution ---------------------------------------------------------------


def test_empty_files_are_errors_naming_the_source(tmp_path):
    empty_json = tmp_path / "e.json"
    empty_json.write_text("[]", encoding="utf-8")
    blank_jsonl = tmp_path / "e.jsonl"
    blank_jsonl.write_text("\n  \n", encoding="utf-8")
    empty_csv = tmp_path / "e.csv"
    empty_csv.write_bytes(b"")
    for path in (empty_json, blank_jsonl, empty_csv):
        with pytest.raises(DataValidationError, match="has no rows") as info:
            load_rows(path, "prompt")
        assert info.value.source == str(path)


def test_missing_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("./nope", "nope.jsonl", "data/nope.parquet", "~/rayrlhf-surely-absent.csv",
                   str(tmp_path / "nope")):
        with pytest.raises(FileNotFoundError, match="does not exist") as info:
            load_rows(source, "prompt")
        assert source in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_rows(tmp_path / "nope.json", "prompt")


def test_unsupported_file_types_and_directories(tmp_path):
    text = tmp_path / "rows.txt"
    text.write_text("prompt\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_rows(text, "prompt")
    with pytest.raises(ValueError, match="is a directory"):
        load_rows(tmp_path, "prompt")


def test_unknown_schema_lists_the_choices(tmp_path):
    with pytest.raises(ValueError) as info:
        load_rows(tmp_path / "whatever.json", "preferences")
    message = str(info.value)
    assert "'preferences'" in message and all(name in message for name in SCHEMA_TYPES)


def test_iter_raw_records_gives_unvalidated_dicts(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}, {"x": 1}])
    assert list(iter_raw_records(path)) == [{"prompt": ""}, {"x": 1}]


# --- hub -----------------------------------------------------------------------------
# There is no hub access here: these tests replace datasets.load_dataset with a stand-in
# for the hub, which cannot be reached from this machine.


def test_hub_failure_is_a_clear_runtime_error(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(RuntimeError) as info:
        load_rows("PKU-Alignment/PKU-SafeRLHF", "preference", revision="abc123")
    message = str(info.value)
    assert "'PKU-Alignment/PKU-SafeRLHF'" in message and "abc123" in message
    assert "hub access" in message and "local" in message and "ConnectionError" in message
    assert isinstance(info.value.__cause__, ConnectionError)


def test_hub_rows_are_validated_like_files(monkeypatch):
    import datasets

    calls = []

    def stand_in_for_the_hub(dataset_id, **kwargs):
        calls.append((dataset_id, kwargs))
        return [{"prompt": "first", "category_id": 2}, {"prompt": "second"}, {"prompt": "third", "category_id": 14}]

    monkeypatch.setattr(datasets, "load_dataset", stand_in_for_the_hub)
    with pytest.raises(DataValidationError, match="expected 0..13, got 14") as info:
        load_rows("PKU-Alignment/BeaverTails-Evaluation", "prompt", split="test", revision="v1")
    assert calls == [("PKU-Alignment/BeaverTails-Evaluation", {"split": "test", "revision": "v1"})]
    assert info.value.row == 2 and "PKU-Alignment/BeaverTails-Evaluation" in info.value.source

    result = load_rows("PKU-Alignment/BeaverTails-Evaluation", "prompt", split="test", skip_bad_rows=True)
    assert result.rows == [PromptRow("first", None, 2), PromptRow("second")] and result.skipped == 1


# --- demo sets -----------------------------------------------------------------------

DEMO_SCHEMAS = {"prompts": "prompt", "preferences": "preference",
                "qa_classification": "qa_classification", "sft": "sft"}


def test_demo_names_cover_every_schema():
    assert set(DEMO_SCHEMAS) == set(DEMO_DATASETS)
    # pairwise (HH-RLHF, TRL chosen/rejected) has no demo set: tests/data/test_pairwise_rows.py writes its rows.
    assert set(DEMO_SCHEMAS.values()) == set(SCHEMA_TYPES) - {"pairwise"}


@pytest.mark.parametrize("name", sorted(DEMO_SCHEMAS))
def test_demo_sets_load(name):
    if not (demo_dir() / f"{name}.json").is_file():
        pytest.skip(f"rayrlhf/data/demo/{name}.json not written yet (another helper ships the demo sets)")
    result = load_rows(f"demo:{name}", DEMO_SCHEMAS[name])
    assert result.source == f"demo:{name}" and result.skipped == 0
    raw = json.loads((demo_dir() / f"{name}.json").read_text(encoding="utf-8"))
    assert len(result.rows) == len(raw) > 0


def test_unknown_demo_name_lists_the_available_ones():
    with pytest.raises(ValueError) as info:
        load_rows("demo:preference", "preference")
    message = str(info.value)
    assert "demo:preference" in message
    assert all(f"demo:{name}" in message for name in DEMO_DATASETS)


def test_demo_prefix_reads_the_package_demo_folder(tmp_path, monkeypatch):
    """The demo:<name> mechanism itself, on a stand-in folder (independent of the shipped sets)."""
    import rayrlhf.data.loaders as loaders

    monkeypatch.setattr(loaders, "demo_dir", lambda: tmp_path)
    write_rows(SAMPLES["sft"], tmp_path / "sft.json")
    assert load_rows("demo:sft", "sft").rows == SAMPLES["sft"]
    with pytest.raises(FileNotFoundError, match="demo:prompts is missing"):
        load_rows("demo:prompts", "prompt")
    (tmp_path / "sft.json").write_text('[{"instruction": "x"}]', encoding="utf-8")
    with pytest.raises(DataValidationError, match="demo:sft: row 0, field 'output'"):
        load_rows("demo:sft", "sft")
