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


def fast_bf16_available() -> bool:
    """Whether bf16 matrix products beat fp32 here.

    On CPUs with AMX or AVX512-BF16 bf16 runs several times faster than fp32; on CPUs
    without them (oneDNN emulates bf16) it runs about 5x *slower*, so "auto" picks fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_bf16(setting: bool | None) -> bool:
    """A ``bf16`` training switch: an explicit choice, or (None) bf16 exactly where it is fast."""
    return fast_bf16_available() if setting is None else bool(setting)


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
