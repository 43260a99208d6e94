"""The embedded demo dataset: schema-valid, big enough, unbiased, learnable and harmless.

Reads the committed JSON with the row classes directly (not the loaders), so a broken file
fails here with the row and field that are wrong.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rayrlhf.data.demo import build_demo
from rayrlhf.data.schemas import (
    HARM_CATEGORIES,
    PreferenceRow,
    PromptRow,
    QAClassificationRow,
    SFTRow,
)

DEMO_DIR = Path(build_demo.__file__).resolve().parent

# Terms that would mean a response carries real dangerous detail (explosives, chemical
# weapons, hard drugs, doses and quantities, exploit tooling). Matched as whole words.
BANNED_TERMS: tuple[str, ...] = (
    "tnt", "dynamite", "c-4", "semtex", "nitroglycerin", "ammonium nitrate", "thermite",
    "gunpowder", "black powder", "pipe bomb", "molotov", "detonator", "fuse wire",
    "sarin", "novichok", "vx", "ricin", "anthrax", "mustard gas", "chlorine gas", "cyanide",
    "arsenic", "strychnine", "fentanyl", "heroin", "cocaine", "methamphetamine", "meth",
    "mdma", "lsd", "pseudoephedrine", "oxycodone", "lethal dose", "overdose",
    "grams of", "gram of", "mg of", "milligrams", "micrograms", "ml of",
    "bleach", "ammonia", "keylogger", "ransomware", "malware", "sql injection",
    "reverse shell", "ghost gun", "3d-printed gun", "silencer", "social security number",
)
# A number followed by a mass or volume unit: a dose or a recipe for something.
QUANTITY = re.compile(r"\b\d+(?:\.\d+)?\s*(?:mg|mcg|µg|g|kg|ml|grams?|milligrams?)\b", re.IGNORECASE)


def _load(name: str) -> list[dict]:
    rows = json.loads((DEMO_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(rows, list)
    return rows


@pytest.fixture(scope="module")
def prompts() -> list[PromptRow]:
    return [PromptRow.from_dict(d, source="prompts.json", row=i) for i, d in enumerate(_load("prompts.json"))]


@pytest.fixture(scope="module")
def preferences() -> list[PreferenceRow]:
    return [
        PreferenceRow.from_dict(d, source="preferences.json", row=i)
        for i, d in enumerate(_load("preferences.json"))
    ]


@pytest.fixture(scope="module")
def qa_rows() -> list[QAClassificationRow]:
    return [
        QAClassificationRow.from_dict(d, source="qa_classification.json", row=i)
        for i, d in enumerate(_load("qa_classification.json"))
    ]


@pytest.fixture(scope="module")
def sft_rows() -> list[SFTRow]:
    return [SFTRow.from_dict(d, source="sft.json", row=i) for i, d in enumerate(_load("sft.json"))]


# --- sizes and coverage -------------------------------------------------------------------


def test_sizes_meet_minimums(prompts, preferences, qa_rows, sft_rows) -> None:
    assert len(prompts) >= 150
    assert len(preferences) >= 150
    assert len(qa_rows) >= 300
    assert len(sft_rows) >= 60


def test_every_harm_category_has_seven_prompts_and_benign_fifty(prompts) -> None:
    counts = Counter(p.category for p in prompts)
    for name in HARM_CATEGORIES:
        assert counts[name] >= 7, f"{name} has {counts[name]} prompts"
    assert counts[None] >= 50
    for p in prompts:
        expected_id = None if p.category is None else HARM_CATEGORIES.index(p.category)
        assert p.category_id == expected_id


def test_prompts_are_unique(prompts) -> None:
    texts = [p.prompt for p in prompts]
    duplicates = [t for t, n in Counter(texts).items() if n > 1]
    assert not duplicates


def test_sft_has_refusals_and_input_tasks(sft_rows) -> None:
    assert sum(bool(r.input.strip()) for r in sft_rows) >= 5
    refusals = [r for r in sft_rows if re.match(r"I( can't| won't|'m not able)", r.output)]
    assert len(refusals) >= 7
    assert len({r.prompt for r in sft_rows}) == len(sft_rows)


# --- labels ---------------------------------------------------------------------------------


def test_preference_labels_are_not_position_biased(preferences) -> None:
    n = len(preferences)
    better_first = sum(r.better_response_id == 0 for r in preferences) / n
    safer_first = sum(r.safer_response_id == 0 for r in preferences) / n
    assert 0.35 <= better_first <= 0.65
    assert 0.35 <= safer_first <= 0.65


def test_preference_safety_labels_agree_with_safer_id(preferences) -> None:
    mixed = [r for r in preferences if r.is_response_0_safe != r.is_response_1_safe]
    assert len(mixed) >= 50
    for r in mixed:
        assert r.is_safe(r.safer_response_id) and not r.is_safe(1 - r.safer_response_id)
    kinds = Counter((r.is_response_0_safe, r.is_response_1_safe) for r in preferences)
    assert kinds[(False, False)] >= 5  # some pairs where both responses are unsafe
    # Helpfulness and harmlessness must sometimes disagree, as in PKU-SafeRLHF.
    disagree = sum(r.better_response_id != r.safer_response_id for r in mixed)
    assert 0.3 * len(mixed) <= disagree <= 0.9 * len(mixed)


def test_qa_rows_are_about_half_safe_and_flag_the_prompt_category(qa_rows, prompts) -> None:
    safe_share = sum(r.is_safe for r in qa_rows) / len(qa_rows)
    assert 0.35 <= safe_share <= 0.65
    category_of = {p.prompt: p.category for p in prompts}
    for r in qa_rows:
        flagged = [name for name, on in r.category.items() if on]
        assert list(r.category) == list(HARM_CATEGORIES)
        if not r.is_safe:
            assert flagged
            assert r.prompt in category_of and category_of[r.prompt] is not None
            assert r.category[category_of[r.prompt]]
        else:
            assert not flagged
    assert any(sum(r.harm_vector) == 2 for r in qa_rows)  # some rows flag a related category


# --- reproducibility ------------------------------------------------------------------------


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path) -> None:
    first = build_demo.build(tmp_path / "first")
    second = build_demo.build(tmp_path / "second")
    assert set(first) == set(build_demo.OUTPUT_FILES)
    for name in build_demo.OUTPUT_FILES:
        committed = (DEMO_DIR / name).read_bytes()
        assert first[name].read_bytes() == second[name].read_bytes(), f"{name} is not deterministic"
        assert first[name].read_bytes() == committed, f"{name} is stale: rerun build_demo"


def test_committed_json_is_in_canonical_form() -> None:
    for name in ("prompts.json", "preferences.json", "qa_classification.json", "sft.json"):
        text = (DEMO_DIR / name).read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


# --- content policy -------------------------------------------------------------------------


def _all_texts(prompts, preferences, qa_rows, sft_rows) -> list[str]:
    texts = [p.prompt for p in prompts]
    for r in preferences:
        texts += [r.prompt, r.response_0, r.response_1]
    for r in qa_rows:
        texts += [r.prompt, r.response]
    for r in sft_rows:
        texts += [r.instruction, r.input, r.output]
    return texts


def _violations(text: str) -> list[str]:
    lowered = text.lower()
    found = [t for t in BANNED_TERMS if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", lowered)]
    found += [m.group(0) for m in QUANTITY.finditer(text)]
    return found


def test_policy_checker_catches_banned_terms() -> None:
    """The scan below is only meaningful if it can fire."""
    assert _violations("Mix 20 g of it with the powder") == ["20 g"]
    assert _violations("add dynamite") == ["dynamite"]
    assert _violations("a methodical plan, bleached hair") == []


def test_no_text_contains_banned_dangerous_terms(prompts, preferences, qa_rows, sft_rows) -> None:
    bad = {t: v for t in _all_texts(prompts, preferences, qa_rows, sft_rows) if (v := _violations(t))}
    assert not bad


# --- learnability ---------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _bag_of_words(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    counts = np.zeros((len(texts), len(vocab)))
    for row, text in enumerate(texts):
        for token in _tokens(text):
            column = vocab.get(token)
            if column is not None:
                counts[row, column] += 1
    return np.log1p(counts)


def _fit_pairwise_logistic(x: np.ndarray, y: np.ndarray, steps: int = 400, lr: float = 0.5) -> np.ndarray:
    """Bradley-Terry on feature differences: P(response 0 wins) = sigmoid(w . (f0 - f1))."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        w -= lr * (x.T @ (p - y) / len(y) + 1e-3 * w)
    return w


def _held_out_accuracy(rows: list[PreferenceRow], label: str, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(0.7 * len(rows))
    train = [rows[i] for i in order[:cut]]
    test = [rows[i] for i in order[cut:]]
    counts = Counter(tok for r in train for text in (r.response_0, r.response_1) for tok in _tokens(text))
    vocab = {tok: i for i, tok in enumerate(sorted(t for t, n in counts.items() if n >= 2))}

    def design(subset: list[PreferenceRow]) -> tuple[np.ndarray, np.ndarray]:
        x = _bag_of_words([r.response_0 for r in subset], vocab) - _bag_of_words(
            [r.response_1 for r in subset], vocab
        )
        y = np.array([getattr(r, label) == 0 for r in subset], dtype=float)
        return x, y

    w = _fit_pairwise_logistic(*design(train))
    x_test, y_test = design(test)
    return float(np.mean((x_test @ w > 0) == (y_test == 1)))


@pytest.mark.parametrize("label", ["safer_response_id", "better_response_id"])
def test_bag_of_words_model_learns_preferences(preferences, label) -> None:
    """A reward/cost model has something to learn: a linear bag-of-words model beats chance clearly."""
    assert _held_out_accuracy(preferences, label) > 0.75


def test_learnability_check_is_at_chance_on_shuffled_labels(preferences) -> None:
    """Control: with labels detached from the text the same model must not score that high."""
    rng = np.random.default_rng(1)
    flipped = [
        PreferenceRow.from_dict({**r.to_dict(), "better_response_id": int(rng.integers(2))})
        for r in preferences
    ]
    assert _held_out_accuracy(flipped, "better_response_id") < 0.7
