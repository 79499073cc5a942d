"""Classification metrics from host-side predictions (sklearn does the counting)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sklearn import metrics as skm


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                           loss: Optional[float] = None) -> dict[str, Any]:
  """accuracy, macro-F1, macro recall, per-class accuracy (recall; NaN for absent classes),
  confusion matrix (rows true, columns predicted) and the mean loss if given."""
  labels = np.asarray(labels).astype(np.int64).ravel()
  preds = np.asarray(preds).astype(np.int64).ravel()
  if labels.shape != preds.shape:
    raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ")
  classes = np.arange(num_classes)
  cm = skm.confusion_matrix(labels, preds, labels=classes)
  support = cm.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
  out = {
      "accuracy": float(skm.accuracy_score(labels, preds)) if len(labels) else float("nan"),
      # Macro averages over the classes present in labels or predictions (sklearn's default).
      "macro_f1": float(skm.f1_score(labels, preds, average="macro", zero_division=0)),
      "macro_recall": float(skm.recall_score(labels, preds, average="macro", zero_division=0)),
      "per_class_accuracy": per_class.tolist(),
      "confusion_matrix": cm.tolist(),
      "count": int(len(labels)),
  }
  if loss is not None:
    out["loss"] = float(loss)
  return out
