"""Prompt templates: how a user prompt (and a response) becomes the text a model reads.

Every stage must render text the same way: the reward and cost models are trained on
``format_conversation`` text, and PPO scores rollouts generated from ``format_prompt``
text, so a template mismatch silently shifts every score.

- ``safe_rlhf``: the plain-text template of Safe RLHF (Dai et al. 2023), for base models
  without a chat template;
- ``chat``: the tokenizer's own chat template (e.g. ChatML for SmolLM2-Instruct).
"""

from __future__ import annotations

from typing import Any

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
TEMPLATES: tuple[str, ...] = ("chat", "safe_rlhf")


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")


def _chat_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer, if it can render chats; fail early with the fix otherwise."""
    if tokenizer is None:
        raise ValueError("template 'chat' needs a tokenizer (its chat_template renders the text)")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat_template; use template 'safe_rlhf' for base models"
        )
    return tokenizer


def format_prompt(prompt: str, template: str, tokenizer: Any = None) -> str:
    """The text a policy continues to answer ``prompt`` (ends where the answer starts)."""
    _check_template(template)
    _check_text("prompt", prompt)
    if template == "safe_rlhf":
        return SAFE_RLHF_TEMPLATE.format(prompt=prompt)
    return _chat_tokenizer(tokenizer).apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def encode_prompts(tokenizer: Any, prompts: list[str], template: str, max_tokens: int) -> list[list[int]]:
    """The token ids a policy continues, one list per prompt: ``format_prompt`` text without
    added special tokens (the template already holds them); a prompt longer than
    ``max_tokens`` keeps its end, where the answer starts."""
    return [tokenizer(format_prompt(prompt, template, tokenizer), add_special_tokens=False)["input_ids"][-max_tokens:]
            for prompt in prompts]


def format_conversation(prompt: str, response: str, template: str, tokenizer: Any = None) -> str:
    """The whole exchange a reward or cost model scores: prompt, then ``response``."""
    _check_template(template)
    _check_text("prompt", prompt)
    _check_text("response", response)
    if template == "safe_rlhf":
        return SAFE_RLHF_TEMPLATE.format(prompt=prompt) + " " + response.lstrip()
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
    ]
    return _chat_tokenizer(tokenizer).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False
    )
