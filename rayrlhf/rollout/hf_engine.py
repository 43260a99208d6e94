"""Generation with Hugging Face ``generate``: ``hf_generate`` for text in, text out (the
sample stage), and ``HFEngine``, the reference rollout engine and the fallback when vLLM
cannot run."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rayrlhf.models import load_causal_lm, load_tokenizer
from rayrlhf.rollout.base import Completion, SamplingSpec, cut_at_stop, shard_spec


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


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the generation config's EOS ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [*ids, tokenizer.eos_token_id]
    return sorted({int(i) for i in ids if i is not None})


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left so every row ends at the same column."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` uses them (padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sampled_token_logprobs(model, sequences: torch.Tensor, mask: torch.Tensor,
                           prompt_width: int) -> torch.Tensor:
    """log π(token | prefix) at temperature 1 for every column after ``prompt_width``.

    One forward pass over prompt + response; ``mask`` hides left padding and everything
    after each row's end, so rows do not see padding. Returns [batch, sequence - prompt_width].
    """
    logits = model(input_ids=sequences, attention_mask=mask,
                   position_ids=positions_from_mask(mask)).logits
    logprobs = torch.log_softmax(logits[:, prompt_width - 1:-1].float(), dim=-1)
    return logprobs.gather(-1, sequences[:, prompt_width:, None]).squeeze(-1)


class HFEngine:
    """The reference engine: transformers ``generate``, then one scoring forward pass.

    Slow but exact: its log-probs are the training model's own log-softmax, so it is the
    yardstick for vLLM and the fallback where vLLM cannot run. Sampling uses the global
    torch RNG under ``fork_rng``, so a seed reproduces a whole batch (not one prompt alone).
    """

    kind = "hf"

    def __init__(self, model_path, *, dtype: str = "float32", batch_size: int = 16,
                 stop_token_ids: list[int] | None = None, trust_remote_code: bool = False) -> None:
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_path, dtype=dtype, trust_remote_code=trust_remote_code).eval()
        self.dtype = self.model.dtype
        self.batch_size = batch_size
        self.stop_ids = sorted({*eos_token_ids(self.model, self.tokenizer), *(stop_token_ids or [])})
        self.pad_id = self.tokenizer.pad_token_id

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Completion]:
        completions: list[Completion] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            chunk_spec = shard_spec(spec, start)
            completions += self._generate_batch(prompt_ids[start:start + self.batch_size], chunk_spec)
        return completions

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], spec: SamplingSpec) -> list[Completion]:
        from transformers import GenerationConfig

        ids, mask = left_pad(prompts, self.pad_id)
        greedy = spec.temperature == 0
        # Every shaping knob is set explicitly: values left None would be filled from the
        # checkpoint's generation_config.json (SmolLM2: temperature 0.2, top_p 0.9) and then
        # from transformers' defaults (top_k 50), which vLLM does not apply.
        config = GenerationConfig(
            max_new_tokens=spec.max_new_tokens, min_new_tokens=0, do_sample=not greedy,
            temperature=1.0 if greedy else spec.temperature, top_p=1.0 if greedy else spec.top_p,
            top_k=None if greedy else 0, typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            num_beams=1, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
        )
        with torch.random.fork_rng(devices=[]):
            if spec.seed is not None:
                torch.manual_seed(spec.seed)
            sequences = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        width = ids.shape[1]
        cut = [cut_at_stop(row.tolist(), self.stop_ids) for row in sequences[:, width:]]
        response_mask = torch.zeros_like(sequences[:, width:])
        for i, (response, _) in enumerate(cut):
            response_mask[i, :len(response)] = 1
        logprobs = sampled_token_logprobs(self.model, sequences, torch.cat([mask, response_mask], 1), width)
        return [
            Completion(prompt_ids=list(prompt), response_ids=response,
                       response_logprobs=logprobs[i, :len(response)].tolist(),
                       text=self.tokenizer.decode(response, skip_special_tokens=True), finished=finished)
            for i, (prompt, (response, finished)) in enumerate(zip(prompts, cut))
        ]

    @torch.no_grad()
    def update_weights(self, named_tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                       partial: bool = False) -> None:
        """Copy each tensor into the model as it arrives (an iterable streams: no second copy
        of the model is held); every weight must arrive, except that a tied
        ``lm_head.weight`` may be left out, or any weight when ``partial``. Returns None: there
        is no load step apart from the arrival."""
        named = named_tensors.items() if isinstance(named_tensors, dict) else named_tensors
        targets = self.model.state_dict(keep_vars=True)
        loaded, unexpected = set(), []
        for name, tensor in named:
            target = targets.get(name)
            if target is None or target.shape != tensor.shape:
                unexpected.append(name if target is None else f"{name} {tuple(tensor.shape)} != {tuple(target.shape)}")
                continue
            target.data.copy_(tensor)
            loaded.add(name)
        tied = {"lm_head.weight"} if self.model.config.get_text_config().tie_word_embeddings else set()
        missing = set() if partial else set(targets) - loaded - tied
        if unexpected or missing:
            raise KeyError(f"weights do not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")

    def close(self) -> None:
        self.model = None
