"""SentEval STS: Spearman / Pearson x100 of the cosine of two sentence embeddings against the
gold score, in SimCSE's "all", "wmean" and "mean" settings, and the sentence-transformers
cross-check of ``--check-st``. Part of :mod:`benchmarks.senteval`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.senteval_data import (
    STS_TASKS,
    DataFormatError,
    _as_encoder,
    _cosine,
    _existing,
    encode_unique,
    parse_tasks,
    sts_file,
)

__all__ = ["ST_TOLERANCE", "StsResult", "evaluate_sts", "run_sts", "st_reference_sts", "sts_metrics"]

#: Largest |Spearman difference| (x100) from the sentence-transformers reference ``--check-st`` accepts.
ST_TOLERANCE = 0.05


def _correlations(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """(Spearman x100, Pearson x100); NaN where either side is constant."""
    from scipy.stats import pearsonr, spearmanr

    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return math.nan, math.nan
    return float(spearmanr(pred, gold).statistic * 100), float(pearsonr(pred, gold).statistic * 100)


def sts_metrics(
    pred: np.ndarray, gold: np.ndarray, domains: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """Spearman/Pearson x100 in the "all", "wmean" and "mean" settings, plus per-domain values.

    Without domains (or all ``None``) the set is one domain, so all = wmean = mean.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    sp_all, pe_all = _correlations(pred, gold)
    per_domain: dict[str, dict[str, float]] = {}
    if domains is not None and any(d is not None for d in domains):
        labels = np.asarray(["(none)" if d is None else d for d in domains], dtype=object)
        for name in dict.fromkeys(labels):  # file order
            mask = labels == name
            sp, pe = _correlations(pred[mask], gold[mask])
            per_domain[str(name)] = {"spearman": sp, "pearson": pe, "n": int(mask.sum())}
    out: dict[str, Any] = {"spearman_all": sp_all, "pearson_all": pe_all}
    if per_domain:
        n = np.array([d["n"] for d in per_domain.values()], dtype=np.float64)
        for metric in ("spearman", "pearson"):
            vals = np.array([d[metric] for d in per_domain.values()])
            out[f"{metric}_wmean"] = float((vals * n).sum() / n.sum())
            out[f"{metric}_mean"] = float(vals.mean())
    else:
        for metric, value in (("spearman", sp_all), ("pearson", pe_all)):
            out[f"{metric}_wmean"] = out[f"{metric}_mean"] = value
    out["n_pairs"] = len(pred)
    out["domains"] = per_domain
    return out


@dataclass
class StsResult:
    """One STS set: its metrics and the per-pair predictions (for plots)."""

    task: str
    metrics: dict[str, Any]
    cosine: np.ndarray
    gold: np.ndarray


def evaluate_sts(
    encoder: Any,
    task: str,
    data_dir: str | Path,
    text: str = "original",
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> StsResult:
    """Cosine similarity vs gold on one STS set (each distinct sentence encoded once)."""
    from textcl.evaluation import read_sts_file

    encoder = _as_encoder(encoder)
    relative, used = sts_file(task, text)
    path = _existing(data_dir, relative)
    start = time.perf_counter()
    try:
        pairs = read_sts_file(path)
    except ValueError as exc:
        raise DataFormatError(str(exc)) from None
    n = len(pairs)
    vecs = encode_unique(encoder, pairs.s1 + pairs.s2, batch_size, show_progress)
    cos = _cosine(vecs[:n], vecs[n:])
    metrics = sts_metrics(cos, pairs.scores, pairs.domains)
    metrics.update(
        n_sentences=len(set(pairs.s1) | set(pairs.s2)),
        text=used,
        file=relative,
        seconds=time.perf_counter() - start,
    )
    return StsResult(task, metrics, cos, pairs.scores)


def run_sts(
    encoder: Any,
    tasks: Sequence[str],
    data_dir: str | Path,
    text: str = "original",
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Task -> STS metrics (``spearman_all`` is the headline) for each task in ``tasks``."""
    encoder = _as_encoder(encoder)
    tasks = parse_tasks(tasks)
    return {
        t: evaluate_sts(encoder, t, data_dir, text, batch_size, show_progress).metrics
        for t in tasks
        if t in STS_TASKS
    }


# --------------------------------------------------------------------------- ST reference


def st_reference_sts(
    model_path: str | Path,
    data_dir: str | Path,
    tasks: Sequence[str] = STS_TASKS,
    text: str = "original",
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, float]:
    """Task -> "all" Spearman x100 computed with sentence-transformers only, as a cross-check.

    Independent of the harness: plain ``json`` parsing, ``SentenceTransformer(path).encode``
    without normalization, numpy cosine, ``scipy.stats.spearmanr``. Each distinct sentence is
    encoded once (the vectors do not depend on which other sentences share a batch).
    """
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path))
    out = {}
    for task in tasks:
        if task not in STS_TASKS:
            continue
        path = Path(data_dir) / sts_file(task, text)[0]
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        s1 = [r["sentence1"] for r in rows]
        s2 = [r["sentence2"] for r in rows]
        gold = np.array([float(r["score"]) for r in rows])
        uniq = sorted(set(s1) | set(s2))
        emb = model.encode(uniq, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=show_progress)
        pos = {s: i for i, s in enumerate(uniq)}
        a = emb[[pos[s] for s in s1]].astype(np.float64)
        b = emb[[pos[s] for s in s2]].astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[task] = float(spearmanr(cos, gold).statistic * 100)
    return out
