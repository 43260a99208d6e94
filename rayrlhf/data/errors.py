"""The one error type for bad data, so a failure always says which file, row and field."""

from __future__ import annotations


class DataValidationError(ValueError):
    """A dataset row (or the whole file) does not match its schema.

    Carries where the problem is so that a run over 300k hub rows fails with a message a
    person can act on: ``data/x.jsonl: row 12, field 'better_response_id': expected 0 or 1,
    got 2``. ``row`` is the 0-based index of the record as read (header and blank lines not
    counted); ``line`` (1-based) and ``byte_offset`` are set where a text file is broken below
    the record level (bad JSON, bad UTF-8).
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
        byte_offset: int | None = None,
    ) -> None:
        self.message = message
        self.source = str(source)
        self.row = row
        self.field = field
        self.line = line
        self.byte_offset = byte_offset
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.byte_offset is not None:
            where.append(f"byte {self.byte_offset}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        location = ", ".join(where)
        prefix = f"{self.source}: {location}" if location else self.source
        return f"{prefix}: {self.message}"

    def __reduce__(self):
        # Keyword-only arguments do not survive the default exception pickling; Ray ships
        # these errors between processes.
        return (
            _rebuild,
            (self.message, self.source, self.row, self.field, self.line, self.byte_offset),
        )


def _rebuild(message, source, row, field, line, byte_offset) -> DataValidationError:
    return DataValidationError(
        message, source=source, row=row, field=field, line=line, byte_offset=byte_offset
    )
