"""Rollout engines behind one interface (``RolloutEngine``): vLLM for speed, HF ``generate``
as the exact reference and fallback; ``make_engine`` picks one by name."""

from __future__ import annotations

from rayrlhf.rollout.base import LOGPROBS_SOURCES, Completion, RolloutEngine, SamplingSpec, cut_at_stop, shard_spec
from rayrlhf.rollout.hf_engine import HFEngine, hf_generate

ENGINE_KINDS = ("vllm", "hf")


def make_engine(kind: str, model_path, **kwargs) -> RolloutEngine:
    """Build the engine named ``kind`` ("vllm" | "hf"); ``kwargs`` go to its constructor.

    vLLM is imported only when asked for: it must see its environment variables first.
    """
    if kind == "hf":
        return HFEngine(model_path, **kwargs)
    if kind == "vllm":
        from rayrlhf.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **kwargs)
    raise ValueError(f"unknown rollout engine {kind!r}; choose one of {list(ENGINE_KINDS)}")


__all__ = ["Completion", "ENGINE_KINDS", "HFEngine", "LOGPROBS_SOURCES", "RolloutEngine", "SamplingSpec", "cut_at_stop",
           "hf_generate", "make_engine", "shard_spec"]
