"""Train only the top of a transformer: the cheapest backward that still adapts the model.

Freezing the embeddings and every decoder layer below the top ``trainable_layers`` means
autograd never reaches them: the backward pass (two thirds of a training step's arithmetic)
shrinks to the trained layers, and their optimiser state disappears. On a CPU, where a step is
compute-bound, training the top 6 of SmolLM2's 30 layers makes a step about twice as fast; the
features a score head or a refusal needs live mostly in the upper layers.
"""

from __future__ import annotations

import torch

# Attribute names of the decoder-layer list in Hugging Face models (Llama/Qwen/Mistral, GPT-2, OPT).
_LAYER_LISTS = ("layers", "h", "decoder.layers")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks of a causal LM, a sequence classifier or our ScoreModel."""
    backbone = getattr(model, "inner", model)
    backbone = getattr(backbone, "base_model", backbone)
    for name in _LAYER_LISTS:
        found = backbone
        for part in name.split("."):
            found = getattr(found, part, None)
        if isinstance(found, torch.nn.ModuleList):
            return found
    raise ValueError(f"cannot find the decoder layers of {type(backbone).__name__} "
                     f"(looked for {', '.join(_LAYER_LISTS)}); train it whole (trainable_layers=null)")


def freeze_lower_layers(model: torch.nn.Module, trainable_layers: int | None) -> dict[str, int]:
    """Freeze everything but the top ``trainable_layers`` decoder layers and what sits above them
    (final norm, LM or score head). None or a count >= the depth trains everything. Returns the
    trainable and total parameter counts."""
    layers = decoder_layers(model)
    if trainable_layers is not None and trainable_layers < len(layers):
        if trainable_layers < 0:
            raise ValueError(f"trainable_layers must be >= 0, got {trainable_layers}")
        top = {id(p) for layer in layers[len(layers) - trainable_layers:] for p in layer.parameters()}
        below = {id(p) for layer in layers[:len(layers) - trainable_layers] for p in layer.parameters()}
        embeddings = getattr(getattr(model, "inner", model), "get_input_embeddings", lambda: None)()
        frozen = below | ({id(p) for p in embeddings.parameters()} if embeddings is not None else set())
        for param in model.parameters():
            if id(param) in frozen and id(param) not in top:
                param.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable, "parameters": total}
