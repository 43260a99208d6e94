"""Turn a source string into a scoring function (see the package docstring)."""

from __future__ import annotations

import importlib
from typing import Callable

import torch

RULE_PREFIX = "rule:"
Scorer = Callable[..., torch.Tensor]  # (prompts, responses, response_ids, finished=None) -> [B]


def load_rule(source: str) -> Callable:
    """``rule:<module>:<function>`` -> the function."""
    try:
        module_name, function_name = source[len(RULE_PREFIX):].split(":")
    except ValueError:
        raise ValueError(f"rule source {source!r} must look like rule:<module>:<function>") from None
    module = importlib.import_module(module_name)
    if not hasattr(module, function_name):
        raise ValueError(f"rule source {source!r}: {module_name} has no function {function_name!r}")
    return getattr(module, function_name)


def source_categories(source: str) -> tuple[str, ...]:
    """The categories a per-category cost source scores, in the order of its output columns:
    a rule's ``categories`` attribute, or a score model's labels (a moderation model's are the
    14 BeaverTails categories, ``rayrlhf.data.HARM_CATEGORIES``; their scores are log-odds)."""
    if source.startswith(RULE_PREFIX):
        categories = getattr(load_rule(source), "categories", None)
        if not categories:
            raise ValueError(f"cost source {source!r} names no categories (give the rule function a `categories` "
                             "attribute), so it cannot feed lagrange.per_category")
        return tuple(categories)
    from rayrlhf.models.score_model import read_metadata
    from rayrlhf.models.zoo import resolve_model_path

    labels = (read_metadata(resolve_model_path(source)) or {}).get("labels")
    if not labels:
        raise ValueError(f"cost source {source!r} is not a rayrlhf score model with labels (its "
                         "score_model.json), so it cannot feed lagrange.per_category")
    return tuple(labels)


def make_scorer(source: str, *, dtype: str = "auto", batch_size: int = 16, per_category: bool = False) -> Scorer:
    """A function (prompts, responses, response_ids, finished=None) -> [B] float32 scores;
    ``finished`` False marks a response the length limit cut off (scored as unfinished).
    ``per_category``: [B, C] scores, one column per category of ``source_categories(source)``
    (a moderation model's per-category log-odds ln(p_k / (1 − p_k)), > 0 where it flags k)."""
    if source.startswith(RULE_PREFIX):
        rule = load_rule(source)
        width = len(source_categories(source)) if per_category else None

        # Rules judge token ids and text as they are; whether an answer finished is theirs to read.
        def score_by_rule(prompts, responses, ids, finished=None):
            scores = torch.as_tensor(rule(prompts, responses, ids), dtype=torch.float32)
            expected = (len(ids),) if width is None else (len(ids), width)
            if scores.shape != expected:
                raise ValueError(f"rule {source!r} returned scores of shape {tuple(scores.shape)}, expected {expected}")
            return scores

        return score_by_rule
    from rayrlhf.models import load_tokenizer
    from rayrlhf.models.score_model import ScoreModel, read_metadata
    from rayrlhf.models.scoring import score_conversations
    from rayrlhf.models.zoo import resolve_model_path

    path = resolve_model_path(source)
    meta = read_metadata(path) or {}
    model = ScoreModel.from_pretrained(path, dtype=dtype).eval()
    tokenizer = load_tokenizer(path, padding_side="right")
    template = meta.get("template", "chat")
    max_length = meta.get("max_length", 1024)

    def score(prompts, responses, ids, finished=None):
        scores = score_conversations(model, tokenizer, prompts, responses, template=template,
                                     max_length=max_length, batch_size=batch_size, finished=finished)
        return scores if per_category else scores[:, 0]

    return score
