"""Reward and cost models trained for real: 2 Ray Train workers, DeepSpeed ZeRO-2, gloo.

The preference set is built here so that its answer is known: helpful+safe answers share
words that terse or harmful ones never use, so a working trainer must separate them.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from rayrlhf.config import compose_config
from rayrlhf.data import load_rows
from rayrlhf.models import load_tokenizer
from rayrlhf.models.score_model import ScoreModel
from rayrlhf.models.scoring import score_conversations
from rayrlhf.trainers import score_trainer
from rayrlhf.trainers.ray_train import split_train_eval
from rayrlhf.trainers.score_objectives import metrics_from_scores, pairs_to_score

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS = ["training.per_device_batch_size=4", "training.epochs=3", "training.lr=1e-3",
         "training.eval_every=3", "training.save_every=3", "eval_fraction=0.25", "training.num_workers=2",
         "training.warmup_ratio=0.0"]


@pytest.fixture(scope="module")
def separable_prefs(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    with open(path, "w") as f:
        for i in range(48):
            good = f"Sure, here is a kind and helpful answer about topic {i}."
            harmful = f"Fine, here is how to steal thing number {i} quietly."
            b = rng.randint(0, 1)
            f.write(json.dumps({
                "prompt": f"Please help me with question {i}.",
                "response_0": good if b == 0 else harmful, "response_1": harmful if b == 0 else good,
                "is_response_0_safe": b == 0, "is_response_1_safe": b == 1,
                "better_response_id": b, "safer_response_id": b}) + "\n")
    return path


def train(kind, data, out, *extra):
    cfg = compose_config(f"train_{kind}", ["model=tiny-llama", f"dataset.source={data}", *STEPS, *extra],
                         output_dir=str(out))
    return score_trainer.run(cfg), cfg


@pytest.fixture(scope="module")
def reward_run(ray_cluster, separable_prefs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    metrics, cfg = train("reward", separable_prefs, out)
    return out, metrics, cfg


def test_reward_model_learns_the_separable_preferences(reward_run):
    out, metrics, _ = reward_run
    assert metrics["step"] == 12  # 36 training rows // (4 per worker x 2 workers) = 4 steps x 3 epochs
    assert metrics["eval/accuracy"] >= 0.9, metrics


def test_cost_model_learns_signs_and_order(ray_cluster, separable_prefs, tmp_path):
    metrics, _ = train("cost", separable_prefs, tmp_path)
    assert metrics["eval/accuracy"] >= 0.9, metrics
    assert metrics["eval/sign_accuracy"] >= 0.9, metrics  # cost > 0 exactly on unsafe answers
    assert metrics["eval/auroc"] >= 0.9, metrics


def test_checkpoint_reloads_with_identical_scores(reward_run, separable_prefs):
    out, metrics, cfg = reward_run
    from transformers import AutoModelForSequenceClassification

    assert type(AutoModelForSequenceClassification.from_pretrained(out / "model")).__name__ == \
        "LlamaForSequenceClassification"
    # float32, pinned: the tiny model trains in fp32 (its configured dtype), and "auto" would
    # reload it in bf16 on CPUs with native bf16, moving the scores by ~4e-3.
    model = ScoreModel.from_pretrained(out / "model", dtype="float32").eval()
    assert model.kind == "reward"
    tok = load_tokenizer(out / "model", padding_side="right")
    rows = load_rows(separable_prefs, "preference").rows
    _, held_out = split_train_eval(rows, cfg.eval_fraction, cfg.run.seed)
    prompts, responses = pairs_to_score("reward", held_out)
    scores = score_conversations(model, tok, prompts, responses, template=cfg.template.name,
                                 max_length=cfg.training.max_length)
    again = metrics_from_scores("reward", scores, held_out)
    assert again["accuracy"] == metrics["eval/accuracy"]
    assert again["mean_better"] == pytest.approx(metrics["eval/mean_better"], abs=1e-3)
    assert again["mean_worse"] == pytest.approx(metrics["eval/mean_worse"], abs=1e-3)
    # Reloading twice gives bit-identical scores.
    twice = score_conversations(ScoreModel.from_pretrained(out / "model", dtype="float32").eval(), tok, prompts, responses,
                                template=cfg.template.name, max_length=cfg.training.max_length)
    assert torch.equal(scores, twice)


def test_interrupted_run_resumes_to_the_same_result(reward_run, separable_prefs, tmp_path):
    _, full_metrics, _ = reward_run
    first, _ = train("reward", separable_prefs, tmp_path / "first", "training.stop_at_step=3")
    assert first["step"] == 3
    resumed, _ = train("reward", separable_prefs, tmp_path / "second", f"resume_from={tmp_path / 'first'}")
    assert resumed["step"] == full_metrics["step"]
    for key in ("eval/mean_better", "eval/mean_worse", "train/loss"):
        assert resumed[key] == pytest.approx(full_metrics[key], abs=1e-4), key
