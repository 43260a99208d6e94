"""Typed rows for the four kinds of data Safe RLHF uses, validated where they enter.

Every loader turns raw records into one of these frozen dataclasses through ``from_dict``,
so the trainers never see a string-keyed dict, a ``"false"`` that is truthy, or a preference
label of 2. Rules shared by all rows:

- text fields must be ``str``; prompts, responses, instructions and outputs must also be
  non-blank, and no text may be longer than ``max_chars`` (a guard against a whole
  document pasted into one cell);
- booleans must be real booleans and integers real integers (``True`` is not ``1``). Only
  rows read from CSV (``from_csv=True``), where every cell is text, may spell them as
  ``"true"``/``"false"``/``"1"``/``"0"`` and ``"3"``;
- a field with a default may be absent or null; unknown extra fields are ignored, because
  the real datasets carry extras (PKU-SafeRLHF has sources and severity levels, Alpaca a
  pre-rendered ``text``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rayrlhf.data.errors import DataValidationError

# Generous for chat data (PKU-SafeRLHF responses are under 2k characters) while still
# catching a broken row that holds a whole file.
DEFAULT_MAX_CHARS = 20_000

# BeaverTails' 14 harm categories; the position is the ``category_id`` of
# BeaverTails-Evaluation, so the order must not change.
HARM_CATEGORIES: tuple[str, ...] = (
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)
HARM_CATEGORY_ID: Mapping[str, int] = {name: i for i, name in enumerate(HARM_CATEGORIES)}

_CSV_TRUE = frozenset({"true", "1"})
_CSV_FALSE = frozenset({"false", "0"})
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
_MISSING = object()


def _show(value: Any) -> str:
    """A short rendering of a bad value that also says its type (``str '1'`` is not ``1``)."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return shown
    return f"{type(value).__name__} {shown}"


@dataclass(frozen=True)
class _FieldReader:
    """Reads typed fields out of one raw record; every failure names source, row and field."""

    data: Mapping[str, Any]
    source: str
    row: int | None
    max_chars: int
    from_csv: bool

    def fail(self, field: str, message: str) -> DataValidationError:
        return DataValidationError(message, source=self.source, row=self.row, field=field)

    def raw(self, field: str, default: Any = _MISSING) -> Any:
        """The value, or ``default`` when absent/null (CSV: also an empty cell)."""
        value = self.data.get(field)
        if value is None or (self.from_csv and default is not _MISSING and value == ""):
            if default is _MISSING:
                raise self.fail(field, "missing required field")
            return default
        return value

    def text(self, field: str, *, default: Any = _MISSING, allow_blank: bool = False,
             bounded: bool = True) -> Any:
        """A text field; ``bounded=False`` for labels checked against a fixed set instead (a
        small ``max_chars`` must not reject a valid harm category name)."""
        value = self.raw(field, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {_show(value)}")
        if not allow_blank and not value.strip():
            raise self.fail(field, "expected non-empty text, got an empty or blank string")
        if bounded and len(value) > self.max_chars:
            raise self.fail(
                field, f"text has {len(value)} characters, more than max_chars={self.max_chars}"
            )
        try:  # JSON may spell a lone surrogate ("\ud800"); no tokenizer or writer takes it
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self.fail(
                field, f"not valid Unicode text: lone surrogate {value[exc.start]!r} at "
                f"character {exc.start}"
            ) from None
        return value

    def flag(self, field: str) -> bool:
        value = self.raw(field)
        if isinstance(value, bool):
            return value
        if self.from_csv and isinstance(value, str):
            word = value.strip().lower()
            if word in _CSV_TRUE:
                return True
            if word in _CSV_FALSE:
                return False
            raise self.fail(field, f"expected true/false/1/0, got {_show(value)}")
        raise self.fail(field, f"expected a boolean (JSON true/false), got {_show(value)}")

    def integer(self, field: str, *, default: Any = _MISSING) -> Any:
        value = self.raw(field, default)
        if value is default and default is not _MISSING:
            return value
        if self.from_csv and isinstance(value, str) and _INT_TEXT.fullmatch(value):
            try:
                return int(value)
            except ValueError:  # more digits than Python converts (4300): never a valid id
                raise self.fail(field, f"expected an integer, got {_show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"expected an integer, got {_show(value)}")
        return value

    def choice(self, field: str, allowed: tuple[int, ...]) -> int:
        value = self.integer(field)
        if value not in allowed:
            options = " or ".join(str(a) for a in allowed)
            raise self.fail(field, f"expected {options}, got {value}")
        return value


def _reader(
    cls: type, d: Any, source: str, row: int | None, max_chars: int, from_csv: bool
) -> _FieldReader:
    if not isinstance(d, Mapping):
        raise DataValidationError(
            f"expected an object with {cls.__name__} fields, got {type(d).__name__}",
            source=source,
            row=row,
        )
    return _FieldReader(d, source, row, max_chars, from_csv)


@dataclass(frozen=True)
class PreferenceRow:
    """One PKU-SafeRLHF comparison: two responses with helpfulness and harmlessness labels.

    The two labels are independent on purpose: the reward model learns from
    ``better_response_id`` and the cost model from ``safer_response_id`` plus the per-response
    safety signs (Safe RLHF, Dai et al. 2023, eq. 5-6).
    """

    prompt: str
    response_0: str
    response_1: str
    is_response_0_safe: bool
    is_response_1_safe: bool
    better_response_id: int  # 0 or 1: the more helpful response
    safer_response_id: int  # 0 or 1: the more harmless response

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<dict>",
        row: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        from_csv: bool = False,
    ) -> PreferenceRow:
        r = _reader(cls, d, source, row, max_chars, from_csv)
        return cls(
            prompt=r.text("prompt"),
            response_0=r.text("response_0"),
            response_1=r.text("response_1"),
            is_response_0_safe=r.flag("is_response_0_safe"),
            is_response_1_safe=r.flag("is_response_1_safe"),
            better_response_id=r.choice("better_response_id", (0, 1)),
            safer_response_id=r.choice("safer_response_id", (0, 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def response(self, index: int) -> str:
        return self.response_1 if index else self.response_0

    def is_safe(self, index: int) -> bool:
        return self.is_response_1_safe if index else self.is_response_0_safe

    @property
    def better_response(self) -> str:
        return self.response(self.better_response_id)

    @property
    def worse_response(self) -> str:
        return self.response(1 - self.better_response_id)

    @property
    def safer_response(self) -> str:
        return self.response(self.safer_response_id)

    @property
    def unsafer_response(self) -> str:
        return self.response(1 - self.safer_response_id)


@dataclass(frozen=True)
class QAClassificationRow:
    """One BeaverTails QA pair with its 14 harm flags, for training the moderation model."""

    prompt: str
    response: str
    category: dict[str, bool]  # all 14 HARM_CATEGORIES, in that order
    is_safe: bool  # BeaverTails: safe exactly when no harm category is flagged

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<dict>",
        row: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        from_csv: bool = False,
    ) -> QAClassificationRow:
        r = _reader(cls, d, source, row, max_chars, from_csv)
        prompt = r.text("prompt")
        response = r.text("response")
        category = _read_harm_flags(r)
        is_safe = r.flag("is_safe")
        flagged = [name for name, on in category.items() if on]
        if is_safe == bool(flagged):
            detail = f"flags {', '.join(flagged)}" if flagged else "flags no category"
            raise r.fail("is_safe", f"is_safe={is_safe} contradicts category, which {detail}")
        return cls(prompt=prompt, response=response, category=category, is_safe=is_safe)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def harm_vector(self) -> tuple[bool, ...]:
        """The flags in HARM_CATEGORIES order: the moderation model's multi-label target."""
        return tuple(self.category[name] for name in HARM_CATEGORIES)


def _read_harm_flags(r: _FieldReader) -> dict[str, bool]:
    value = r.raw("category")
    if r.from_csv and isinstance(value, str):  # a CSV cell can only hold it as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise r.fail("category", f"expected a JSON object in the cell: {exc.msg}") from exc
    if not isinstance(value, Mapping):
        raise r.fail("category", f"expected an object of 14 harm flags, got {_show(value)}")
    unknown = [key for key in value if key not in HARM_CATEGORY_ID]
    if unknown:
        raise r.fail("category", f"unknown harm category {unknown[0]!r}; expected {HARM_CATEGORIES}")
    missing = [name for name in HARM_CATEGORIES if name not in value]
    if missing:
        raise r.fail("category", f"missing harm categories: {', '.join(missing)}")
    flags = {}
    for name in HARM_CATEGORIES:
        flag = value[name]
        if not isinstance(flag, bool):
            raise r.fail(f"category.{name}", f"expected a boolean, got {_show(flag)}")
        flags[name] = flag
    return flags


@dataclass(frozen=True)
class PromptRow:
    """A prompt to answer: PPO rollouts and the BeaverTails-Evaluation safety benchmark."""

    prompt: str
    category: str | None = None  # one of HARM_CATEGORIES, when the prompt set is labelled
    category_id: int | None = None  # its index in HARM_CATEGORIES

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<dict>",
        row: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        from_csv: bool = False,
    ) -> PromptRow:
        r = _reader(cls, d, source, row, max_chars, from_csv)
        prompt = r.text("prompt")
        category = r.text("category", default=None, bounded=False)
        if category is not None and category not in HARM_CATEGORY_ID:
            raise r.fail(
                "category", f"unknown harm category {category!r}; expected one of {HARM_CATEGORIES}"
            )
        category_id = r.integer("category_id", default=None)
        if category_id is not None:
            if not 0 <= category_id < len(HARM_CATEGORIES):
                raise r.fail(
                    "category_id", f"expected 0..{len(HARM_CATEGORIES) - 1}, got {category_id}"
                )
            if category is not None and HARM_CATEGORY_ID[category] != category_id:
                raise r.fail(
                    "category_id",
                    f"category_id {category_id} is {HARM_CATEGORIES[category_id]!r}, "
                    f"but category is {category!r} (id {HARM_CATEGORY_ID[category]})",
                )
        return cls(prompt=prompt, category=category, category_id=category_id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class SFTRow:
    """One Alpaca instruction-following example for supervised fine-tuning.

    Keyword-only because ``input`` has a default yet sits between the two required fields,
    matching Alpaca's column order.
    """

    instruction: str
    input: str = ""  # optional context; often empty in Alpaca
    output: str

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<dict>",
        row: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        from_csv: bool = False,
    ) -> SFTRow:
        r = _reader(cls, d, source, row, max_chars, from_csv)
        return cls(
            instruction=r.text("instruction"),
            input=r.text("input", default="", allow_blank=True),
            output=r.text("output"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def prompt(self) -> str:
        """What the user says: the instruction, then the input after a blank line if any."""
        if self.input.strip():
            return f"{self.instruction}\n\n{self.input}"
        return self.instruction


# HH-RLHF's dialogue turns: "\n\nHuman: ..." and "\n\nAssistant: ...".
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def split_hh_dialogue(text: str) -> tuple[list[tuple[str, str]], str]:
    """HH-RLHF text -> (the turns before the last answer as (role, content), the last answer).

    Raises ``ValueError`` naming what is wrong (the caller adds file, row and field)."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"expected the dialogue to start with '\\n\\nHuman: ', got {parts[0][:40]!r}")
    turns = [(role, content.strip()) for role, content in zip(parts[1::2], parts[2::2])]
    if len(turns) < 2 or turns[-1][0] != "Assistant":
        raise ValueError("expected Human/Assistant turns ending with an Assistant turn")
    if not turns[-1][1]:
        raise ValueError("the last Assistant turn is empty")
    return turns[:-1], turns[-1][1]


def hh_prompt(turns: list[tuple[str, str]]) -> str:
    """The prompt of a dialogue: the human's text for one turn; earlier turns kept, labelled,
    before the last human turn for several (rayrlhf's templates take one user message)."""
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{role}: {content}" for role, content in turns)


@dataclass(frozen=True)
class PairwiseRow:
    """A general preference pair: ``chosen`` preferred to ``rejected``, nothing more.

    Reads TRL-style rows (``prompt``, ``chosen``, ``rejected``) and HH-RLHF rows, where
    ``chosen`` and ``rejected`` are whole dialogues (``\n\nHuman: ...\n\nAssistant: ...``,
    multi-turn) that share every turn but the last answer. Without safety labels a cost model
    learns only the pairwise term from these (chosen = safer), no sign terms.
    """

    prompt: str
    chosen: str
    rejected: str

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        source: str = "<dict>",
        row: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        from_csv: bool = False,
    ) -> PairwiseRow:
        r = _reader(cls, d, source, row, max_chars, from_csv)
        if d.get("prompt") is not None:
            return cls(prompt=r.text("prompt"), chosen=r.text("chosen"), rejected=r.text("rejected"))
        dialogues = {}
        for name in ("chosen", "rejected"):
            try:
                dialogues[name] = split_hh_dialogue(r.text(name, allow_blank=True))
            except ValueError as exc:
                if isinstance(exc, DataValidationError):
                    raise
                raise r.fail(name, f"no 'prompt' field, so an HH-RLHF dialogue: {exc}") from None
        if dialogues["chosen"][0] != dialogues["rejected"][0]:
            raise r.fail("rejected", "its turns before the last answer differ from chosen's (HH-RLHF pairs share them)")
        return cls(prompt=hh_prompt(dialogues["chosen"][0]), chosen=dialogues["chosen"][1],
                   rejected=dialogues["rejected"][1])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # The trainers' view of a pair: chosen is both the better and the safer answer.
    better_response = safer_response = property(lambda self: self.chosen)
    worse_response = unsafer_response = property(lambda self: self.rejected)


Row = PreferenceRow | PairwiseRow | QAClassificationRow | PromptRow | SFTRow
ROW_SCHEMAS: tuple[type, ...] = (PreferenceRow, PairwiseRow, QAClassificationRow, PromptRow, SFTRow)
