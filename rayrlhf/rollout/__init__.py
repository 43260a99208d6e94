"""Rollout engines: text generation behind one interface (HF ``generate`` now, vLLM next)."""

from rayrlhf.rollout.hf_engine import hf_generate

__all__ = ["hf_generate"]
