"""Generation with Hugging Face ``generate``: the reference engine, and the fallback when
vLLM is not installed."""

from __future__ import annotations

import torch


@torch.no_grad()
def hf_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
                batch_size: int = 8) -> list[str]:
    """Completions for already formatted prompts (special tokens stripped).

    Prompts are left-padded so that every row's new tokens start at the same column.
    """
    if tokenizer.padding_side != "left":
        raise ValueError("hf_generate needs a left-padding tokenizer (load_tokenizer does that)")
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [c.strip() for c in completions]
