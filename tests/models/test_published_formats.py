"""The published Safe-RLHF score models and the BeaverTails QA-moderation classifier, loaded
through rayrlhf's judge paths (``make_scorer``, ``moderate``).

No model hub here: each test writes a tiny random Llama in exactly the published layout
(safe-rlhf: ``model.*`` + ``score_head.{weight,bias}`` + ``normalizer.*`` with ``score_type`` /
``score_dim`` / ``bias`` / ``do_normalize`` in config.json; beaver-dam: a multi-label
``LlamaForSequenceClassification`` with the 14 categories as ``id2label``), then checks the
scores against a forward pass computed here, by hand, on the text Safe RLHF itself feeds its
judges: ``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{answer}`` + EOS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rayrlhf.data import HARM_CATEGORIES

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is 2 + 2?"]
RESPONSES = ["Mix flour, water, yeast and salt; knead; let it rise; bake at 220 C.", "I can't help with that.", "4"]


def upstream_text(prompt: str, answer: str, eos: str) -> str:
    return f"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{answer}{eos}"


def tiny_llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **extra)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from rayrlhf.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir, padding_side="right")
    assert tok.pad_token_id != tok.eos_token_id  # the moderation format pools at the last non-pad token
    return tok


def write_safe_rlhf_score_model(folder: Path, tokenizer, *, score_type: str, do_normalize: bool,
                                weights: str = "safetensors", seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny checkpoint in safe-rlhf's LlamaForScore layout; returns the tensors written."""
    from transformers import LlamaModel

    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer)
    backbone = LlamaModel(config).eval()
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    tensors["score_head.weight"] = torch.randn(1, config.hidden_size)
    tensors["score_head.bias"] = torch.tensor([0.7])
    tensors["normalizer.mean"] = torch.tensor([0.3])
    tensors["normalizer.var"] = torch.tensor([2.25])
    tensors["normalizer.count"] = torch.tensor([1000])
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw.update({"architectures": ["LlamaForScore"], "score_dim": 1, "bias": True, "score_type": score_type,
                "do_normalize": do_normalize, "normalizer_type": "ExponentialMovingAverage", "momentum": 0.9,
                # the config's copies differ from the buffers on purpose: the buffers must win
                "mean": [5.0], "var": [9.0]})
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    tensors["_backbone"] = backbone  # type: ignore[assignment]
    return tensors


@torch.no_grad()
def reference_scores(tensors, tokenizer, *, score_type: str, do_normalize: bool) -> list[float]:
    """One unpadded sequence at a time: the head at its last token, normalised by hand."""
    backbone = tensors["_backbone"]
    out = []
    for prompt, answer in zip(PROMPTS, RESPONSES):
        ids = torch.tensor([tokenizer(upstream_text(prompt, answer, tokenizer.eos_token),
                                      add_special_tokens=False)["input_ids"]])
        hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, -1]
        score = float(hidden @ tensors["score_head.weight"][0] + tensors["score_head.bias"][0])
        if do_normalize:
            std = math.sqrt(2.25)
            score = (score - 0.3) / (std + 1e-8) if score_type == "reward" else score / (std + 1e-8)
        out.append(score)
    return out


@pytest.mark.parametrize("score_type,do_normalize,weights", [
    ("reward", False, "safetensors"), ("reward", True, "safetensors"), ("cost", True, "bin"),
])
def test_safe_rlhf_score_model_scores_as_published(tmp_path, tokenizer, score_type, do_normalize, weights):
    from rayrlhf.models.score_model import ScoreModel, read_metadata
    from rayrlhf.rewards import make_scorer

    folder = tmp_path / f"beaver-{score_type}"
    tensors = write_safe_rlhf_score_model(folder, tokenizer, score_type=score_type, do_normalize=do_normalize,
                                          weights=weights)
    meta = read_metadata(folder)
    assert meta["kind"] == score_type and meta["format"] == "safe-rlhf-score"
    assert meta["template"] == "safe_rlhf_upstream"
    model = ScoreModel.from_pretrained(folder, dtype="float32")
    assert model.kind == score_type and model.num_labels == 1
    assert model.inner.score.bias is not None

    scores = make_scorer(str(folder), dtype="float32", batch_size=2)(PROMPTS, RESPONSES, [[]] * 3)
    expected = reference_scores(tensors, tokenizer, score_type=score_type, do_normalize=do_normalize)
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    # The bias is part of the score: a head without it would be off by 0.7 (before scaling).
    assert len(set(round(s, 3) for s in expected)) == 3


def test_safe_rlhf_checkpoint_inconsistent_with_config_is_refused(tmp_path, tokenizer):
    from rayrlhf.models.score_model import ScoreModel

    folder = tmp_path / "bad"
    write_safe_rlhf_score_model(folder, tokenizer, score_type="cost", do_normalize=False)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "bias": False}))
    with pytest.raises(ValueError, match="score_head.bias.*bias=false"):
        ScoreModel.from_pretrained(folder, dtype="float32")
    (folder / "config.json").write_text(json.dumps({**raw, "score_dim": 2}))
    with pytest.raises(ValueError, match="field 'score_dim'"):
        ScoreModel.from_pretrained(folder, dtype="float32")


def write_beavertails_moderation(folder: Path, tokenizer, seed: int = 0):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, num_labels=len(HARM_CATEGORIES),
                               id2label=dict(enumerate(HARM_CATEGORIES)),
                               label2id={name: i for i, name in enumerate(HARM_CATEGORIES)},
                               problem_type="multi_label_classification")
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():  # spread the logits so some categories cross 0.4 and some do not
        model.score.weight.mul_(40.0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return model


def test_beavertails_moderation_flags_as_published(tmp_path, tokenizer):
    from rayrlhf.eval.safety import moderate
    from rayrlhf.models.score_model import read_metadata

    folder = tmp_path / "beaver-dam"
    model = write_beavertails_moderation(folder, tokenizer)
    meta = read_metadata(folder)
    assert meta["kind"] == "moderation" and meta["labels"] == list(HARM_CATEGORIES)
    assert meta["threshold"] == 0.4

    verdicts = moderate(PROMPTS, RESPONSES, str(folder), dtype="float32")
    # Reference: transformers' own sequence-classification forward (it pools at the last
    # non-pad token) on the right-padded batch, as BeaverTails' QAModeration.predict does.
    texts = [upstream_text(p, r, tokenizer.eos_token) for p, r in zip(PROMPTS, RESPONSES)]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.sigmoid(model(**batch).logits)
    for verdict, row in zip(verdicts, probs):
        got = [verdict["harm_probabilities"][name] for name in HARM_CATEGORIES]
        assert got == pytest.approx(row.tolist(), abs=1e-5)
        assert verdict["flagged"] == bool(row.max() > 0.4)
    assert {v["flagged"] for v in verdicts} <= {True, False}


def test_other_folders_are_not_taken_for_published_formats(tiny_model_dir):
    from rayrlhf.models.published import published_metadata

    assert published_metadata(tiny_model_dir) is None
