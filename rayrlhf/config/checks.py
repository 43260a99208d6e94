"""Checks of config values, written beside the fields they govern.

A schema field declares its checks with :func:`checked` (``lr: float = checked(2e-5,
POSITIVE)``); a schema class may add a ``checks(section, prefix)`` classmethod for rules that
tie several of its fields together. ``rayrlhf.config.validate`` walks a composed config and
applies both. A check takes a value and returns None when it is fine, else why it is not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Optional

Check = Callable[[Any], Optional[str]]
# (dotted key, value, why it cannot work)
Problem = tuple[str, Any, str]
CHECKS = "rayrlhf_checks"  # the dataclass field metadata key holding a field's checks


def checked(default: Any = dataclasses.MISSING, *checks: Check, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose values must pass ``checks`` (default, or ``factory`` for
    mutable defaults)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={CHECKS: checks})
    return dataclasses.field(default=default, metadata={CHECKS: checks})


def field_checks(schema: type, name: str) -> tuple[Check, ...]:
    """The checks a schema class declares for its field ``name`` (none for other fields)."""
    for f in dataclasses.fields(schema):
        if f.name == name:
            return f.metadata.get(CHECKS, ())
    return ()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def greater(bound: float, why: str = "") -> Check:
    return lambda v: None if not is_number(v) or v > bound else f"must be > {bound:g}{why}"


def at_least(bound: float) -> Check:
    return lambda v: None if not is_number(v) or v >= bound else f"must be >= {bound:g}"


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not is_number(v):
            return None
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        if above and below:
            return None
        return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return check


Choices = Iterable[Any] | Callable[[], Iterable[Any]]


def _resolve(choices: Choices) -> tuple[Any, ...]:
    # A callable is asked at check time: a schema names a consumer's constant without
    # importing that consumer's (torch-heavy) module whenever a config is composed.
    return tuple(choices() if callable(choices) else choices)


def one_of(choices: Choices) -> Check:
    def check(v: Any) -> str | None:
        allowed = _resolve(choices)
        return None if v in allowed else f"must be one of {', '.join(map(str, allowed))}"
    return check


def each_one_of(choices: Choices) -> Check:
    def check(v: Any) -> str | None:
        allowed = _resolve(choices)
        bad = [item for item in (v or []) if item not in allowed]
        return f"unknown {bad}; choose from {', '.join(map(str, allowed))}" if bad else None
    return check


COUNT = at_least(1)  # ranks, engines, steps, batch sizes, token budgets
POSITIVE = greater(0)
NON_NEGATIVE = at_least(0)
UNIT = within(0, 1)
PROBABILITY_OPEN = within(0, 1, low_open=True, high_open=True)
SEED = within(0, 2**32 - 1)  # numpy's seed range
