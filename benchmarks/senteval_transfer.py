"""SentEval transfer tasks: scikit-learn logistic regressions on frozen unit-length embeddings,
with SentEval's three protocols (nested CV, a dev split, k-fold on train).
Part of :mod:`benchmarks.senteval`."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import Encoder
from benchmarks.senteval_data import (
    _TRANSFER_FILES,
    CV_TASKS,
    TRANSFER_TASKS,
    DataFormatError,
    _as_encoder,
    _existing,
    encode_unique,
    parse_tasks,
    read_jsonl,
)

__all__ = ["C_GRID_INNER", "C_GRID_KFOLD", "MAX_ITER", "run_transfer", "stratified_folds"]

# SentEval's sklearn grids: InnerKFoldClassifier / SplitClassifier use 2^-2..2^3,
# KFoldClassifier (TREC, MRPC) 2^-1..2^5 (`[2**t for t in range(-2, 4)]`, `range(-1, 6)`).
C_GRID_INNER = tuple(2.0**t for t in range(-2, 4))
C_GRID_KFOLD = tuple(2.0**t for t in range(-1, 6))
MAX_ITER = 1000


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded, shuffled stratified k-fold (train_idx, test_idx) pairs, as SentEval draws them."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))


@dataclass
class _Classifier:
    """Fits L2 logistic regressions and counts them (and those that hit ``max_iter``)."""

    seed: int
    max_iter: int = MAX_ITER
    fits: int = 0
    not_converged: int = 0
    chosen: list[float] = field(default_factory=list)

    def fit(self, x: np.ndarray, y: np.ndarray, c: float) -> Any:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            # Counted below and reported in the JSON instead of flooding the terminal.
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        self.fits += 1
        self.not_converged += int(np.max(clf.n_iter_) >= self.max_iter)
        return clf

    def cv_accuracy(self, x: np.ndarray, y: np.ndarray, c: float, folds: list) -> float:
        """Mean held-out accuracy (x100) of C over ``folds``."""
        scores = [self.fit(x[tr], y[tr], c).score(x[te], y[te]) for tr, te in folds]
        return 100.0 * float(np.mean(scores))

    def select_cv(
        self, x: np.ndarray, y: np.ndarray, grid: Sequence[float], k: int
    ) -> tuple[float, float]:
        """(best C, its CV accuracy) by seeded stratified k-fold; ties go to the smaller C."""
        folds = stratified_folds(y, k, self.seed)
        scores = [self.cv_accuracy(x, y, c, folds) for c in grid]
        best = int(np.argmax(scores))
        return grid[best], scores[best]


def _nested_cv(
    x: np.ndarray, y: np.ndarray, clf: _Classifier, folds: int, inner_folds: int
) -> dict[str, Any]:
    """SentEval's InnerKFoldClassifier: per outer fold, C by inner CV on its training part."""
    test_acc, dev_acc, chosen = [], [], []
    for train, test in stratified_folds(y, folds, clf.seed):
        c, dev = clf.select_cv(x[train], y[train], C_GRID_INNER, inner_folds)
        model = clf.fit(x[train], y[train], c)
        test_acc.append(100.0 * model.score(x[test], y[test]))
        dev_acc.append(dev)
        chosen.append(c)
    return {
        "accuracy": float(np.mean(test_acc)),
        "dev_accuracy": float(np.mean(dev_acc)),
        "fold_accuracies": [float(a) for a in test_acc],
        "C": chosen,
    }


def _split_eval(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], clf: _Classifier
) -> dict[str, Any]:
    """SentEval's SplitClassifier: C by dev accuracy; that model's test accuracy."""
    best = None
    for c in C_GRID_INNER:
        model = clf.fit(x["train"], y["train"], c)
        dev = 100.0 * model.score(x["dev"], y["dev"])
        if best is None or dev > best[1]:  # strict: ties keep the smaller C, as argmax does
            best = (c, dev, model)
    c, dev, model = best
    return {"accuracy": 100.0 * model.score(x["test"], y["test"]), "dev_accuracy": dev, "C": c}


def _kfold_eval(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], clf: _Classifier, folds: int, f1: bool
) -> dict[str, Any]:
    """SentEval's KFoldClassifier: C by k-fold CV on train, refit on all of train, test."""
    from sklearn.metrics import f1_score

    c, dev = clf.select_cv(x["train"], y["train"], C_GRID_KFOLD, folds)
    model = clf.fit(x["train"], y["train"], c)
    pred = model.predict(x["test"])
    out: dict[str, Any] = {
        "accuracy": 100.0 * float(np.mean(pred == y["test"])),
        "dev_accuracy": dev,
        "C": c,
    }
    if f1:
        out["f1"] = 100.0 * float(f1_score(y["test"], pred, pos_label=1))
    return out


def _labels(
    rows_by_split: dict[str, list[dict[str, Any]]], path: dict[str, Path], binary: bool
) -> dict[str, np.ndarray]:
    """Labels as integer class ids (classes in sorted order); a test-only class is an error.

    ``binary`` tasks must use 0/1 so that id 1 is the positive class (MRPC's F1).
    """
    train_split = "train" if "train" in rows_by_split else "all"
    classes = sorted({r["label"] for r in rows_by_split[train_split]}, key=lambda c: (str(type(c)), c))
    if binary and not set(classes) <= {0, 1}:
        raise DataFormatError(f"{path[train_split]}: labels must be 0/1, got {classes[:5]}")
    index = {c: i for i, c in enumerate(classes)} if not binary else {0: 0, 1: 1}
    out = {}
    for split, rows in rows_by_split.items():
        unknown = {r["label"] for r in rows} - set(index)
        if unknown:
            raise DataFormatError(
                f"{path[split]}: labels {sorted(unknown, key=str)} not in {path[train_split].name}"
            )
        out[split] = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    return out


def _transfer_task(
    encoder: Encoder,
    task: str,
    data_dir: str | Path,
    seed: int,
    folds: int,
    inner_folds: int,
    batch_size: int,
    show_progress: bool | None,
    mrpc_features: str,
) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    pair = task == "mrpc"
    fields = {"sentence1": (str,), "sentence2": (str,)} if pair else {"text": (str,)}
    fields["label"] = (int, str)
    paths = {s: _existing(data_dir, rel) for s, rel in _TRANSFER_FILES[task].items()}
    rows = {s: read_jsonl(p, fields) for s, p in paths.items()}
    y = _labels(rows, paths, binary=task != "trec")

    start = time.perf_counter()
    texts: list[str] = []
    for split_rows in rows.values():
        if pair:
            texts += [r["sentence1"] for r in split_rows] + [r["sentence2"] for r in split_rows]
        else:
            texts += [r["text"] for r in split_rows]
    vecs = encode_unique(encoder, texts, batch_size, show_progress)
    encode_seconds = time.perf_counter() - start

    x: dict[str, np.ndarray] = {}
    offset = 0
    for split, split_rows in rows.items():
        n = len(split_rows)
        if pair:
            u, v = vecs[offset : offset + n], vecs[offset + n : offset + 2 * n]
            parts = [np.abs(u - v), u * v]
            x[split] = np.hstack(parts if mrpc_features == "senteval" else [u, v] + parts)
            offset += 2 * n
        else:
            x[split] = vecs[offset : offset + n]
            offset += n

    start = time.perf_counter()
    clf = _Classifier(seed)
    # One BLAS thread: measured ~10x faster than two for these small lbfgs fits on 2 shared cores.
    with threadpool_limits(limits=1):
        if task in CV_TASKS:
            out = _nested_cv(x["all"], y["all"], clf, folds, inner_folds)
        elif task == "sst2":
            out = _split_eval(x, y, clf)
        else:
            out = _kfold_eval(x, y, clf, folds, f1=pair)
    out.update({f"n_{s}": len(r) for s, r in rows.items()})
    out.update(
        n_classes=len(np.unique(np.concatenate(list(y.values())))),
        n_unique_texts=len(set(texts)),
        fits=clf.fits,
        not_converged=clf.not_converged,
        encode_seconds=encode_seconds,
        classify_seconds=time.perf_counter() - start,
    )
    if pair:
        out["features"] = mrpc_features
    return out


def run_transfer(
    encoder: Any,
    tasks: Sequence[str],
    data_dir: str | Path,
    seed: int = 1111,
    *,
    folds: int = 10,
    inner_folds: int = 10,
    batch_size: int = 64,
    show_progress: bool | None = None,
    mrpc_features: str = "senteval",
) -> dict[str, dict[str, Any]]:
    """Task -> transfer metrics (``accuracy`` x100 is the headline; MRPC adds ``f1``)."""
    if mrpc_features not in ("senteval", "concat"):
        raise ValueError(f"mrpc_features must be 'senteval' or 'concat', got {mrpc_features!r}")
    encoder = _as_encoder(encoder)
    out = {}
    for task in parse_tasks(tasks):
        if task in TRANSFER_TASKS:
            start = time.perf_counter()
            out[task] = _transfer_task(
                encoder, task, data_dir, seed, folds, inner_folds, batch_size, show_progress, mrpc_features
            )
            out[task]["seconds"] = time.perf_counter() - start
    return out
