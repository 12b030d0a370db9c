"""Evaluation callbacks a recipe can run during training (``eval.evaluators``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textcl.data_files import json_object_lines

__all__ = ["StsPairs", "build_evaluators", "load_sts_pairs", "read_sts_file", "sts_spearman"]


@dataclass
class StsPairs:
    """Sentence pairs with gold scores, and each pair's sub-set (``domain``) where the file has one."""

    s1: list[str]
    s2: list[str]
    scores: np.ndarray
    domains: list[str | None]

    def __len__(self) -> int:
        return len(self.scores)


def read_sts_file(path: str | Path) -> StsPairs:
    """Read ``{"sentence1", "sentence2", "score"[, "domain"]}`` JSON lines (``.gz`` allowed).

    Blank lines are skipped. A malformed row raises ``ValueError("FILE:LINE: ...")`` naming the
    field (missing, not a string, score not a finite number); an empty file raises too.
    """
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    domains: list[str | None] = []
    for where, row in json_object_lines(path, error=ValueError):
        for field in ("sentence1", "sentence2", "score"):
            if field not in row:
                raise ValueError(f"{where}: missing field {field!r}")
        for field in ("sentence1", "sentence2"):
            if not isinstance(row[field], str):
                raise ValueError(
                    f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}"
                )
        score = row["score"]
        # bool is an int subclass; a string like "3.2" is accepted as the TSV sources had it.
        try:
            value = float(score) if not isinstance(score, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{where}: field 'score' is not a finite number: {score!r}")
        domain = row.get("domain")
        s1.append(row["sentence1"])
        s2.append(row["sentence2"])
        scores.append(value)
        domains.append(None if domain is None else str(domain))
    if not scores:
        raise ValueError(f"{path}: empty file, no sentence pairs")
    return StsPairs(s1, s2, np.asarray(scores, dtype=np.float64), domains)


def load_sts_pairs(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``{"sentence1", "sentence2", "score"}`` JSON lines -> (s1, s2, scores); see :func:`read_sts_file`."""
    pairs = read_sts_file(path)
    return pairs.s1, pairs.s2, pairs.scores


def sts_spearman(embedder: Any, s1: list[str], s2: list[str], gold: np.ndarray, batch_size: int = 64) -> float:
    """Spearman x 100 between cosine similarity of the pair embeddings and gold."""
    from scipy.stats import spearmanr

    uniq = list(dict.fromkeys(s1 + s2))  # embed repeated sentences once
    vecs = embedder.encode(uniq, batch_size=batch_size, normalize=True, show_progress=False)
    index = {s: i for i, s in enumerate(uniq)}
    a = vecs[[index[s] for s in s1]]
    b = vecs[[index[s] for s in s2]]
    cos = (a * b).sum(axis=1)
    return float(spearmanr(cos, gold).statistic * 100)


def _sts_evaluator(path: str, prefix: str, batch_size: int) -> Callable[[Any], dict[str, float]]:
    s1, s2, gold = load_sts_pairs(path)

    def run(method: Any) -> dict[str, float]:
        from textcl.embed import Embedder

        encoder = getattr(method, "encoder", None)
        if encoder is None:
            raise TypeError(f"the sts evaluator needs a text method with an .encoder, got {type(method).__name__}")
        return {f"{prefix}_spearman": sts_spearman(Embedder(encoder), s1, s2, gold, batch_size)}

    return run


def build_evaluators(configs: list[Any]) -> dict[str, Callable[[Any], dict[str, float]]]:
    """Recipe ``eval.evaluators`` -> name -> callable(method) -> metrics."""
    out = {}
    for cfg in configs:
        prefix = cfg.prefix or Path(cfg.path).name.split(".")[0]
        if cfg.name == "sts":
            out[prefix] = _sts_evaluator(cfg.path, prefix, cfg.batch_size)
        else:  # pragma: no cover - the recipe schema rejects other names
            raise ValueError(f"unknown evaluator {cfg.name!r}")
    return out
