"""Evaluation of the judges and policies: pure metrics (``metrics.py``)."""

from rayrlhf.eval.metrics import (
    auroc,
    binary_report,
    format_table,
    moderation_report,
    pairwise_accuracy,
    sign_accuracy,
)

__all__ = ["auroc", "binary_report", "format_table", "moderation_report", "pairwise_accuracy",
           "sign_accuracy"]
