"""Evaluation callbacks a recipe can run during training (``eval.evaluators``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_evaluators", "load_sts_pairs", "sts_spearman"]


def load_sts_pairs(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``{"sentence1", "sentence2", "score"}`` JSON lines -> (s1, s2, scores)."""
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                s1.append(row["sentence1"])
                s2.append(row["sentence2"])
                scores.append(float(row["score"]))
            except KeyError as exc:
                raise ValueError(f"{path}:{lineno}: missing field {exc.args[0]!r}") from None
    if not scores:
        raise ValueError(f"{path}: no sentence pairs")
    return s1, s2, np.asarray(scores, dtype=np.float64)


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
