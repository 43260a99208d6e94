"""LoRA adapters (peft) on a trainable model: the policy or a critic (``ppo.lora``).

Each targeted linear layer keeps its weight W frozen and learns a low-rank update
ΔW = (alpha / rank) · B A (B starts at 0, so the adapted model starts as the base model).
The adapters are injected in place (``peft.inject_adapter_in_model``): the model stays the
transformers model (or our ScoreModel), so every forward of rayrlhf runs on it unchanged; only
the targeted layers become peft ``LoraLayer``s whose base weight sits under ``base_layer``.

Three things follow, and live here:

* the frozen base weights *are* the reference policy: ``adapters_disabled`` computes it with
  the same tensors and kernels as the initial policy, so no second copy of the weights exists;
* the rollout engines want plain transformers names and weights: ``merged_weights`` gives
  W + ΔW under the original names (what vLLM's ``reload_weights`` and ``save_pretrained`` take),
  and for a weight sync only the weights that training can change;
* ``save_adapter`` writes peft's own format (``adapter_config.json`` +
  ``adapter_model.safetensors``), which ``peft.PeftModel.from_pretrained`` loads onto the base.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

# Every linear projection of a Llama/Qwen/Mistral decoder layer (SmolLM2, the tiny model).
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = "default"  # peft's name for the one adapter a model carries here
# peft's saved names are those of a PeftModel, which wraps the model as base_model.model.
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRASpec:
    """What adapters a trainable role gets (``ppo.lora``, without its on/off switch)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_LINEAR_LAYERS
    # Each checkpoint also holds the merged policy as a transformers folder (policy_merged/).
    merged_checkpoints: bool = False

    def peft_config(self, base_model_path: str | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none",
                          base_model_name_or_path=base_model_path)


def add_lora(model: torch.nn.Module, spec: LoRASpec) -> dict[str, int]:
    """Inject LoRA adapters into ``model`` in place and freeze everything else (a caller that
    trains more, such as a critic's value head, unfreezes it afterwards). Returns the trainable
    and total parameter counts."""
    from peft import inject_adapter_in_model

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    if not set(spec.target_modules) & set(linear):
        raise ValueError(f"ppo.lora.target_modules={list(spec.target_modules)} names no linear layer of "
                         f"{type(model).__name__}; its linear layers are {linear}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head}
    if head is not None and tied and head_names & set(spec.target_modules):
        # The merged head would no longer be the embedding, which the engines keep as one tensor.
        raise ValueError(f"ppo.lora.target_modules={list(spec.target_modules)} adapts the LM head, but this "
                         "model ties it to the input embedding (tie_word_embeddings); leave it out, or use a "
                         "model with its own head")
    inject_adapter_in_model(spec.peft_config(), model, adapter_name=ADAPTER_NAME)
    return parameter_counts(model)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in model.parameters())}


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> peft LoRA layer, for every adapted layer of ``model``."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def has_lora(model: torch.nn.Module) -> bool:
    return bool(lora_layers(model))


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` computing as its base (each adapted layer returns ``base_layer(x)``): the
    reference policy of a LoRA run, on the very tensors the initial policy had."""
    layers = list(lora_layers(model).values())
    # peft's switch also sets requires_grad on the adapters; keep what the trainer decided
    # (adapters of layers that ppo.trainable_layers froze stay frozen).
    trainable = {id(p): p.requires_grad for layer in layers for p in layer.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
            for p in layer.parameters():
                p.requires_grad_(trainable[id(p)])


def merged_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``model``'s state under the names of the model without adapters, each adapted weight
    W + (alpha / rank) B A, the adapters themselves left out (``merged_weights``, gathered)."""
    return dict(merged_weights(model, dtype))


def merged_weights(model: torch.nn.Module, dtype: torch.dtype | None = None, *,
                   changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of ``model`` under the names of the model without adapters, one at a
    time: each adapted weight W + (alpha / rank) B A, the adapters left out. New tensors
    (``dtype``, default each weight's own): safe to send or save while training goes on.

    ``changed_only`` gives only what training can have changed: the adapted weights and any
    other weight that trains. The rest is the base checkpoint, bit for bit, which an engine
    built from that checkpoint already holds; for SmolLM2 with every projection adapted this
    leaves out the embedding (and its tied head copy), a fifth of the bytes."""
    layers = lora_layers(model)
    adapted = {f"{name}.weight" for name in layers}
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            key = name.replace(".base_layer.", ".")
            if ".lora_" in name or key in adapted or (changed_only and not param.requires_grad):
                continue
            yield key, param.detach().to(dtype or param.dtype, copy=True)
        for name, layer in layers.items():
            yield f"{name}.weight", merged_weight(layer, dtype)


def merged_weight(layer: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W + (alpha / rank) B A of one peft LoRA layer, rounded once to ``dtype`` (default W's).

    One ``addmm``: the matrix kernels (oneDNN, cuBLAS) accumulate in fp32 and add W before
    rounding, so where W, A and B already are in ``dtype`` (a bf16 policy syncing bf16 engines)
    the sum is taken there, one pass over W (SmolLM2, 210 layers, one CPU thread: 0.13 s
    against 0.28 s through fp32 copies; 27 of 106M entries differ by a summation-order ulp).
    Otherwise in fp32 and rounded at the end. peft's ``get_delta_weight`` rounds the delta to
    W's dtype before the add: rounded twice, off by a bf16 ulp on ~23% of entries."""
    weight = layer.get_base_layer().weight
    dtype = dtype or weight.dtype
    if getattr(layer, "fan_in_fan_out", False):  # Conv1D-style layers store W transposed
        return (weight.float() + layer.get_delta_weight(ADAPTER_NAME).float()).to(dtype)
    lora_a, lora_b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
    scaling = layer.scaling[ADAPTER_NAME]
    if weight.dtype == lora_a.dtype == lora_b.dtype == dtype:
        return torch.addmm(weight, lora_b, lora_a, alpha=scaling)
    return torch.addmm(weight.float(), lora_b.float(), lora_a.float(), alpha=scaling).to(dtype)


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under peft's saved names (``base_model.model.<layer>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {PEFT_PREFIX + name: tensor.detach().float().contiguous() for name, tensor in state.items()}


def save_adapter(model: torch.nn.Module, spec: LoRASpec, out_dir: str | Path, base_model_path: str) -> Path:
    """peft's adapter folder: ``PeftModel.from_pretrained(<base at base_model_path>, out_dir)``
    rebuilds the trained model."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec.peft_config(base_model_path).save_pretrained(str(out))
    save_file(adapter_state_dict(model), str(out / "adapter_model.safetensors"))
    return out
