"""Score models: an LM backbone with a linear head read at the last real token.

One class serves every judge in Safe RLHF: the reward model (1 output, higher = more
helpful), the cost model (1 output, **cost > 0 means unsafe**), the QA-moderation classifier
(14 outputs, one logit per BeaverTails harm category) and the PPO critics (1 output read at
every token). The checkpoint layout is transformers' ``*ForSequenceClassification`` (backbone
under ``model.``, head ``score``), so ``AutoModelForSequenceClassification`` loads it too.

We do not use transformers' own pooling: it finds the last token by comparing ids with
``pad_token_id``, which silently reads the wrong token when the pad token equals EOS (as in
SmolLM2) and a sequence ends with a real EOS. Here the attention mask decides, for left and
right padding alike, and position ids are rebuilt from the mask so left padding does not
shift positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayrlhf.models.published import SAFE_RLHF_SCORE, load_safe_rlhf_score_model, published_metadata
from rayrlhf.models.zoo import resolve_model_path, to_dtype

# The judges of Safe RLHF (what the score trainer trains and Serve serves), and the critics.
JUDGE_KINDS = ("reward", "cost", "moderation")
SCORE_KINDS = (*JUDGE_KINDS, "critic")
METADATA_FILE = "rayrlhf_score_model.json"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last position whose mask is 1 (left or right padding)."""
    if not bool((attention_mask.sum(-1) > 0).all()):
        raise ValueError("a row of attention_mask has no real token")
    length = attention_mask.shape[-1]
    flipped_first_real = attention_mask.flip(-1).to(torch.long).argmax(-1)
    return length - 1 - flipped_first_real


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding leaves them unchanged."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def gather_end_scores(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, K] per-token scores -> [B, K] scores at each row's last real token."""
    index = last_token_index(attention_mask)
    return scores[torch.arange(scores.shape[0], device=scores.device), index]


@dataclass
class ScoreOutput:
    scores: torch.Tensor  # [B, T, K] head output at every position
    end_scores: torch.Tensor  # [B, K] at the last real token


class ScoreModel(nn.Module):
    """A ``*ForSequenceClassification`` model with mask-based pooling (see module docstring)."""

    def __init__(self, inner: nn.Module, kind: str, labels: list[str] | None = None):
        super().__init__()
        if kind not in SCORE_KINDS:
            raise ValueError(f"unknown score model kind {kind!r}; choose one of {SCORE_KINDS}")
        self.inner = inner
        self.kind = kind
        self.labels = list(labels) if labels else [kind]

    @property
    def config(self):
        return self.inner.config

    @property
    def num_labels(self) -> int:
        return self.inner.score.out_features

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, kind: str | None = None,
                        labels: list[str] | None = None, dtype: str | torch.dtype = "auto",
                        trust_remote_code: bool = False) -> ScoreModel:
        """Load a trained score model, or start a new one from any causal LM checkpoint.

        A directory written by :meth:`save_pretrained` keeps its kind and labels; a plain LM
        gets a freshly initialised head with ``len(labels)`` outputs (1 when not given).
        """
        from transformers import AutoModelForSequenceClassification

        path = resolve_model_path(name_or_path)
        meta = read_metadata(path)
        if meta is not None:
            if kind is not None and kind != meta["kind"] and not (kind == "critic"):
                raise ValueError(f"{path} holds a {meta['kind']} model, not a {kind} model")
            labels = labels or meta["labels"]
            kind = kind or meta["kind"]
        if kind is None:
            raise ValueError(f"{path} is not a rayrlhf score model; say which kind to start")
        labels = list(labels) if labels else [kind]
        if meta is not None and meta.get("format") == SAFE_RLHF_SCORE:
            inner = load_safe_rlhf_score_model(path, to_dtype(dtype), trust_remote_code)
            return cls(inner, kind, labels[:inner.score.out_features])
        inner = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), dtype=to_dtype(dtype),
            trust_remote_code=trust_remote_code, use_safetensors=True,
        )
        if inner.config.pad_token_id is None:  # only used by transformers' own pooling
            inner.config.pad_token_id = inner.config.eos_token_id
        return cls(inner, kind, labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ScoreOutput:
        backbone = self.inner.base_model
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask),
                          use_cache=False).last_hidden_state
        scores = self.inner.score(hidden)
        return ScoreOutput(scores=scores, end_scores=gather_end_scores(scores, attention_mask))

    def save_pretrained(self, out_dir: str | Path, tokenizer=None, extra: dict[str, Any] | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Safetensors + config (+ tokenizer) + our metadata, loadable by transformers."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.inner.config.id2label = dict(enumerate(self.labels))
        self.inner.config.label2id = {name: i for i, name in enumerate(self.labels)}
        self.inner.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        meta = {"kind": self.kind, "labels": self.labels, **(extra or {})}
        (out / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return out


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """A judge folder's metadata: ours (written by ``save_pretrained``), or what a published
    Safe-RLHF / BeaverTails checkpoint's config implies (``rayrlhf.models.published``)."""
    file = Path(path) / METADATA_FILE
    if file.is_file():
        return json.loads(file.read_text())
    return published_metadata(path) if Path(path).is_dir() else None
