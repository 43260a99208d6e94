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


def make_scorer(source: str, *, dtype: str = "auto", batch_size: int = 16) -> Scorer:
    """A function (prompts, responses, response_ids, finished=None) -> [B] float32 scores;
    ``finished`` False marks a response the length limit cut off (scored as unfinished)."""
    if source.startswith(RULE_PREFIX):
        rule = load_rule(source)
        # Rules judge token ids and text as they are; whether an answer finished is theirs to read.
        return lambda prompts, responses, ids, finished=None: torch.as_tensor(rule(prompts, responses, ids),
                                                                              dtype=torch.float32)
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
        return score_conversations(model, tokenizer, prompts, responses, template=template,
                                   max_length=max_length, batch_size=batch_size, finished=finished)[:, 0]

    return score
