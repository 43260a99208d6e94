"""Property-based fuzz of the dataset loaders: random malformed rows in every format and schema.

Each example is a file of a few records, each either a valid row (built from a typed row, so the
expected result is known without the loader), a valid row with exactly one field broken (wrong
type, missing, null, blank, over-long, lone surrogate, unknown label, ...), a record broken as a
whole (not an object, bad JSON, bad UTF-8, surplus CSV cells) or a repeat of an earlier row.
The oracle follows from how each record was built:

- without skip_bad_rows the loader returns exactly the valid rows, or raises DataValidationError
  (never another exception) at the first bad record, naming the file, its row, its line (JSONL,
  CSV) and the broken field;
- with skip_bad_rows nothing raises (unless no valid row is left), the kept rows are exactly the
  valid ones, and kept + skipped == records read: nothing is lost silently.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayrlhf.data import (
    HARM_CATEGORIES,
    DataValidationError,
    PreferenceRow,
    PromptRow,
    QAClassificationRow,
    SFTRow,
    load_rows,
)

MAX_CHARS = 24  # small, so over-long texts stay cheap
FORMATS = (".json", ".jsonl", ".csv", ".parquet")
SCHEMAS = ("preference", "prompt", "qa_classification", "sft")
MISSING = object()  # the field is left out of the record
BAD_BYTE_MARK = "\ue000"  # replaced by the byte 0xff (not UTF-8) when the file is written
LONG = "x" * (MAX_CHARS + 1)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Each schema's fields and their kind; the kind decides which values break the field.
FIELDS: dict[str, list[tuple[str, str]]] = {
    "preference": [("prompt", "text"), ("response_0", "text"), ("response_1", "text"),
                   ("is_response_0_safe", "bool"), ("is_response_1_safe", "bool"),
                   ("better_response_id", "choice"), ("safer_response_id", "choice")],
    "prompt": [("prompt", "text"), ("category", "category"), ("category_id", "category_id")],
    "qa_classification": [("prompt", "text"), ("response", "text"), ("category", "flags"),
                          ("is_safe", "is_safe")],
    "sft": [("instruction", "text"), ("input", "optional_text"), ("output", "text")],
}
VALID_FLAGS = {name: False for name in HARM_CATEGORIES}
# Values that break a field of each kind, per format family. CSV cells are always text, so
# its list holds cells; Parquet columns have one type, so its list keeps each column's type.
BREAKERS: dict[str, dict[str, list[Any]]] = {
    "text": {
        "json": [MISSING, None, "", " \t\n", LONG, 3, 2.5, True, [], {"a": 1}, "a\ud800b"],
        "csv": [MISSING, "", "   ", LONG],
        "parquet": [MISSING, None, "", " \n", LONG],
    },
    "optional_text": {
        "json": [LONG, 3, [], {"a": 1}, False, "\udc80"],
        "csv": [LONG],
        "parquet": [LONG],
    },
    "category": {
        "json": ["not_a_category", "", " ", 3, ["animal_abuse"], LONG],
        "csv": ["not_a_category", " ", LONG],
        "parquet": ["not_a_category", "", " "],
    },
    "category_id": {
        "json": [14, -1, "3", True, 2.5, [1]],
        "csv": ["14", "-1", "x", "2.5", "1" * 5000],
        "parquet": [14, -1],
    },
    "bool": {
        "json": [MISSING, None, "true", 1, 0, "", [True], 2.5],
        "csv": [MISSING, "", "yes", "2", " "],
        "parquet": [MISSING, None],
    },
    "choice": {
        "json": [MISSING, None, 2, -1, True, False, "1", 1.0, [0]],
        "csv": [MISSING, "", "2", "-1", "one", "1.0", "1" * 5000],
        "parquet": [MISSING, None, 2, -1],
    },
    "flags": {
        "json": [MISSING, None, "x", [], {}, {k: v for k, v in VALID_FLAGS.items() if k != "self_harm"},
                 {**VALID_FLAGS, "unknown_harm": True}, {**VALID_FLAGS, "self_harm": "true"},
                 {**VALID_FLAGS, "animal_abuse": 1}],
        "csv": [MISSING, "", "not json", "[]", "{}", json.dumps({"animal_abuse": False})],
        "parquet": [MISSING, None],
    },
}
BREAKERS["is_safe"] = {family: [*values, "flip"] for family, values in BREAKERS["bool"].items()}


def family(fmt: str) -> str:
    return {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}[fmt]


# --- valid rows ------------------------------------------------------------------------

_chars = st.one_of(
    st.characters(codec="utf-8", exclude_characters=BAD_BYTE_MARK),
    st.sampled_from(list(',"\n\r\t {}\\;é🚲\x00')),
)
texts = st.text(_chars, min_size=1, max_size=MAX_CHARS).filter(lambda t: t.strip())


@st.composite
def typed_rows(draw, schema: str):
    if schema == "preference":
        return PreferenceRow(draw(texts), draw(texts), draw(texts), draw(st.booleans()),
                             draw(st.booleans()), draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    if schema == "prompt":
        cid = draw(st.none() | st.integers(0, len(HARM_CATEGORIES) - 1))
        shape = draw(st.sampled_from(["both", "name", "id"]))
        category = HARM_CATEGORIES[cid] if cid is not None and shape != "id" else None
        return PromptRow(draw(texts), category, cid if shape != "name" else None)
    if schema == "qa_classification":
        flags = {name: draw(st.booleans()) for name in HARM_CATEGORIES}
        return QAClassificationRow(draw(texts), draw(texts), flags, not any(flags.values()))
    return SFTRow(instruction=draw(texts), input=draw(st.sampled_from(["", " "]) | texts),
                  output=draw(texts))


@st.composite
def encoded(draw, value: Any, fmt: str) -> Any:
    """A valid value as the file holds it: CSV spells it as a cell, JSON may drop a null."""
    if family(fmt) == "csv":
        if value is None:
            return ""
        if isinstance(value, bool):
            return draw(st.sampled_from(["true", "True", " TRUE ", "1"] if value else
                                        ["false", "FALSE", "0", " false"]))
        if isinstance(value, int):
            return draw(st.sampled_from([str(value), f" {value} ", f"+{value}"]))
        if isinstance(value, dict):
            return json.dumps(value)
        return value
    if value is None and family(fmt) == "json":
        return draw(st.sampled_from([None, MISSING]))
    return value


json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(_chars, max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
extra_names = st.text("abcxyz_", min_size=1, max_size=4).map(lambda s: f"extra_{s}")


# --- records and their expected outcome --------------------------------------------------


@dataclass
class Record:
    """One record to write. ``fields`` for a row; ``raw`` for a record broken as a whole."""

    fields: dict[str, Any] | None = None
    whole: bool = False  # broken as a whole: ``raw`` is written instead of ``fields``
    raw: Any = None  # JSON value / JSONL line text / "surplus" or "bad_byte" (CSV)
    expect_row: Any = None  # the typed row when valid
    bad_field: str | None = None  # the field the loader must name when bad
    bad: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@st.composite
def records_for(draw, schema: str, fmt: str) -> list[Record]:
    fam = family(fmt)
    out: list[Record] = []
    for _ in range(draw(st.integers(1, 7))):
        kinds = ["valid", "valid", "field"]
        if fmt != ".parquet":
            kinds.append("record")
        if any(r.expect_row is not None for r in out):
            kinds.append("repeat")
        action = draw(st.sampled_from(kinds))
        if action == "repeat":
            row = draw(st.sampled_from([r.expect_row for r in out if r.expect_row is not None]))
        else:
            row = draw(typed_rows(schema))
        values = {name: draw(encoded(getattr(row, name), fmt)) for name, _ in FIELDS[schema]}
        extras = {}
        if draw(st.booleans()):
            junk = st.text(_chars, max_size=4) if fam == "parquet" else json_junk
            extras = draw(st.dictionaries(extra_names, junk, max_size=2))
            if fam == "csv":
                extras = {k: json.dumps(v) for k, v in extras.items()}
        record = Record(fields={**values, **extras}, expect_row=row, extras=extras)
        if action == "field":
            name, kind = draw(st.sampled_from(FIELDS[schema]))
            breaker = draw(st.sampled_from(BREAKERS[kind][fam]))
            if breaker == "flip":
                breaker = draw(encoded(not row.is_safe, fmt))
            record.fields[name] = breaker
            record.expect_row, record.bad, record.bad_field = None, True, name
        elif action == "record":
            record.expect_row, record.bad, record.whole = None, True, True
            if fmt == ".json":
                record.raw = draw(st.sampled_from([[1, 2], "row", 3, None, []]))
            elif fmt == ".jsonl":
                record.raw = draw(st.sampled_from([
                    "[1, 2]", "null", '"row"', "{oops", '{"prompt": "a",}', "[" * 3000 + "]" * 3000,
                    '{"prompt": ' + "9" * 5000 + "}", '{"prompt": "caf' + BAD_BYTE_MARK + '"}',
                ]))
            else:
                record.raw = draw(st.sampled_from(["surplus", "bad_byte"]))
        out.append(record)
    return out


def expected_outcome(records: list[Record]) -> list[Record]:
    """Mark repeats of an earlier valid row as bad: the loader reports them (skip: counts them)."""
    kept: list[Any] = []
    for record in records:
        if record.bad:
            continue
        if record.expect_row in kept:
            record.bad, record.expect_row = True, None
        else:
            kept.append(record.expect_row)
    return records


# --- writers (independent of rayrlhf.data.write_rows) ------------------------------------


def _with_bad_bytes(text: str) -> bytes:
    return text.encode("utf-8").replace(BAD_BYTE_MARK.encode("utf-8"), b"\xff")


def write(path: Path, schema: str, records: list[Record], blank_lines: list[bool], ascii_json: bool
          ) -> list[tuple[int, int]]:
    """Write the records; return each record's first and last line (line formats)."""
    def clean(fields):
        return {k: v for k, v in fields.items() if v is not MISSING}

    def dumps(value) -> str:
        text = json.dumps(value, ensure_ascii=ascii_json)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate can only be written escaped
            text = json.dumps(value, ensure_ascii=True)
        return text

    spans: list[tuple[int, int]] = []
    if path.suffix == ".json":
        path.write_text(dumps([r.raw if r.whole else clean(r.fields) for r in records]), encoding="utf-8")
        return [(0, 0)] * len(records)
    if path.suffix == ".jsonl":
        out, line = [], 1
        for record, blank in zip(records, blank_lines):
            if blank:
                out.append("  \n")
                line += 1
            text = record.raw if record.whole else dumps(clean(record.fields))
            out.append(text + "\n")
            spans.append((line, line))
            line += 1
        path.write_bytes(_with_bad_bytes("".join(out)))
        return spans
    if path.suffix == ".csv":
        columns = [name for name, _ in FIELDS[schema]]
        for record in records:
            columns += [k for k in record.extras if k not in columns]
        buffer = io.StringIO()
        csv.writer(buffer).writerow(columns)
        body, line = [buffer.getvalue()], 2
        for record in records:
            cells = ["" if record.fields.get(c, MISSING) is MISSING else record.fields[c] for c in columns]
            if record.raw == "surplus":
                cells += ["surplus"]
            elif record.raw == "bad_byte":
                cells[0] = f"caf{BAD_BYTE_MARK}"
            buffer = io.StringIO()
            csv.writer(buffer).writerow(cells)
            text = buffer.getvalue()
            body.append(text)
            spans.append((line, line + text.count("\n") - 1))
            line += text.count("\n")
        path.write_bytes(_with_bad_bytes("".join(body)))
        return spans
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [name for name, _ in FIELDS[schema]]
    for record in records:
        columns += [k for k in record.extras if k not in columns]
    table = pa.table({c: pa.array([None if r.fields.get(c, MISSING) is MISSING else r.fields[c]
                                   for r in records]) for c in columns})
    pq.write_table(table, path)
    return [(0, 0)] * len(records)


# --- the properties ---------------------------------------------------------------------


def check_names_the_place(error: DataValidationError, path: Path, record: Record, index: int,
                          span: tuple[int, int]) -> None:
    message = str(error)
    assert error.source == str(path) and message.startswith(str(path)), message
    assert error.row == index and f"row {index}" in message, message
    if path.suffix in (".jsonl", ".csv"):
        assert error.line is not None and span[0] <= error.line <= span[1], (message, span)
        assert f"line {error.line}" in message
    if record.bad_field is not None:  # QA flags name the flag: field 'category.self_harm'
        assert error.field is not None and error.field.split(".")[0] == record.bad_field, message
        assert f"field '{error.field}'" in message
    else:
        assert error.field is None, message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("schema", SCHEMAS)
@FUZZ
@given(data=st.data())
def test_loader_returns_valid_rows_or_names_the_bad_one(schema, fmt, data):
    records = expected_outcome(data.draw(records_for(schema, fmt)))
    blank_lines = data.draw(st.lists(st.booleans(), min_size=len(records), max_size=len(records)))
    ascii_json = data.draw(st.booleans())
    valid = [r.expect_row for r in records if not r.bad]
    bad = [i for i, r in enumerate(records) if r.bad]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{fmt}"
        spans = write(path, schema, records, blank_lines, ascii_json)

        # Strict: the valid rows, or an error at the first bad record.
        if bad:
            with pytest.raises(DataValidationError) as info:
                load_rows(path, schema, max_chars=MAX_CHARS)
            first = bad[0]
            check_names_the_place(info.value, path, records[first], first, spans[first])
        else:
            result = load_rows(path, schema, max_chars=MAX_CHARS)
            assert result.rows == valid and result.skipped == 0

        # Lenient: every bad record skipped and counted, every valid row kept, in order.
        if not valid:
            with pytest.raises(DataValidationError, match="no valid") as info:
                load_rows(path, schema, max_chars=MAX_CHARS, skip_bad_rows=True)
            assert str(path) in str(info.value)
            return
        result = load_rows(path, schema, max_chars=MAX_CHARS, skip_bad_rows=True)
        assert result.rows == valid
        assert result.skipped == len(bad) and len(result.rows) + result.skipped == len(records)
        assert [e.row for e in result.skipped_errors] == bad[:20]
        for error in result.skipped_errors:
            check_names_the_place(error, path, records[error.row], error.row, spans[error.row])


# --- focused cases the fuzzer found (and the duplicate check) ---------------------------


def test_duplicate_rows_name_both_rows_or_are_counted_skips(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n\n{"prompt": "a", "source": "x"}\n'
                    '{"prompt": "a", "category": null}\n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"duplicate of row 0 \(line 1\)") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line) == (2, 4)
    assert str(info.value).startswith(f"{path}: row 2, line 4: duplicate of row 0")
    result = load_rows(path, "prompt", skip_bad_rows=True)
    assert [r.prompt for r in result.rows] == ["a", "b"] and result.skipped == 2
    assert [e.row for e in result.skipped_errors] == [2, 3]
    # Rows that differ in any schema field are not repeats (category differs here).
    path.write_text('{"prompt": "a"}\n{"prompt": "a", "category": "animal_abuse"}\n', encoding="utf-8")
    assert len(load_rows(path, "prompt")) == 2


def test_duplicates_compare_typed_rows_across_spellings(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("prompt,category_id\nhi,3\nhi, +3 \n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"duplicate of row 0 \(line 2\)") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line) == (1, 3)


def test_jsonl_nesting_and_huge_numbers_are_row_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n"
                    '{"prompt": "b", "category_id": ' + "1" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="nested too deeply") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line) == (1, 2)
    result = load_rows(path, "prompt", skip_bad_rows=True)
    assert result.rows == [PromptRow("a")] and result.skipped == 2
    assert "number too long" in str(result.skipped_errors[1])


def test_json_nesting_and_huge_numbers_are_file_errors(tmp_path):
    path = tmp_path / "p.json"
    for body in ("[" * 100_000 + "]" * 100_000, '[{"prompt": "b", "category_id": ' + "1" * 5000 + "}]"):
        path.write_text(body, encoding="utf-8")
        with pytest.raises(DataValidationError, match="invalid JSON") as info:
            load_rows(path, "prompt", skip_bad_rows=True)
        assert str(info.value).startswith(str(path))


def test_lone_surrogates_are_rejected_with_the_field(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"instruction": "ok", "output": "bad \\ud800 text"}]', encoding="utf-8")
    with pytest.raises(DataValidationError, match="lone surrogate") as info:
        load_rows(path, "sft")
    assert (info.value.row, info.value.field) == (0, "output")


def test_csv_cells_longer_than_the_csv_module_limit_are_row_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\nok\n" + "x" * 200_000 + "\nok2\n", encoding="utf-8")
    result = load_rows(path, "prompt", skip_bad_rows=True)
    assert [r.prompt for r in result.rows] == ["ok", "ok2"] and result.skipped == 1
    assert "more than max_chars=20000" in str(result.skipped_errors[0])
    assert (result.skipped_errors[0].row, result.skipped_errors[0].field) == (1, "prompt")


def test_csv_huge_integer_cell_is_a_field_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,category_id\nb," + "1" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="expected an integer") as info:
        load_rows(path, "prompt")
    assert (info.value.row, info.value.line, info.value.field) == (0, 2, "category_id")


def test_bad_utf8_lines_are_skippable_rows_in_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n{"prompt": "c"}\n')
    result = load_rows(jsonl, "prompt", skip_bad_rows=True)
    assert [r.prompt for r in result.rows] == ["a", "c"] and result.skipped == 1
    error = result.skipped_errors[0]
    assert (error.row, error.line, error.byte_offset) == (1, 2, 28)
    # A quoted CSV cell over two lines with a bad byte on the second: the record is the bad row.
    table = tmp_path / "p.csv"
    table.write_bytes(b'prompt,category\na,\n"multi\n\xff line",\nc,\n')
    result = load_rows(table, "prompt", skip_bad_rows=True)
    assert [r.prompt for r in result.rows] == ["a", "c"] and result.skipped == 1
    error = result.skipped_errors[0]
    assert (error.row, error.line, error.byte_offset) == (1, 4, 26)


def test_csv_header_errors_stay_file_level(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"pro\xffmpt\na\n")
    with pytest.raises(DataValidationError, match="invalid UTF-8") as info:
        load_rows(path, "prompt", skip_bad_rows=True)
    assert (info.value.row, info.value.line, info.value.byte_offset) == (None, 1, 3)
    path.write_bytes(b'"pro"mpt\na\n')
    with pytest.raises(DataValidationError, match="malformed CSV header") as info:
        load_rows(path, "prompt", skip_bad_rows=True)
    assert info.value.line == 1
