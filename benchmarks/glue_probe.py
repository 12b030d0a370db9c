"""Probe mode of :mod:`benchmarks.glue`: a linear model on frozen, L2-normalised embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from benchmarks.glue_data import METRIC_LABELS, Split, Task, TaskData
from benchmarks.glue_scores import METRICS

PROBE_HOLDOUT_FRACTION = 0.1
# Grids run from the strongest to the weakest regularisation (ties go to the first). They
# are wide because with MiniLM the best value sat on the edge of narrower grids: with 1536
# standardised pair features MRPC, RTE and QNLI kept improving down to C=0.001, STS-B
# peaked at alpha=1e4; the fits cost little next to encoding.
PROBE_C_GRID = (1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_ALPHA_GRID = (1e5, 1e4, 1e3, 100.0, 10.0, 1.0)



class Encoder(Protocol):
    """What probe mode needs: ``encode`` as ``textcl.Embedder`` / ``benchmarks.models`` give it."""

    def encode(
        self, texts: Sequence[str], batch_size: int = ..., normalize: bool = ..., show_progress: bool | None = ...
    ) -> np.ndarray: ...


def load_encoder(spec: str) -> Encoder:
    """``benchmarks.models.load_model(spec)``; ``textcl.Embedder.load`` while that module does not exist."""
    try:
        from benchmarks.models import load_model
    except ModuleNotFoundError as err:
        if err.name != "benchmarks.models":
            raise  # a dependency of benchmarks.models is missing: say so, do not hide it
        from textcl import Embedder

        return Embedder.load(spec)
    return load_model(spec)


def features(encoder: Encoder, splits: Sequence[Split], batch_size: int) -> list[np.ndarray]:
    """Probe features per split: u for single texts, [u, v, |u-v|, u*v] for pairs.

    Every distinct text is encoded once (pair tasks repeat sentences across rows).
    """
    unique = list(dict.fromkeys(t for s in splits for row in s.texts for t in row))
    show = len(unique) >= 2000
    emb = np.asarray(encoder.encode(unique, batch_size=batch_size, normalize=True, show_progress=show), np.float32)
    if emb.shape[0] != len(unique):
        raise RuntimeError(f"encoder returned {emb.shape[0]} vectors for {len(unique)} texts")
    where = {t: i for i, t in enumerate(unique)}
    out = []
    for s in splits:
        cols = [emb[[where[row[k]] for row in s.texts]] for k in range(len(s.texts[0]))]
        if len(cols) == 1:
            out.append(cols[0])
        else:
            u, v = cols
            out.append(np.concatenate([u, v, np.abs(u - v), u * v], axis=1))
    return out


def _probe_model(regression: bool, strength: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardised features: normalised embeddings have tiny per-dimension scales, which
    # makes lbfgs slow to converge and the C grid hard to interpret.
    head = Ridge(alpha=strength) if regression else LogisticRegression(C=strength, max_iter=2000, random_state=seed)
    return make_pipeline(StandardScaler(), head)


def probe_fit(
    task: Task, x_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0, strength: float | None = None
) -> tuple[Any, dict[str, Any]]:
    """The probe pipeline (StandardScaler + LogisticRegression / Ridge) fit on train features.

    Without ``strength``, C (alpha) is picked on a seeded held-out part of train (see
    :func:`holdout_split`) and the pipeline refit on all of train. Returns (pipeline, details).
    """
    param = "alpha" if task.regression else "C"
    grid = PROBE_ALPHA_GRID if task.regression else PROBE_C_GRID
    details: dict[str, Any] = {"feature_dim": int(x_train.shape[1])}
    if strength is None:
        # Pick C / alpha on a seeded held-out part of train; eval stays untouched.
        fit, hold = holdout_split(len(y_train), seed)
        main_metric = METRICS[task.metrics[0]]
        scores = {}
        for value in grid:
            model = _probe_model(task.regression, value, seed).fit(x_train[fit], y_train[fit])
            s = main_metric(y_train[hold], model.predict(x_train[hold]))
            scores[value] = -math.inf if math.isnan(s) else s
        strength = max(grid, key=lambda v: scores[v])  # ties: the first, i.e. the strongest regularisation
        details["selection"] = {str(v): round(100 * s, 3) for v, s in scores.items()}
        details["selection_holdout_rows"] = len(hold)
    details[param] = strength
    return _probe_model(task.regression, strength, seed).fit(x_train, y_train), details


def holdout_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) row indices of a train set of ``n`` rows: a seeded
    PROBE_HOLDOUT_FRACTION of them, at least one, is held out. The probe's C and the pooled
    fine-tune's lr are both picked on this part, so they see the same rows."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = max(1, int(round(PROBE_HOLDOUT_FRACTION * n)))
    return order[n_hold:], order[:n_hold]


def probe(
    encoder: Encoder, data: TaskData, *, seed: int = 0, batch_size: int = 64, strength: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the linear probe on train features and predict eval; returns (predictions, details)."""
    x_train, x_eval = features(encoder, [data.train, data.eval], batch_size)
    model, details = probe_fit(data.task, x_train, data.train.labels, seed=seed, strength=strength)
    return model.predict(x_eval), details


def probe_protocol(task: Task, details: dict[str, Any], fixed: bool) -> str:
    """How the probe was fit, for the protocol line."""
    head = "Ridge" if task.regression else "LogisticRegression"
    param = "alpha" if task.regression else "C"
    feats = "[u, v, |u-v|, u*v]" if len(task.fields) == 2 else "u"
    if fixed:
        how = f"{param}={details[param]:g} fixed"
    else:
        grid = PROBE_ALPHA_GRID if task.regression else PROBE_C_GRID
        how = (
            f"{param}={details[param]:g} picked from {{{', '.join(f'{g:g}' for g in grid)}}} on a seeded "
            f"{PROBE_HOLDOUT_FRACTION:.0%} held-out part of train by {METRIC_LABELS[task.metrics[0]]}, then refit on all train"
        )
    return f"frozen L2-normalised embeddings, features {feats} -> StandardScaler + {head}, {how}"

