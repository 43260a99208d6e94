"""The fixed held-out split: which prompts no training stage may see.

A prompt is held out when the SHA-256 of ``HELDOUT_SALT + normalised text`` falls in the
lowest ``fraction`` of the hash range. The rule depends on the text alone, so it is the
same on every machine and in every run, needs no file, and places a prompt in the same
split in every dataset it occurs in (the demo prompts, preference pairs, QA rows and SFT
rows share their prompts). Training stages drop every row whose prompt is held out;
evaluation uses only held-out prompts and external sets (BeaverTails-Evaluation) that share
no prompt with training, which :func:`assert_disjoint` checks at run time.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

Row = TypeVar("Row")
HELDOUT_SALT = "rayrlhf-heldout-v1:"


def normalize_prompt(prompt: str) -> str:
    """Case and whitespace do not make a prompt new."""
    return " ".join(prompt.lower().split())


def is_heldout(prompt: str, fraction: float) -> bool:
    """Whether ``prompt`` belongs to the held-out ``fraction`` (see the module docstring)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must lie in [0, 1), got {fraction}")
    digest = hashlib.sha256((HELDOUT_SALT + normalize_prompt(prompt)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def row_prompt(row: Any) -> str:
    """The prompt of any row type (prompt, preference, QA and SFT rows all have one)."""
    return row.prompt


def split_rows(rows: Sequence[Row], fraction: float) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows) by the held-out rule on each row's prompt."""
    train, heldout = [], []
    for row in rows:
        (heldout if is_heldout(row_prompt(row), fraction) else train).append(row)
    return train, heldout


def drop_prompts(rows: Sequence[Row], banned: Iterable[str]) -> list[Row]:
    """``rows`` without those whose prompt (normalised) is in ``banned``."""
    banned_set = {normalize_prompt(p) for p in banned}
    return [row for row in rows if normalize_prompt(row_prompt(row)) not in banned_set]


def assert_disjoint(train_prompts: Iterable[str], eval_prompts: Iterable[str], what: str) -> None:
    """Fail loudly if any evaluation prompt was also a training prompt."""
    overlap = {normalize_prompt(p) for p in train_prompts} & {normalize_prompt(p) for p in eval_prompts}
    if overlap:
        sample = sorted(overlap)[:3]
        raise ValueError(f"{what}: {len(overlap)} evaluation prompt(s) also occur in training, e.g. {sample}")


def benign_share_indices(rows: Sequence[Any], share: float) -> list[int]:
    """Indices into ``rows`` with each benign row's (one without a category) repeated as often
    as it takes for benign rows to make up at least ``share`` of the result (0: each once).

    Red-team prompts outnumber benign ones about 9 to 1 in the pipeline's training prompts, so
    PPO would rarely meet a harmless request and nothing would teach it not to refuse one.
    Every benign row is repeated the same number of times, so none is favoured.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"benign share must lie in [0, 1), got {share}")
    is_harmful = [bool(getattr(row, "category", None)) for row in rows]
    benign = is_harmful.count(False)
    harmful = len(rows) - benign
    copies = 1
    if share > 0.0 and benign and harmful:
        # Smallest k with k*B / (k*B + H) >= share, i.e. k >= share*H / ((1-share)*B).
        copies = max(1, math.ceil(share * harmful / ((1.0 - share) * benign) - 1e-9))
    return [i for i, flag in enumerate(is_harmful) for _ in range(1 if flag else copies)]


def prompt_weights(rows: Sequence[Row]) -> dict[str, int]:
    """How often each (normalised) prompt occurs in ``rows``."""
    return dict(Counter(normalize_prompt(row_prompt(row)) for row in rows))


def keep_share(rows: Sequence[Row], marked: Sequence[bool], share: float) -> list[Row]:
    """``rows`` with every unmarked row and ``share`` of the marked ones, spread evenly over
    them (the j-th marked row stays when ``floor((j + 1) * share)`` steps past ``floor(j * share)``)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    kept, j = [], 0
    for row, is_marked in zip(rows, marked, strict=True):
        if is_marked:
            keep = math.floor((j + 1) * share + 1e-9) > math.floor(j * share + 1e-9)
            j += 1
            if not keep:
                continue
        kept.append(row)
    return kept
