"""The published Safe-RLHF / BeaverTails judges, read in their own checkpoint formats.

Two formats, recognised from a folder's ``config.json`` (as a user gets it from the hub):

- **safe-rlhf score model** (the ``beaver-7b-*-reward`` / ``-cost`` checkpoints): a causal
  LM backbone under ``model.*`` and a linear ``score_head`` (``weight`` [score_dim, hidden],
  plus ``bias`` when the config's ``bias`` is true), architectures ``*ForScore``. The config
  says ``score_type`` (reward or cost) and ``score_dim``; with ``do_normalize`` the head's
  output is normalised by the saved running statistics (``normalizer.mean`` / ``var`` buffers,
  or the config's ``mean`` / ``var``): reward ``(s - mean) / (std + 1e-8)``, cost
  ``s / (std + 1e-8)``. The score is read at the last token whose attention mask is 1.
- **BeaverTails QA-moderation** (``beaver-dam-7b``): a plain ``*ForSequenceClassification``
  with ``problem_type`` ``multi_label_classification`` and 14 outputs whose ``id2label`` are
  the BeaverTails harm categories; probabilities are sigmoids, an answer is flagged when the
  largest exceeds a threshold (0.4 in BeaverTails' own evaluation code).

Both were trained on Safe RLHF's plain-text conversation with the answer right after
``ASSISTANT:`` (no space) and EOS appended: template ``safe_rlhf_upstream``.

Only the head is read here; the backbone is any transformers architecture of the config's
``model_type``. Weights load from safetensors or, for checkpoints published as ``.bin``,
with ``torch.load(weights_only=True)`` (tensors only, no pickled code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayrlhf.data import HARM_CATEGORIES

SAFE_RLHF_SCORE = "safe-rlhf-score"
BEAVERTAILS_MODERATION = "beavertails-qa-moderation"
UPSTREAM_TEMPLATE = "safe_rlhf_upstream"
BEAVERTAILS_FLAG_THRESHOLD = 0.4
# safe-rlhf: the normaliser's function follows the score type.
NORMALIZE_FUNCTION = {"reward": "affine", "cost": "scale", "critic": "identity"}
NORMALIZER_EPSILON = 1e-8


def _config(path: Path) -> dict[str, Any] | None:
    file = path / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None


def is_safe_rlhf_score(config: dict[str, Any]) -> bool:
    return "score_type" in config or any(str(a).endswith("ForScore") for a in config.get("architectures") or [])


def published_metadata(path: str | Path) -> dict[str, Any] | None:
    """The judge metadata a recognised published checkpoint implies; None for other folders."""
    folder = Path(path)
    config = _config(folder)
    if config is None:
        return None
    if is_safe_rlhf_score(config):
        kind = config.get("score_type", "reward")
        if kind not in NORMALIZE_FUNCTION:
            raise ValueError(f"{folder}/config.json: field 'score_type': expected reward, cost or critic, got {kind!r}")
        score_dim = config.get("score_dim", 1)
        if kind in ("reward", "cost") and score_dim != 1:
            raise ValueError(f"{folder}/config.json: field 'score_dim': a {kind} judge has one score, got {score_dim}")
        return {"kind": kind, "labels": [kind] * score_dim if score_dim == 1 else [f"{kind}_{i}" for i in range(score_dim)],
                "template": UPSTREAM_TEMPLATE, "format": SAFE_RLHF_SCORE}
    labels = config.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i)) for i in range(len(labels))]
    if config.get("problem_type") == "multi_label_classification" and set(names) == set(HARM_CATEGORIES):
        return {"kind": "moderation", "labels": names, "template": UPSTREAM_TEMPLATE,
                "threshold": BEAVERTAILS_FLAG_THRESHOLD, "format": BEAVERTAILS_MODERATION}
    return None


class SafeRLHFScoreHead(nn.Linear):
    """safe-rlhf's ``score_head`` (with or without bias) and its optional output normaliser."""

    def __init__(self, hidden_size: int, score_dim: int, bias: bool, normalize: str | None = None):
        super().__init__(hidden_size, score_dim, bias=bias)
        self.normalize = normalize  # None: scores as the head computes them
        self.register_buffer("mean", torch.zeros(score_dim))
        self.register_buffer("var", torch.ones(score_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = super().forward(hidden)
        if self.normalize == "affine":
            return (scores - self.mean) / (self.var.sqrt() + NORMALIZER_EPSILON)
        if self.normalize == "scale":
            return scores / (self.var.sqrt() + NORMALIZER_EPSILON)
        return scores


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: one file or shards, safetensors preferred."""
    for pattern, reader in (("*.safetensors", _read_safetensors), ("pytorch_model*.bin", _read_bin)):
        files = sorted(folder.glob(pattern))
        if files:
            tensors: dict[str, torch.Tensor] = {}
            for file in files:
                tensors.update(reader(file))
            return tensors
    raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(file))


def _read_bin(file: Path) -> dict[str, torch.Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True)


def load_safe_rlhf_score_model(folder: str | Path, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """A ``*ForSequenceClassification`` whose ``score`` is the checkpoint's ``score_head``
    (bias and normaliser included), so ``ScoreModel`` reads it like its own models."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    raw = _config(folder) or {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    score_dim, bias = int(raw.get("score_dim", 1)), bool(raw.get("bias", False))
    config.num_labels = score_dim
    config.architectures = None  # *ForScore is not a transformers class
    inner = AutoModelForSequenceClassification.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    normalize = NORMALIZE_FUNCTION[raw.get("score_type", "reward")] if raw.get("do_normalize") else None
    head = SafeRLHFScoreHead(inner.config.hidden_size, score_dim, bias, normalize)

    tensors = checkpoint_tensors(folder)
    where = f"{folder} ({SAFE_RLHF_SCORE} checkpoint)"
    head_state = {"weight": tensors.pop("score_head.weight", None)}
    if head_state["weight"] is None:
        raise ValueError(f"{where}: no 'score_head.weight' tensor")
    if bias:
        head_state["bias"] = tensors.pop("score_head.bias", None)
        if head_state["bias"] is None:
            raise ValueError(f"{where}: config says bias=true but there is no 'score_head.bias' tensor")
    elif "score_head.bias" in tensors:
        raise ValueError(f"{where}: a 'score_head.bias' tensor but config says bias=false")
    # The normaliser's saved buffers win over the config's copies (safe-rlhf loads them last).
    for stat in ("mean", "var"):
        value = tensors.pop(f"normalizer.{stat}", None)
        value = value if value is not None else torch.tensor(raw.get(stat) or ([0.0] if stat == "mean" else [1.0]) * score_dim)
        head_state[stat] = value.reshape(score_dim).float()
    tensors.pop("normalizer.count", None)
    tensors.pop("lm_head.weight", None)  # a causal LM's output layer, unused by a score model
    head.load_state_dict(head_state)
    backbone = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = inner.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith("score.")]
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the {type(inner).__name__} backbone: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    inner.score = head.to(dtype) if dtype != torch.float32 else head
    return inner
