"""SentEval-style evaluation of a sentence encoder: STS (cosine vs gold) and transfer tasks.

    python -m benchmarks.senteval MODEL [--tasks T[,T] ...] [--data-dir DIR] [--out F.json]
        [--plot] [--text original|tokenized] [--batch-size 64] [--seed 1111]
        [--folds 10] [--inner-folds 10] [--mrpc-features senteval|concat] [--check-st]

MODEL is a spec for :func:`benchmarks.models.load_model` (a model dir or hub name,
``avg-word-vectors:PATH``, ``random-init:NAME``). Tasks (default ``sts``): ``sts12 sts13 sts14
sts15 sts16 stsb sickr``, ``mr cr subj mpqa sst2 trec mrpc``, and the groups ``sts``,
``transfer``, ``all``. Data come from the shared layout (``--data-dir`` or ``$TEXTCL_DATA``).

* **STS**: Spearman x100 between the cosine similarity of the two sentence embeddings and the
  gold score. As SimCSE describes: "all" (the headline) = one Spearman over all pairs of a set,
  "wmean" = mean of per-domain Spearman weighted by domain size, "mean" = unweighted; Pearson
  likewise. STS-B and SICK-R use their test split and have no domains (all = wmean = mean).
  Each distinct sentence of a set is encoded once. ``--text tokenized`` reads the Moses-tokenized
  text SentEval evaluates (``sts/senteval_tokenized``); there is no tokenized SICK, so SICK-R
  always uses the original text (the protocol says so).
* **Transfer**: frozen unit-length embeddings -> scikit-learn ``LogisticRegression`` (lbfgs), as
  SentEval's sklearn classifiers: MR/CR/SUBJ/MPQA nested stratified CV (``--folds`` outer; for
  each outer fold C is chosen by ``--inner-folds`` CV on its training part, grid 2^-2..2^3);
  SST-2 C (2^-2..2^3) chosen on dev, test accuracy; TREC and MRPC C (2^-1..2^5) chosen by
  ``--folds`` CV on train, then trained on all of train, test accuracy (and F1 for MRPC). MRPC
  features: SentEval's ``[|u-v|, u*v]`` (``--mrpc-features concat``: ``[u, v, |u-v|, u*v]``).
  Folds are seeded (``--seed``, default 1111 as SentEval), so runs repeat exactly.
* ``--check-st``: recomputes the STS "all" Spearman with sentence-transformers directly
  (:func:`st_reference_sts`) and records the largest difference (must be <= 0.05).

``--out`` writes every number as JSON (tasks, protocol, model, command, environment, seconds);
``--plot`` adds ``<out>_sts_scatter.png`` (cosine vs gold per STS set) and ``<out>_tasks.png``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._cli import cli_main
from benchmarks.common import (
    DataDirError,
    add_data_dir_argument,
    environment,
    finite_json,
    resolve_data_dir,
    write_report,
)
from benchmarks.models import CallableEncoder, Encoder, ObjectEncoder, load_model

__all__ = [
    "STS_TASKS",
    "TRANSFER_TASKS",
    "DataFormatError",
    "StsResult",
    "encode_unique",
    "evaluate_sts",
    "main",
    "parse_tasks",
    "run_senteval",
    "run_sts",
    "run_transfer",
    "st_reference_sts",
    "stratified_folds",
    "sts_metrics",
]

STS_TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
TRANSFER_TASKS = ("mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc")
TASK_GROUPS = {"sts": STS_TASKS, "transfer": TRANSFER_TASKS, "all": STS_TASKS + TRANSFER_TASKS}
CV_TASKS = ("mr", "cr", "subj", "mpqa")

# SentEval's sklearn grids: InnerKFoldClassifier / SplitClassifier use 2^-2..2^3,
# KFoldClassifier (TREC, MRPC) 2^-1..2^5 (`[2**t for t in range(-2, 4)]`, `range(-1, 6)`).
C_GRID_INNER = tuple(2.0**t for t in range(-2, 4))
C_GRID_KFOLD = tuple(2.0**t for t in range(-1, 6))
MAX_ITER = 1000
ST_TOLERANCE = 0.05

_STS_ORIGINAL = {
    **{t: f"sts/{t}/test.jsonl" for t in STS_TASKS[:5]},
    "stsb": "sts/stsb/test.jsonl",
    "sickr": "sts/sick/test.jsonl",
}
_STS_TOKENIZED = {
    **{t: f"sts/senteval_tokenized/{t}_test.jsonl" for t in STS_TASKS[:5]},
    "stsb": "sts/senteval_tokenized/stsb_test.jsonl",
    # No tokenized SICK exists in the shared data: SICK-R falls back to the original text.
}
_TRANSFER_FILES = {
    **{t: {"all": f"senteval/{t}/all.jsonl"} for t in CV_TASKS},
    "sst2": {
        "train": "senteval/sst2/train.jsonl.gz",
        "dev": "senteval/sst2/dev.jsonl",
        "test": "senteval/sst2/test.jsonl",
    },
    "trec": {"train": "senteval/trec/train.jsonl", "test": "senteval/trec/test.jsonl"},
    "mrpc": {"train": "senteval/mrpc/train.jsonl", "test": "senteval/mrpc/test.jsonl"},
}


class DataFormatError(ValueError):
    """A malformed or empty data file; the message starts with ``FILE:LINE`` (or ``FILE``)."""


# --------------------------------------------------------------------------- tasks and files


def parse_tasks(items: Iterable[str]) -> list[str]:
    """Task names and groups (comma or space separated) -> task list in canonical order.

    Raises ``ValueError`` naming the unknown task and listing the valid ones.
    """
    wanted: set[str] = set()
    for item in items:
        for name in filter(None, (s.strip().lower() for s in item.split(","))):
            if name in TASK_GROUPS:
                wanted.update(TASK_GROUPS[name])
            elif name in STS_TASKS or name in TRANSFER_TASKS:
                wanted.add(name)
            else:
                raise ValueError(
                    f"unknown task {name!r}; valid tasks: {', '.join(STS_TASKS + TRANSFER_TASKS)} "
                    f"(groups: {', '.join(TASK_GROUPS)})"
                )
    if not wanted:
        raise ValueError("no tasks given")
    return [t for t in TASK_GROUPS["all"] if t in wanted]


def sts_file(task: str, text: str = "original") -> tuple[str, str]:
    """(path relative to the data dir, text actually used) of an STS task's test pairs."""
    if task not in STS_TASKS:
        raise ValueError(f"unknown STS task {task!r}; valid: {', '.join(STS_TASKS)}")
    if text not in ("original", "tokenized"):
        raise ValueError(f"text must be 'original' or 'tokenized', got {text!r}")
    if text == "tokenized" and task in _STS_TOKENIZED:
        return _STS_TOKENIZED[task], "tokenized"
    return _STS_ORIGINAL[task], "original"


def required_files(tasks: Sequence[str], text: str = "original") -> list[str]:
    """Data files (relative paths) the tasks read."""
    files = []
    for task in tasks:
        if task in STS_TASKS:
            files.append(sts_file(task, text)[0])
        else:
            files.extend(_TRANSFER_FILES[task].values())
    return files


def _existing(data_dir: str | Path, relative: str) -> Path:
    path = Path(data_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}")
    return path


def read_jsonl(path: Path, fields: dict[str, tuple[type, ...]]) -> list[dict[str, Any]]:
    """JSON lines (``.gz`` allowed) whose rows must have ``fields`` of the given types.

    Raises :class:`DataFormatError` ``FILE:LINE: ...`` naming the field, or ``FILE: empty``.
    """
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for name, types in fields.items():
                if name not in row:
                    raise DataFormatError(f"{where}: missing field {name!r}")
                value = row[name]
                if not isinstance(value, types) or isinstance(value, bool):
                    expected = " or ".join(t.__name__ for t in types)
                    raise DataFormatError(
                        f"{where}: field {name!r} must be {expected}, got {type(value).__name__}"
                    )
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: empty file, no rows")
    return rows


# --------------------------------------------------------------------------- encoding


def _as_encoder(model: Any) -> Encoder:
    return model if isinstance(model, (ObjectEncoder, CallableEncoder)) else load_model(model)


def encode_unique(
    encoder: Encoder, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None
) -> np.ndarray:
    """Unit-length embeddings of ``texts`` (rows in their order), each distinct text encoded once."""
    index: dict[str, int] = {}
    rows = [index.setdefault(t, len(index)) for t in texts]
    vecs = encoder.encode(list(index), batch_size=batch_size, normalize=True, show_progress=show_progress)
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(index):
        raise ValueError(f"encoder returned shape {vecs.shape} for {len(index)} texts")
    return vecs[np.asarray(rows, dtype=np.int64)]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Normalized again here: an encoder is asked for unit vectors but not trusted to give them.
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / norms


# --------------------------------------------------------------------------- STS


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


# --------------------------------------------------------------------------- transfer


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


def run_senteval(model: Any, tasks: Sequence[str], data_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Both kinds of task for a spec, encoder object or callable; ``kwargs`` as run_sts/run_transfer."""
    encoder = _as_encoder(model)
    sts_keys = {"text", "batch_size", "show_progress"}
    out = run_sts(encoder, tasks, data_dir, **{k: v for k, v in kwargs.items() if k in sts_keys})
    transfer_kwargs = {k: v for k, v in kwargs.items() if k != "text"}
    out.update(run_transfer(encoder, tasks, data_dir, **transfer_kwargs))
    return out


def protocol(
    tasks: Sequence[str], text: str, seed: int, folds: int, inner_folds: int, mrpc_features: str
) -> dict[str, Any]:
    """What was measured and how, for the report and the printed header."""
    out: dict[str, Any] = {}
    if any(t in STS_TASKS for t in tasks):
        note = ""
        if text == "tokenized" and "sickr" in tasks:
            note = "; SICK-R: original text (no tokenized SICK in the data)"
        out["sts"] = (
            "STS: Spearman x100 of cosine similarity vs gold; 'all' (headline) = over the "
            "concatenated pairs of a set, 'wmean' = per-domain Spearman weighted by domain size, "
            "'mean' = unweighted; Pearson likewise; STS-B and SICK-R: test split, no domains; "
            f"{text} text{note}"
        )
    if any(t in TRANSFER_TASKS for t in tasks):
        out["transfer"] = {
            "summary": (
                "Transfer: accuracy x100 of sklearn LogisticRegression(lbfgs, L2, "
                f"max_iter={MAX_ITER}) on frozen unit-length embeddings, seed {seed}; "
                f"MR/CR/SUBJ/MPQA: {folds}-fold stratified CV, C per outer fold by "
                f"{inner_folds}-fold inner CV; SST-2: C on dev, test; TREC/MRPC: C by "
                f"{folds}-fold CV on train, refit, test (MRPC also F1)"
            ),
            "classifier": "sklearn.linear_model.LogisticRegression(solver='lbfgs', penalty='l2')",
            "features": "raw unit-length embeddings (not standardized), as SentEval",
            "seed": seed,
            "outer_folds": folds,
            "inner_folds": inner_folds,
            "C_grid_cv_and_split": list(C_GRID_INNER),
            "C_grid_kfold_trec_mrpc": list(C_GRID_KFOLD),
            "mrpc_features": "[|u-v|, u*v]" if mrpc_features == "senteval" else "[u, v, |u-v|, u*v]",
            "selection": "highest mean held-out accuracy; ties -> smaller C; no rounding",
        }
    return out


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


# --------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_report(report: dict[str, Any], tasks: Sequence[str]) -> None:
    """Protocol lines, then one table for STS and one for transfer tasks."""
    proto = report["protocol"]
    print(f"model: {report['model']}")
    if "sts" in proto:
        print(proto["sts"])
    if "transfer" in proto:
        print(proto["transfer"]["summary"] + "; MRPC features " + proto["transfer"]["mrpc_features"])
    sts = [t for t in tasks if t in STS_TASKS]
    if sts:
        print(f"\n{'task':<7} {'all':>7} {'wmean':>7} {'mean':>7} {'pearson':>8} {'pairs':>6} {'text':<9} {'s':>6}")
        for t in sts:
            m = report[t]
            print(
                f"{t:<7} {_fmt(m['spearman_all']):>7} {_fmt(m['spearman_wmean']):>7} "
                f"{_fmt(m['spearman_mean']):>7} {_fmt(m['pearson_all']):>8} {m['n_pairs']:>6} "
                f"{m['text']:<9} {report['seconds'][t]:>6.1f}"
            )
        print(f"{'avg':<7} {_fmt(float(np.mean([report[t]['spearman_all'] for t in sts]))):>7}")
    transfer = [t for t in tasks if t in TRANSFER_TASKS]
    if transfer:
        print(f"\n{'task':<7} {'acc':>7} {'dev':>7} {'f1':>7} {'C':>12} {'n':>6} {'enc s':>7} {'clf s':>7}")
        for t in transfer:
            m = report[t]
            c = m["C"]
            c_text = f"{min(c):g}..{max(c):g}" if isinstance(c, list) else f"{c:g}"
            n = sum(v for k, v in m.items() if k.startswith("n_") and k not in ("n_classes", "n_unique_texts"))
            print(
                f"{t:<7} {_fmt(m['accuracy']):>7} {_fmt(m['dev_accuracy']):>7} {_fmt(m.get('f1')):>7} "
                f"{c_text:>12} {n:>6} {m['encode_seconds']:>7.1f} {m['classify_seconds']:>7.1f}"
            )
        bad = sum(report[t]["not_converged"] for t in transfer)
        if bad:
            print(f"warning: {bad} logistic regression fits stopped at max_iter={MAX_ITER}")
        print(f"{'avg':<7} {np.mean([report[t]['accuracy'] for t in transfer]):>7.2f}")


def write_sts_scatter(results: Sequence[StsResult], png: Path) -> None:
    """One panel per STS set: predicted cosine against gold score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        ax.scatter(res.gold, res.cosine, s=3, alpha=0.25, linewidths=0)
        ax.set_title(f"{res.task}: Spearman {_fmt(res.metrics['spearman_all'])}", fontsize=10)
        ax.set_xlabel("gold score")
        ax.set_ylabel("cosine")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_task_bars(report: dict[str, Any], tasks: Sequence[str], png: Path) -> None:
    """Bar chart of the headline metric of every task (STS "all" Spearman, transfer accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [
        report[t]["spearman_all"] if t in STS_TASKS else report[t]["accuracy"] for t in tasks
    ]
    values = [math.nan if v is None else v for v in values]
    colors = ["tab:blue" if t in STS_TASKS else "tab:orange" for t in tasks]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(tasks) + 1.5), 4))
    bars = ax.bar(tasks, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("STS: Spearman x100 ('all')\ntransfer: accuracy %")
    name = "/".join(Path(report["model"]).parts[-2:]) if "/" in report["model"] else report["model"]
    ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.senteval", description=__doc__.split("\n")[0])
    p.add_argument("model", help="model dir / hub name, avg-word-vectors:PATH or random-init:NAME")
    p.add_argument(
        "--tasks", nargs="+", default=["sts"],
        help="tasks or groups (sts, transfer, all), comma or space separated (default: sts)",
    )
    add_data_dir_argument(p)
    p.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", action="store_true", help="also write PNGs next to --out")
    p.add_argument("--text", choices=["original", "tokenized"], default="original", help="STS text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1111, help="CV fold seed (default 1111, as SentEval)")
    p.add_argument("--folds", type=int, default=10, help="outer CV folds (default 10)")
    p.add_argument("--inner-folds", type=int, default=10, help="inner CV folds (default 10)")
    p.add_argument("--mrpc-features", choices=["senteval", "concat"], default="senteval",
                   help="senteval: [|u-v|, u*v] (default); concat: [u, v, |u-v|, u*v]")
    p.add_argument("--check-st", action="store_true",
                   help="recompute STS 'all' Spearman with sentence-transformers and compare")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the tasks, print the table, write JSON / PNGs if asked."""
    wall = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    p = _parser()
    args = p.parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError as exc:
        p.error(str(exc))
    if args.plot and args.out is None:
        p.error("--plot needs --out")
    if args.batch_size < 1 or args.folds < 2 or args.inner_folds < 2:
        p.error("--batch-size must be >= 1 and --folds/--inner-folds >= 2")
    sts_tasks = [t for t in tasks if t in STS_TASKS]
    if args.check_st and not sts_tasks:
        p.error("--check-st needs at least one STS task")
    if args.check_st and args.model.partition(":")[0] in ("avg-word-vectors", "random-init"):
        p.error("--check-st needs a model dir or hub name that sentence-transformers can load")
    data_dir = resolve_data_dir(args.data_dir, *required_files(tasks, args.text))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from textcl.encoders import ModelLoadError

    try:
        encoder = load_model(args.model)
    except ModelLoadError:
        raise  # one line already, naming the model: cli_main prints it
    except (OSError, EOFError, ValueError) as exc:  # avg-word-vectors: a missing or malformed vectors file
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise DataDirError(f"cannot load model {args.model!r}: {first}") from None
    show = not args.no_progress

    report: dict[str, Any] = {
        "model": args.model,
        "command": "python -m benchmarks.senteval " + shlex.join(argv),
        "protocol": protocol(tasks, args.text, args.seed, args.folds, args.inner_folds, args.mrpc_features),
        "environment": environment(("scikit-learn", "scipy")),
        "seconds": {},
    }
    seconds = report["seconds"]
    total = time.perf_counter()
    sts_results: list[StsResult] = []
    try:
        for task in tasks:
            start = time.perf_counter()
            if task in STS_TASKS:
                res = evaluate_sts(encoder, task, data_dir, args.text, args.batch_size, show)
                sts_results.append(res)
                report[task] = res.metrics
            else:
                report[task] = run_transfer(
                    encoder, [task], data_dir, args.seed, folds=args.folds,
                    inner_folds=args.inner_folds, batch_size=args.batch_size,
                    show_progress=show, mrpc_features=args.mrpc_features,
                )[task]
            seconds[task] = time.perf_counter() - start
    except (DataFormatError, FileNotFoundError) as exc:
        raise DataDirError(str(exc)) from None
    seconds["total"] = time.perf_counter() - total
    report["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_report(report, tasks)

    ok = True
    if args.check_st:
        start = time.perf_counter()
        ref = st_reference_sts(args.model, data_dir, sts_tasks, args.text, args.batch_size, show)
        seconds["check_st"] = time.perf_counter() - start
        diffs = {t: abs(ref[t] - report[t]["spearman_all"]) for t in sts_tasks}
        worst = max(diffs.values())
        ok = worst <= ST_TOLERANCE
        report["check_st"] = {
            "reference": "SentenceTransformer(path).encode + numpy cosine + scipy.stats.spearmanr",
            "sentence_transformers_spearman_all": ref,
            "abs_diff": diffs,
            "max_abs_diff": worst,
            "tolerance": ST_TOLERANCE,
            "ok": ok,
        }
        print(
            f"\ncheck vs sentence-transformers ('all' Spearman): max |diff| = {worst:.2e} "
            f"({'ok' if ok else 'FAIL'}, tolerance {ST_TOLERANCE}) in {seconds['check_st']:.1f} s"
        )
    # Everything from argument parsing on: model loading, tasks, the ST check.
    seconds["wall"] = time.perf_counter() - wall
    print(f"tasks: {seconds['total']:.1f} s, wall (with model loading and checks): {seconds['wall']:.1f} s")
    if args.out is not None:
        write_report(args.out, finite_json(report))
        print(f"wrote {args.out}")
        if args.plot:
            pngs = []
            if sts_results:
                pngs.append(args.out.with_name(args.out.stem + "_sts_scatter.png"))
                write_sts_scatter(sts_results, pngs[-1])
            pngs.append(args.out.with_name(args.out.stem + "_tasks.png"))
            write_task_bars(report, tasks, pngs[-1])
            for png in pngs:
                print(f"wrote {png}")
    if not ok:
        raise SystemExit(1)
    return finite_json(report)


if __name__ == "__main__":
    main()
