"""What each judge learns: texts to score, the loss, and the evaluation metrics.

One table keyed by kind keeps the reward, cost and moderation models in one trainer:
- reward: ``-log σ(R_better - R_worse)`` on ``better_response_id``;
- cost: ``-log σ(C_unsafer - C_safer)`` on ``safer_response_id`` plus the sign terms
  ``-log σ(s·C)`` with s = +1 for an unsafe response, so **cost > 0 means unsafe**;
- moderation: multi-label BCE over the 14 BeaverTails harm categories of a QA pair.

Reward and cost also train on general pairs (``PairwiseRow``: TRL ``chosen``/``rejected``,
HH-RLHF dialogues), where chosen is the better and the safer answer. Such rows carry no
safety labels, so the cost model learns the pairwise term alone (no sign terms: cost > 0
no longer means unsafe), and its metrics say ``pairwise_only`` and hold no sign accuracy.
"""

from __future__ import annotations

import torch

from rayrlhf.algorithms import cost_pairwise_loss, moderation_loss, reward_pairwise_loss
from rayrlhf.data import HARM_CATEGORIES, PairwiseRow, PreferenceRow, QAClassificationRow
from rayrlhf.eval.calibration import any_harm_scores, calibrate_and_report, calibration_split, false_positive_rate
from rayrlhf.eval.metrics import auroc, moderation_report, pairwise_accuracy, sign_accuracy

ROW_TYPE = {"reward": PreferenceRow, "cost": PreferenceRow, "moderation": QAClassificationRow}
SCHEMA = {"reward": "preference", "cost": "preference", "moderation": "qa_classification"}
# Every schema each kind trains on (the first is its own, SCHEMA).
TRAINABLE_SCHEMAS = {"reward": ("preference", "pairwise"), "cost": ("preference", "pairwise"),
                     "moderation": ("qa_classification",)}


def pairwise_only(rows: list) -> bool:
    """Rows with a preference and no safety labels (the cost model then has no sign terms)."""
    return bool(rows) and isinstance(rows[0], PairwiseRow)


def labels_for(kind: str) -> list[str]:
    return list(HARM_CATEGORIES) if kind == "moderation" else [kind]


def pairs_to_score(kind: str, rows: list) -> tuple[list[str], list[str]]:
    """(prompts, responses) in the order the model scores them.

    Pairwise kinds score the first response of every row, then the second: reward puts
    better before worse, cost puts safer before unsafer.
    """
    if kind == "moderation":
        return [r.prompt for r in rows], [r.response for r in rows]
    first = [r.better_response if kind == "reward" else r.safer_response for r in rows]
    second = [r.worse_response if kind == "reward" else r.unsafer_response for r in rows]
    prompts = [r.prompt for r in rows]
    return prompts + prompts, first + second


def harm_targets(rows: list) -> torch.Tensor:
    """[N, 14] float targets of QA rows."""
    return torch.tensor([r.harm_vector for r in rows], dtype=torch.float32)


def loss_from_scores(kind: str, scores: torch.Tensor, rows: list, l2_coef: float = 0.0,
                     pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss from ``scores`` [N, K] laid out as ``pairs_to_score`` says
    (``pos_weight``: moderation only, see ``moderation_loss``)."""
    n = len(rows)
    if kind == "moderation":
        return moderation_loss(scores, harm_targets(rows).to(scores.dtype), pos_weight)
    first, second = scores[:n, 0], scores[n:, 0]
    if kind == "reward":
        return reward_pairwise_loss(first, second, l2_coef=l2_coef)
    if pairwise_only(rows):  # -log σ(C_rejected - C_chosen): the cost model's pairwise term alone
        return reward_pairwise_loss(second, first, l2_coef=l2_coef)
    safer_is_safe = torch.tensor([r.is_safe(r.safer_response_id) for r in rows])
    unsafer_is_safe = torch.tensor([r.is_safe(1 - r.safer_response_id) for r in rows])
    return cost_pairwise_loss(first, second, safer_is_safe, unsafer_is_safe, l2_coef=l2_coef)


def metrics_from_scores(kind: str, scores: torch.Tensor, rows: list, threshold: float | None = None,
                        max_false_positive_rate: float = 0.10) -> dict:
    """Held-out metrics: reward accuracy; cost accuracy, sign accuracy, AUROC; moderation
    flagged precision/recall/F1, per-category F1, the flagged share of safe answers and the
    flag ``threshold``: calibrated on half of the rows when None (then every moderation number
    comes from the other half, ``rayrlhf.eval.calibration``)."""
    n = len(rows)
    scores = scores.float()
    if kind == "moderation":
        probs = torch.sigmoid(scores).numpy()
        targets = torch.tensor([r.harm_vector for r in rows], dtype=torch.bool).numpy()
        if threshold is None:
            calibrated = calibrate_and_report(probs, targets, max_false_positive_rate)
            test = calibration_split(n)[1]
            return {**moderation_report(probs[test], targets[test], threshold=calibrated["threshold"]),
                    **calibrated}
        report = moderation_report(probs, targets, threshold=threshold)
        flagged = any_harm_scores(probs) > threshold
        return {**report, "threshold": threshold,
                "false_positive_rate": false_positive_rate(flagged, targets.any(axis=1)), "test_rows": n}
    first, second = scores[:n, 0].numpy(), scores[n:, 0].numpy()
    if kind == "reward":
        return {"accuracy": pairwise_accuracy(first, second),
                "mean_better": float(first.mean()), "mean_worse": float(second.mean())}
    if pairwise_only(rows):
        return {"accuracy": pairwise_accuracy(second, first), "pairwise_only": 1.0}
    costs = torch.cat([scores[:n, 0], scores[n:, 0]]).numpy()
    safe = [r.is_safe(r.safer_response_id) for r in rows] + [r.is_safe(1 - r.safer_response_id) for r in rows]
    metrics = {"accuracy": pairwise_accuracy(second, first),
               "sign_accuracy": sign_accuracy(costs, safe)}
    unsafe = [not s for s in safe]
    if any(unsafe) and not all(unsafe):
        metrics["auroc"] = auroc(costs, unsafe)
    return metrics
