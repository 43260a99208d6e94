"""Load typed rows from local files, the embedded demo sets, or the Hugging Face hub.

Every source goes through one path: raw records (plain dicts) are read lazily, renamed by
``field_map``, and validated in order by the schema's ``from_dict``. That keeps the error
story the same for a 30-row demo file and a 300k-row hub split: the first bad row names the
source, its 0-based row index and the field (plus the 1-based line and byte offset when the
file is broken below the record level), or, with ``skip_bad_rows``, the bad rows are counted
and reported instead of silently vanishing. A row equal in every field to an earlier one is a
bad row too: repeats weigh an example twice and leak it across a train/eval split.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrlhf.data.errors import DataValidationError
from rayrlhf.data.schemas import (
    DEFAULT_MAX_CHARS,
    PairwiseRow,
    PreferenceRow,
    PromptRow,
    QAClassificationRow,
    SFTRow,
)

log = logging.getLogger(__name__)

SCHEMA_TYPES: dict[str, type] = {
    "preference": PreferenceRow,
    "pairwise": PairwiseRow,
    "qa_classification": QAClassificationRow,
    "prompt": PromptRow,
    "sft": SFTRow,
}
FILE_FORMATS: tuple[str, ...] = (".json", ".jsonl", ".parquet", ".csv")
DEMO_DATASETS: tuple[str, ...] = ("prompts", "preferences", "qa_classification", "sft")
DEMO_PREFIX = "demo:"
# Enough to see whether the bad rows share one cause without holding a million errors.
MAX_KEPT_ERRORS = 20
_PARQUET_BATCH_ROWS = 1024
# CSV cells may be as long as the file: an over-long text is then a row error from the schema
# (max_chars) instead of the csv module's file-level "field larger than field limit" (128 KiB).
_CSV_FIELD_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class LoadResult:
    """Validated rows plus what was dropped, so callers can report or refuse a lossy load."""

    rows: list
    skipped: int
    source: str
    skipped_errors: list[DataValidationError] = field(default_factory=list)
    # The 0-based source row of each kept row (as in error messages), so that a caller can
    # read the fields a schema ignores (severity, per-response harm flags) beside each row.
    row_numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class _RawRecord:
    """One record as read, or the error that stopped it from being read (a bad JSON line)."""

    row: int
    data: Any = None
    line: int | None = None
    error: DataValidationError | None = None


def schema_type(schema: str) -> type:
    """The row class for a schema name; a typo fails before any file is opened."""
    try:
        return SCHEMA_TYPES[schema]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown schema {schema!r}; choose one of {', '.join(sorted(SCHEMA_TYPES))}"
        ) from None


def demo_dir() -> Path:
    """The small, licence-free example sets shipped inside the package."""
    return Path(__file__).parent / "demo"


def load_rows(
    source: str | Path,
    schema: str,
    *,
    split: str = "train",
    revision: str | None = None,
    skip_bad_rows: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
    limit: int | None = None,
    field_map: Mapping[str, str] | None = None,
) -> LoadResult:
    """Read ``source`` and validate every record as ``schema`` rows.

    ``source`` is a local ``.json`` (top-level array) / ``.jsonl`` / ``.parquet`` / ``.csv``
    file, ``demo:<name>`` for an embedded set, or a hub dataset id (``split`` and
    ``revision`` apply only to the hub). ``field_map`` renames dataset columns to schema
    fields before validation. ``limit`` keeps the first N valid rows. Zero rows is an error:
    a run on an empty dataset is always a mistake.
    """
    row_type = schema_type(schema)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    rename = _check_field_map(field_map, row_type)
    label, records, from_csv = _open_records(source, split=split, revision=revision)

    rows: list = []
    row_numbers: list[int] = []
    skipped = 0
    kept_errors: list[DataValidationError] = []
    seen = 0
    first_copy: dict[tuple, tuple[int, int | None]] = {}  # row key -> (row, line) first read
    try:
        for record in records:
            seen += 1
            try:
                if record.error is not None:
                    raise record.error
                data = _renamed(record.data, rename)
                typed = row_type.from_dict(
                    data, source=label, row=record.row, max_chars=max_chars, from_csv=from_csv
                )
                _check_not_repeated(typed, record, first_copy, label)
                rows.append(typed)
                row_numbers.append(record.row)
            except DataValidationError as exc:
                if record.line is not None and exc.line is None:
                    exc = _with_line(exc, record.line)
                if not skip_bad_rows:
                    raise exc from None
                skipped += 1
                if len(kept_errors) < MAX_KEPT_ERRORS:
                    kept_errors.append(exc)
                continue
            if limit is not None and len(rows) >= limit:
                break
    finally:
        close = getattr(records, "close", None)
        if close is not None:  # a generator stopped early by ``limit`` releases its file now
            close()

    if skipped:
        log.warning(
            "%s: skipped %d bad %s row(s) of %d read; first: %s",
            label, skipped, schema, seen, kept_errors[0],
        )
    if not rows:
        if seen == 0:
            raise DataValidationError("the dataset has no rows", source=label)
        raise DataValidationError(
            f"no valid {schema} rows: all {skipped} row(s) read were bad; first: {kept_errors[0]}",
            source=label,
        )
    return LoadResult(rows=rows, skipped=skipped, source=label, skipped_errors=kept_errors,
                      row_numbers=row_numbers)


def load_dataset_from_config(ds_cfg) -> LoadResult:
    """``load_rows`` with the keyword arguments of a ``DatasetConfig`` section."""
    return load_rows(
        ds_cfg.source,
        ds_cfg.schema,
        split=ds_cfg.split,
        revision=ds_cfg.revision,
        skip_bad_rows=ds_cfg.skip_bad_rows,
        max_chars=ds_cfg.max_chars,
        limit=ds_cfg.limit,
        field_map=dict(ds_cfg.field_map),
    )


def spread(rows: list, n: int) -> list:
    """``n`` rows evenly spaced over the dataset, so a sorted set shows every category."""
    if n >= len(rows):
        return list(rows)
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def _row_key(row: Any) -> tuple:
    """Hashable identity of a typed row (its field values; the QA flags as a tuple)."""
    return tuple(
        tuple(value.items()) if isinstance(value, dict) else value
        for value in (getattr(row, f.name) for f in dataclasses.fields(row))
    )


def _check_not_repeated(row: Any, record: _RawRecord,
                        first_copy: dict[tuple, tuple[int, int | None]], label: str) -> None:
    """A row equal in every schema field to an earlier valid row is an error naming both."""
    earlier = first_copy.setdefault(_row_key(row), (record.row, record.line))
    if earlier[0] == record.row:
        return
    where = f"row {earlier[0]}" + (f" (line {earlier[1]})" if earlier[1] is not None else "")
    raise DataValidationError(
        f"duplicate of {where}: every field is equal; remove the repeat "
        "(skip_bad_rows=true skips repeats and counts them)",
        source=label, row=record.row, line=record.line,
    )


def _check_field_map(field_map: Mapping[str, str] | None, row_type: type) -> dict[str, str]:
    """A mapping onto a field the schema does not have is a typo; say so before reading."""
    if not field_map:
        return {}
    fields = {f.name for f in dataclasses.fields(row_type)}
    unknown = sorted(str(target) for target in field_map.values() if target not in fields)
    if unknown:
        raise ValueError(
            f"field_map targets {unknown} are not {row_type.__name__} fields; "
            f"expected some of {sorted(fields)}"
        )
    return dict(field_map)


def _renamed(data: Any, rename: Mapping[str, str]) -> Any:
    """The record with mapped columns renamed; a mapped column wins over an existing field."""
    if not rename or not isinstance(data, Mapping):
        return data
    out = {key: value for key, value in data.items() if key not in rename}
    for column, target in rename.items():
        if column in data:
            out[target] = data[column]
    return out


def _with_line(exc: DataValidationError, line: int) -> DataValidationError:
    return DataValidationError(
        exc.message, source=exc.source, row=exc.row, field=exc.field, line=line,
        byte_offset=exc.byte_offset,
    )


def _open_records(
    source: str | Path, *, split: str, revision: str | None
) -> tuple[str, Iterator[_RawRecord], bool]:
    """Classify ``source``: its display label, a lazy record iterator, and whether the
    records are CSV text cells (which the row classes then parse leniently)."""
    if isinstance(source, str) and source.startswith(DEMO_PREFIX):
        name = source[len(DEMO_PREFIX):]
        return source, _file_records(_demo_path(name), label=source), False
    if isinstance(source, os.PathLike):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data file {str(source)!r} does not exist")
        label = str(source)
    elif isinstance(source, str) and source.strip():
        path = Path(source).expanduser()
        if not path.exists():
            if path.suffix.lower() in FILE_FORMATS or source.startswith((".", "/", "~")):
                raise FileNotFoundError(f"data file {source!r} does not exist")
            label = _hub_label(source, split, revision)
            return label, _hub_records(source, split=split, revision=revision), False
        label = source
    else:
        raise ValueError(f"data source must be a non-empty string or path, got {source!r}")
    return label, _file_records(path, label=label), path.suffix.lower() == ".csv"


def _demo_path(name: str) -> Path:
    shipped = {p.stem for p in demo_dir().glob("*.json")} if demo_dir().is_dir() else set()
    available = sorted(set(DEMO_DATASETS) | shipped)
    if name not in available:
        raise ValueError(
            f"unknown demo dataset {DEMO_PREFIX}{name}; available: "
            + ", ".join(DEMO_PREFIX + n for n in available)
        )
    path = demo_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"demo dataset {DEMO_PREFIX}{name} is missing: no file {path}")
    return path


def _file_records(path: Path, *, label: str) -> Iterator[_RawRecord]:
    if path.is_dir():
        raise ValueError(
            f"{label} is a directory; give a {'/'.join(FILE_FORMATS)} file or a hub dataset id"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _json_records(path, label)
    if suffix == ".jsonl":
        return _jsonl_records(path, label)
    if suffix == ".parquet":
        return _parquet_records(path, label)
    if suffix == ".csv":
        return _csv_records(path, label)
    raise ValueError(
        f"{label}: unsupported file type {path.suffix or '(none)'!r}; "
        f"use one of {', '.join(FILE_FORMATS)}"
    )


def _decode_error(exc: UnicodeDecodeError, label: str, *, start: int, line: int, row: int | None
                  ) -> DataValidationError:
    return DataValidationError(
        f"invalid UTF-8 ({exc.reason}); the file must be UTF-8 text",
        source=label, row=row, line=line, byte_offset=start + exc.start,
    )


def _json_records(path: Path, label: str) -> Iterator[_RawRecord]:
    """A top-level JSON array, read whole (json cannot stream it); each element is a record."""
    raw = path.read_bytes()
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: bom + exc.start].count(b"\n") + 1
        raise _decode_error(exc, label, start=bom, line=line, row=None) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataValidationError(
            f"invalid JSON: {_json_problem(exc)}", source=label,
            line=exc.lineno if isinstance(exc, json.JSONDecodeError) else None,
        ) from None
    if not isinstance(data, list):
        raise DataValidationError(
            f"expected a JSON array of records at the top level, got {type(data).__name__}; "
            "use .jsonl for one record per line",
            source=label,
        )
    return (_RawRecord(row=i, data=item) for i, item in enumerate(data))


def _json_problem(exc: ValueError | RecursionError) -> str:
    """What stopped ``json.loads``: a syntax error, or junk it cannot hold (deep nesting,
    integers longer than Python converts)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "arrays/objects nested too deeply to parse"
    return f"a number too long to parse ({str(exc).split(':')[0]})"


def _utf8_lines(path: Path, label: str
                ) -> Iterator[tuple[int, str, DataValidationError | None]]:
    """(1-based line number, text, error) for each line, decoded one at a time so that a
    multi-GB file is never held whole. A line with bytes that are not UTF-8 comes with an
    error naming the first bad byte's offset in the file (its row is set by the caller) and
    its text decoded with ``surrogateescape``, so the reader can go on to the next record."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            error = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                error = _decode_error(exc, label, start=offset, line=number, row=None)
                text = raw.decode("utf-8", errors="surrogateescape")
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            offset += len(raw)
            yield number, text, error


def _at_row(exc: DataValidationError, row: int) -> DataValidationError:
    return DataValidationError(exc.message, source=exc.source, row=row, field=exc.field,
                               line=exc.line, byte_offset=exc.byte_offset)


def _jsonl_records(path: Path, label: str) -> Iterator[_RawRecord]:
    """One record per non-blank line. A line that is not UTF-8 or not JSON is a bad row (the
    next line is still a record boundary, so skip_bad_rows can skip it)."""
    row = 0
    for number, text, error in _utf8_lines(path, label):
        if not text.strip():
            continue
        if error is not None:
            yield _RawRecord(row=row, line=number, error=_at_row(error, row))
        else:
            try:
                yield _RawRecord(row=row, data=json.loads(text), line=number)
            except (ValueError, RecursionError) as exc:
                error = DataValidationError(
                    f"invalid JSON: {_json_problem(exc)}", source=label, row=row, line=number,
                )
                yield _RawRecord(row=row, line=number, error=error)
        row += 1


def _parquet_records(path: Path, label: str) -> Iterator[_RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"not a readable Parquet file: {exc}", source=label) from None

    def records() -> Iterator[_RawRecord]:
        row = 0
        with parquet:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for item in batch.to_pylist():
                    yield _RawRecord(row=row, data=item)
                    row += 1

    return records()


def _csv_records(path: Path, label: str) -> Iterator[_RawRecord]:
    """Header row, then one record per CSV record (which may span lines when quoted).

    Every cell is text; the row classes parse it with ``from_csv=True``. Blank lines are
    skipped and not counted as rows, matching ``csv.DictReader``. Bytes that are not UTF-8
    make their record a bad row (in the header: the file is bad).
    """
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    bad_lines: dict[int, DataValidationError] = {}

    def line_texts() -> Iterator[str]:
        for number, text, error in _utf8_lines(path, label):
            if error is not None:
                bad_lines[number] = error
            yield text

    reader = csv.reader(line_texts(), strict=True)
    row = 0
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataValidationError(f"malformed CSV header: {exc}", source=label, line=1) from None
    if header is None:
        return
    if bad_lines:
        raise next(iter(bad_lines.values()))
    if len(set(header)) != len(header):
        duplicates = sorted({name for name in header if header.count(name) > 1})
        raise DataValidationError(
            f"duplicate CSV header column(s) {duplicates}", source=label, line=1
        )
    while True:
        start_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # Not skippable: after a quoting error the parser no longer knows where the
            # next record starts, so skipping would silently drop or garble the rest.
            raise DataValidationError(
                f"malformed CSV: {exc}", source=label, row=row, line=start_line
            ) from None
        if not cells:
            bad_lines.clear()
            continue
        bad = [bad_lines.pop(n) for n in sorted(bad_lines) if n <= reader.line_num]
        if bad:
            yield _RawRecord(row=row, line=start_line, error=_at_row(bad[0], row))
        elif len(cells) > len(header):
            error = DataValidationError(
                f"{len(cells)} cells but the header has {len(header)} columns",
                source=label, row=row, line=start_line,
            )
            yield _RawRecord(row=row, line=start_line, error=error)
        else:
            yield _RawRecord(row=row, data=dict(zip(header, cells)), line=start_line)
        row += 1


def _hub_label(dataset_id: str, split: str, revision: str | None) -> str:
    return f"{dataset_id}[{split}]" + (f"@{revision}" if revision else "")


def _hub_records(dataset_id: str, *, split: str, revision: str | None) -> Iterator[_RawRecord]:
    """Rows of one split of a hub dataset, downloaded (or taken from the datasets cache)."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(dataset_id, split=split, revision=revision)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the user
        raise RuntimeError(
            f"could not load hub dataset {dataset_id!r} (split {split!r}, revision "
            f"{revision or 'default'}): {type(exc).__name__}: {exc}. Loading a dataset id "
            "needs Hugging Face hub access (or a warm datasets cache); otherwise give a local "
            f"{'/'.join(FILE_FORMATS)} file path or a demo:<name> set"
        ) from exc
    return (_RawRecord(row=i, data=item) for i, item in enumerate(dataset))


# --- writing ---------------------------------------------------------------------------


def write_rows(rows: Sequence[Any], path: str | Path) -> Path:
    """Write rows of one schema to ``path`` in the format its suffix names.

    The output loads back into equal rows with ``load_rows`` for every format. CSV cells are
    text: booleans become ``true``/``false``, ``None`` an empty cell, and the QA ``category``
    dict its JSON text. The file is written beside its target and renamed into place, so a
    crash never leaves half a dataset under the final name.
    """
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}; an empty dataset cannot be loaded back")
    row_type = type(rows[0])
    if row_type not in SCHEMA_TYPES.values():
        raise TypeError(f"expected schema rows ({', '.join(t.__name__ for t in SCHEMA_TYPES.values())}), "
                        f"got {row_type.__name__}")
    mixed = {type(r).__name__ for r in rows if type(r) is not row_type}
    if mixed:
        raise TypeError(f"rows mix {row_type.__name__} with {sorted(mixed)}; write one schema per file")
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(f"cannot write {path}: use one of {', '.join(FILE_FORMATS)}")
    records = [row.to_dict() for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if suffix == ".json":
            staging.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        elif suffix == ".jsonl":
            with staging.open("w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), staging)
        else:
            columns = [f.name for f in dataclasses.fields(row_type)]
            with staging.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows([_csv_cell(record[c]) for c in columns] for record in records)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def iter_raw_records(source: str | Path, *, split: str = "train", revision: str | None = None
                     ) -> Iterable[Any]:
    """The unvalidated records of a source, for inspecting a file that fails to load."""
    _, records, _ = _open_records(source, split=split, revision=revision)
    for record in records:
        if record.error is not None:
            raise record.error
        yield record.data
