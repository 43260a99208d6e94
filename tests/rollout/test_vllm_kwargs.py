"""What reaches ``vllm.LLM`` and each engine's constructor from ``rollout.*``: the GPU knobs
(tensor parallelism, memory share, CUDA graphs, sleep mode) are built by pure functions, tested
here without vLLM. STAND-IN for a GPU: none of these settings has run on a GPU here (no GPU on
the development machines); on CPU the engine keeps enforce_eager=True as before."""

from __future__ import annotations

import pytest

from rayrlhf.config import compose_config, to_object
from rayrlhf.rollout.vllm_engine import llm_kwargs
from rayrlhf.trainers.ppo_lag_roles import engine_kwargs, engines_sleep

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
