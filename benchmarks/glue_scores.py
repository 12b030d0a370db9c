"""The GLUE metric formulas, scikit-learn / scipy as the hub's ``evaluate`` "glue" module
computes them, on plain sequences (no ``evaluate`` import: cheap to import).

Shared by the ``evaluate`` metric module :mod:`benchmarks.glue_metric` (which evaluate
copies next to itself when it loads that file) and by :mod:`benchmarks.glue`'s probe model
selection, which scores a grid of fits and needs no module per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["CONFIG_METRICS", "METRICS", "accuracy", "f1", "matthews", "pearson", "spearman"]


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of predictions equal to the labels."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))


def matthews(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Matthews correlation coefficient (0 when predictions are constant)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(y_true, y_pred))


def _constant(x: Sequence[float]) -> bool:
    a = np.asarray(x, dtype=np.float64)
    return a.size < 2 or bool(np.all(a == a[0]))


def pearson(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Pearson r; NaN when either side is constant (undefined, and scipy warns)."""
    from scipy.stats import pearsonr

    if _constant(y_true) or _constant(y_pred):
        return math.nan
    return float(pearsonr(np.asarray(y_true, float), np.asarray(y_pred, float))[0])


def spearman(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Spearman rho; NaN when either side is constant."""
    from scipy.stats import spearmanr

    if _constant(y_true) or _constant(y_pred):
        return math.nan
    return float(spearmanr(np.asarray(y_true, float), np.asarray(y_pred, float))[0])


#: Metric name (the hub module's result keys) -> formula(y_true, y_pred).
METRICS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "matthews_correlation": matthews,
    "f1": f1,
    "accuracy": accuracy,
    "pearson": pearson,
    "spearmanr": spearman,
}

#: The hub module's config names -> the metrics it returns for them.
CONFIG_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearmanr"),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    **{name: ("accuracy",) for name in
       ("sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans")},
}
