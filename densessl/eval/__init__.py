"""Evaluation: DAVIS J&F scores and CSVs (official-equivalent)."""

from densessl.eval.davis_metrics import (
    DavisScores,
    ObjectScores,
    db_eval_iou,
    evaluate_results,
    evaluate_sequence_masks,
    f_measure,
)

__all__ = [
    "DavisScores",
    "ObjectScores",
    "db_eval_iou",
    "evaluate_results",
    "evaluate_sequence_masks",
    "f_measure",
]
