"""Prompt templates: the Safe RLHF string exactly, and the tokenizer's ChatML via 'chat'."""

from __future__ import annotations

import pytest

from rayrlhf.data import SAFE_RLHF_TEMPLATE, TEMPLATES, format_conversation, format_prompt


def test_safe_rlhf_template_is_the_papers_string():
    assert SAFE_RLHF_TEMPLATE == "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
    assert format_prompt("Hi there", "safe_rlhf") == "BEGINNING OF CONVERSATION: USER: Hi there ASSISTANT:"


def test_safe_rlhf_keeps_braces_and_newlines_in_the_prompt_verbatim():
    prompt = "Fill {prompt} and {0}\nplease"
    assert format_prompt(prompt, "safe_rlhf") == (
        "BEGINNING OF CONVERSATION: USER: Fill {prompt} and {0}\nplease ASSISTANT:"
    )


def test_safe_rlhf_conversation_is_prompt_space_response():
    text = format_conversation("Q?", "A.", "safe_rlhf")
    assert text == "BEGINNING OF CONVERSATION: USER: Q? ASSISTANT: A."
    assert text.startswith(format_prompt("Q?", "safe_rlhf"))


def test_unknown_template_and_bad_arguments():
    with pytest.raises(ValueError, match="'alpaca'.*chat, safe_rlhf"):
        format_prompt("x", "alpaca")
    with pytest.raises(ValueError, match="chat, safe_rlhf"):
        format_conversation("x", "y", "ChatML")
    assert TEMPLATES == ("chat", "safe_rlhf", "safe_rlhf_upstream")
    with pytest.raises(TypeError, match="prompt must be a string"):
        format_prompt(None, "safe_rlhf")
    with pytest.raises(TypeError, match="response must be a string"):
        format_conversation("x", 3, "safe_rlhf")


def test_chat_needs_a_tokenizer_with_a_chat_template():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        format_prompt("x", "chat")

    class BaseModelTokenizer:
        chat_template = None
        name_or_path = "some/base-model"

    with pytest.raises(ValueError, match="'some/base-model' has no chat_template.*safe_rlhf"):
        format_conversation("x", "y", "chat", tokenizer=BaseModelTokenizer())


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_chat_prompt_uses_the_tokenizers_chatml(tiny_tokenizer):
    assert format_prompt("How are you?", "chat", tiny_tokenizer) == (
        "<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_conversation_appends_the_answer_to_the_prompt(tiny_tokenizer):
    prompt = format_prompt("How are you?", "chat", tiny_tokenizer)
    text = format_conversation("How are you?", "Fine.", "chat", tiny_tokenizer)
    assert text == "<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\nFine.<|im_end|>\n"
    # a score model's response tokens start right where the policy's prompt ended
    assert text.startswith(prompt)


def test_encoded_prompts_are_the_template_text_and_long_ones_keep_their_end(tiny_tokenizer):
    from rayrlhf.data import encode_prompts

    short, long = "How are you?", "Tell me about " + "the weather " * 40 + "today."
    full_short, full_long = encode_prompts(tiny_tokenizer, [short, long], "chat", max_tokens=10_000)
    # The chat template already holds the special tokens: nothing is added in front of them.
    assert tiny_tokenizer.decode(full_short) == format_prompt(short, "chat", tiny_tokenizer)
    assert tiny_tokenizer.decode(full_long) == format_prompt(long, "chat", tiny_tokenizer)
    (cut,) = encode_prompts(tiny_tokenizer, [long], "chat", max_tokens=12)
    assert len(full_long) > 12 and cut == full_long[-12:]  # the end, where the answer starts
    assert tiny_tokenizer.decode(cut).endswith("today.<|im_end|>\n<|im_start|>assistant\n")
    assert encode_prompts(tiny_tokenizer, [short], "chat", max_tokens=len(full_short)) == [full_short]
