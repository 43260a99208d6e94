"""What reaches ``vllm.LLM`` and each engine's constructor from ``rollout.*``: the GPU knobs
(tensor parallelism, memory share, CUDA graphs, sleep mode) are built by pure functions, tested
here without vLLM. STAND-IN for a GPU: none of these settings has run on a GPU here (no GPU on
the development machines); on CPU the engine keeps enforce_eager=True as before."""

from __future__ import annotations

import pytest

from rayrlhf.config import compose_config, to_object
from rayrlhf.rollout.vllm_engine import KV_CACHE_MARGIN, cpu_kv_cache_bytes, kv_cache_bytes, llm_kwargs
from rayrlhf.trainers.ppo_lag_roles import engine_kwargs, engines_sleep, sync_path

BASE = {"dtype": "bfloat16", "max_model_len": 1024, "seed": 3}


def test_cpu_engine_is_eager_with_nothing_gpu_only():
    assert llm_kwargs("/m", **BASE, on_gpu=False) == {
        "model": "/m", "dtype": "bfloat16", "max_model_len": 1024, "seed": 3, "enforce_eager": True,
        "logprobs_mode": "raw_logprobs"}


def test_gpu_engine_captures_cuda_graphs_unless_told_and_shards_over_local_processes():
    assert llm_kwargs("/m", **BASE, on_gpu=True)["enforce_eager"] is False
    assert llm_kwargs("/m", **BASE, on_gpu=True, enforce_eager=True)["enforce_eager"] is True
    kwargs = llm_kwargs("/m", **BASE, on_gpu=True, tensor_parallel_size=2, gpu_memory_utilization=0.5,
                        sleep_mode=True)
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["distributed_executor_backend"] == "mp"
    assert kwargs["gpu_memory_utilization"] == 0.5 and kwargs["enable_sleep_mode"] is True
    assert "tensor_parallel_size" not in llm_kwargs("/m", **BASE, on_gpu=True)  # vLLM's default of 1


def test_gpu_only_settings_on_cpu_are_refused():
    with pytest.raises(ValueError, match="need GPUs"):
        llm_kwargs("/m", **BASE, on_gpu=False, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="need GPUs"):
        llm_kwargs("/m", **BASE, on_gpu=False, sleep_mode=True)


def config(*overrides):
    return to_object(compose_config("ppo_lag", ["+experiment=synthetic", "rollout.engine=vllm", *overrides],
                                    output_dir="/tmp/o"))


def test_engine_kwargs_on_cpu_are_what_runs_used_before():
    kwargs = engine_kwargs(config())
    assert kwargs["enforce_eager"] is True and kwargs["tensor_parallel_size"] == 1 and kwargs["sleep_mode"] is False
    assert "gpu_memory_utilization" not in kwargs
    # KV cache: room for a step's rows at their longest, or what rollout.kv_cache_gib says
    rollout = config().rollout
    assert kwargs["kv_cache_tokens"] == rollout.prompts_per_step * (rollout.max_prompt_tokens + rollout.max_new_tokens)
    assert "kv_cache_gib" not in kwargs
    assert engine_kwargs(config("rollout.kv_cache_gib=0.25"))["kv_cache_gib"] == 0.25
    two = engine_kwargs(config("rollout.num_engines=2", "rollout.prompts_per_step=5"))
    assert two["kv_cache_tokens"] == 3 * (rollout.max_prompt_tokens + rollout.max_new_tokens)
    assert engine_kwargs(config("rollout.engine=hf")) == {}


def test_engine_kwargs_on_gpus_by_layout():
    separate = engine_kwargs(config("resources.use_gpu=true", "rollout.tensor_parallel_size=2"))
    assert separate["enforce_eager"] is False and separate["tensor_parallel_size"] == 2
    assert separate["sleep_mode"] is False and "gpu_memory_utilization" not in separate  # vLLM's 0.9
    colocated = engine_kwargs(config("resources.use_gpu=true", "resources.layout=colocate"))
    # Sharing the trainers' GPU: half of it, and asleep outside generation.
    assert colocated["gpu_memory_utilization"] == 0.5 and colocated["sleep_mode"] is True
    told = engine_kwargs(config("resources.use_gpu=true", "resources.layout=colocate",
                                "rollout.gpu_memory_utilization=0.3", "rollout.sleep_mode=false",
                                "rollout.enforce_eager=true"))
    assert (told["gpu_memory_utilization"], told["sleep_mode"], told["enforce_eager"]) == (0.3, False, True)
    assert not engines_sleep(config("resources.layout=colocate"))  # on CPU: nothing to free


def test_auto_sync_path_broadcasts_on_cpus_and_uses_the_object_store_on_gpus():
    assert sync_path(config()) == "collective"
    assert sync_path(config("resources.use_gpu=true")) == "object_store"
    assert sync_path(config("rollout.sync_path=object_store")) == "object_store"
    assert sync_path(config("resources.use_gpu=true", "rollout.sync_path=collective")) == "collective"


def test_kv_cache_bytes_from_the_model_shapes(tiny_model_dir):
    """Tiny Llama: 4 layers x 2 key/value heads x 32 dims, keys and values, 4 bytes in fp32
    = 2048 bytes a token by hand; 100 tokens with vLLM's block margin."""
    assert kv_cache_bytes(tiny_model_dir, "float32", 100) == int(2 * 4 * 2 * 32 * 4 * 100 * KV_CACHE_MARGIN)
    assert kv_cache_bytes(tiny_model_dir, "bfloat16", 100) == int(2 * 4 * 2 * 32 * 2 * 100 * KV_CACHE_MARGIN)
    # what an engine asks vLLM for: the set size, else the tokens (at least max_model_len), else 1 GiB
    assert cpu_kv_cache_bytes(tiny_model_dir, "float32", 256, 0.5, 4000) == 2**29
    assert cpu_kv_cache_bytes(tiny_model_dir, "float32", 256, None, 4000) == kv_cache_bytes(tiny_model_dir, "float32", 4000)
    assert cpu_kv_cache_bytes(tiny_model_dir, "float32", 256, None, 100) == kv_cache_bytes(tiny_model_dir, "float32", 256)
    assert cpu_kv_cache_bytes(tiny_model_dir, "float32", 256, None, None) == 2**30
