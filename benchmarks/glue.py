"""GLUE dev-set scores of a sentence encoder: fine-tuned, or frozen with a linear probe.

    python -m benchmarks.glue MODEL [--tasks cola,sst2,mrpc,stsb,rte,wnli,qqp,qnli]
        [--data-dir DIR] [--mode finetune|probe] [--max-train-samples N]
        [--max-eval-samples N] [--epochs E] [--lr LR] [--batch-size B]
        [--max-seq-length L] [--seed S] [--split-seed S] [--probe-c C]
        [--out F.json] [--plot]

* ``finetune`` (default): ``AutoModelForSequenceClassification`` on MODEL's transformer
  weights (a textcl / sentence-transformers directory, a plain HF directory, or a hub name;
  ``sentence-transformers/all-MiniLM-L6-v2`` resolves offline to the packaged copy), sentence
  pairs as one cross-encoded input, trained with the Hugging Face ``Trainer`` (AdamW, linear
  decay, no warmup, weight decay 0: the ``run_glue.py`` recipe, so numbers compare with it).
  STS-B is a regression (1 output, MSE).
* ``probe``: frozen, L2-normalised embeddings -> StandardScaler + LogisticRegression (STS-B:
  Ridge); pair tasks use ``[u, v, |u-v|, u*v]``. C (alpha) is picked from a small grid on a
  seeded 10% held-out part of train by the task's main metric, then refit on all of train;
  ``--probe-c`` fixes it instead.

Scores are on the GLUE dev sets, x100, computed with scikit-learn / scipy (the same formulas
as ``evaluate.load("glue")``, which needs the hub): CoLA Matthews corr; MRPC/QQP F1 and
accuracy; STS-B Pearson and Spearman; the rest accuracy. Data layout: ``DIR/glue/<task>/``
as in ``../shared/data/README.md``. QQP (only a 23,497-row *train* subset) and QNLI (only
dev) are split 80/20 by a seeded hash of the row index, and the protocol says so; MNLI is
not in the data.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report

SPLIT_DEV_FRACTION = 0.2
PROBE_HOLDOUT_FRACTION = 0.1
# Grids run from the strongest to the weakest regularisation (ties go to the first). They
# are wide because with MiniLM the best value sat on the edge of narrower grids: with 1536
# standardised pair features MRPC, RTE and QNLI kept improving down to C=0.001, STS-B
# peaked at alpha=1e4; the fits cost little next to encoding.
PROBE_C_GRID = (1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_ALPHA_GRID = (1e5, 1e4, 1e3, 100.0, 10.0, 1.0)
METRIC_LABELS = {
    "matthews_correlation": "Matthews corr",
    "f1": "F1",
    "accuracy": "accuracy",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
}


class GlueError(SystemExit):
    """A user error (task, data file, row): exit status 2 with a one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.code = 2


@dataclass(frozen=True)
class Task:
    """One GLUE task: where its rows are, which fields hold text, how labels read and score."""

    name: str
    display: str
    fields: tuple[str, ...]
    metrics: tuple[str, ...]
    train: str | None = None
    dev: str | None = None
    split_from: str | None = None  # one file split 80/20 into train / eval (QQP, QNLI)
    label_names: tuple[str, ...] = ()  # string labels, in GLUE's id order
    regression: bool = False
    note: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        """Paths under the data directory this task reads."""
        return tuple(f for f in (self.train, self.dev, self.split_from) if f)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cola", "CoLA", ("sentence",), ("matthews_correlation",), "glue/cola/train.jsonl", "glue/cola/dev.jsonl"),
        Task("sst2", "SST-2", ("sentence",), ("accuracy",), "glue/sst2/train.jsonl.gz", "glue/sst2/dev.jsonl"),
        Task("mrpc", "MRPC", ("sentence1", "sentence2"), ("f1", "accuracy"), "glue/mrpc/train.jsonl", "glue/mrpc/dev.jsonl"),
        Task(
            "stsb", "STS-B", ("sentence1", "sentence2"), ("pearson", "spearmanr"),
            "glue/stsb/train.jsonl", "glue/stsb/dev.jsonl", regression=True,
        ),
        Task(
            "rte", "RTE", ("sentence1", "sentence2"), ("accuracy",), "glue/rte/train.jsonl", "glue/rte/dev.jsonl",
            label_names=("entailment", "not_entailment"),
        ),
        Task(
            "wnli", "WNLI", ("sentence1", "sentence2"), ("accuracy",), "glue/wnli/train.jsonl", "glue/wnli/dev.jsonl",
            note="WNLI dev is adversarial to train (dev hypotheses reuse train sentences with the opposite "
            "label): predicting the dev majority class (56.3%) is the usual result, BERT-style models rarely "
            "beat it, and a model that fits train can score far below it",
        ),
        Task(
            "qqp", "QQP", ("question1", "question2"), ("f1", "accuracy"), split_from="glue/qqp/train_subset.jsonl.gz",
            note="the data has only a 23,497-row subset of GLUE QQP *train* (no GLUE dev), so train and eval are "
            "a seeded 80/20 split of it: not comparable with published QQP dev numbers",
        ),
        Task(
            "qnli", "QNLI", ("question", "sentence"), ("accuracy",), split_from="glue/qnli/dev.jsonl",
            label_names=("entailment", "not_entailment"),
            note="the data has only GLUE QNLI *dev* (no train), so train and eval are a seeded 80/20 split of "
            "dev: not comparable with published QNLI dev numbers",
        ),
    )
}

_ALIASES = {"sst": "sst2", "sts": "stsb", "sts-b": "stsb", "sst-2": "sst2"}
_ABSENT = {
    "mnli": "MNLI (train, dev matched/mismatched) is not in the shared data: no complete public copy "
    "could be found (see 'Not included' in the data README)",
    "ax": "the GLUE diagnostic set (AX) has test labels only, which are not public",
}


# --------------------------------------------------------------------------- metrics


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


METRICS = {
    "matthews_correlation": matthews,
    "f1": f1,
    "accuracy": accuracy,
    "pearson": pearson,
    "spearmanr": spearman,
}


def score(task: Task, y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float | None]:
    """The task's GLUE metrics, x100 and rounded to 3 decimals (None where undefined)."""
    out: dict[str, float | None] = {}
    for name in task.metrics:
        value = METRICS[name](y_true, y_pred)
        out[name] = None if math.isnan(value) else round(100 * value, 3)
    return out


# --------------------------------------------------------------------------- data


@dataclass
class Split:
    """Texts (one tuple of fields per row) and labels of one split."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, index: Sequence[int]) -> Split:
        """The rows at ``index``, in that order."""
        return Split([self.texts[i] for i in index], self.labels[np.asarray(index, dtype=np.int64)])


@dataclass
class TaskData:
    """Train and eval splits of a task and how they were made (for the protocol)."""

    task: Task
    train: Split
    eval: Split
    source: list[str] = field(default_factory=list)


def parse_tasks(spec: str) -> list[Task]:
    """Tasks from a comma list ("all" = every available one); absent/unknown ones raise GlueError."""
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names or names == ["all"]:
        return list(TASKS.values())
    out: list[Task] = []
    available = ", ".join(TASKS)
    for raw in names:
        name = _ALIASES.get(raw, raw)
        absent = next((why for key, why in _ABSENT.items() if name.startswith(key)), None)
        if absent is not None:
            raise GlueError(f"task {raw!r} is not available: {absent}. Available tasks: {available}")
        if name not in TASKS:
            raise GlueError(f"unknown task {raw!r}. Available tasks: {available}")
        if TASKS[name] not in out:
            out.append(TASKS[name])
    return out


def check_files(data_dir: Path, tasks: Sequence[Task]) -> None:
    """Fail before any model loads if a task's data file is missing, naming every such file."""
    missing = [f"{data_dir / f} (task {t.name})" for t in tasks for f in t.files if not (data_dir / f).is_file()]
    if missing:
        raise GlueError(f"missing GLUE data file(s): {'; '.join(missing)}")


def _label(task: Task, value: Any) -> float | int | None:
    """A row's label as a number, or None if it is not a valid label for ``task``."""
    if isinstance(value, bool):
        return None
    if task.regression:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 5
        return float(value) if ok else None
    if isinstance(value, str) and value in task.label_names:
        return task.label_names.index(value)
    n_classes = max(len(task.label_names), 2)
    return value if isinstance(value, int) and 0 <= value < n_classes else None


def read_rows(path: Path, task: Task) -> Split:
    """All rows of a ``.jsonl`` / ``.jsonl.gz`` file; a malformed row raises GlueError naming file:line."""
    opener = gzip.open if path.suffix == ".gz" else open
    texts: list[tuple[str, ...]] = []
    labels: list[float] = []
    expected = "a number in [0, 5]" if task.regression else " or ".join(map(repr, task.label_names or (0, 1)))
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise GlueError(f"{where}: not a JSON object ({err.msg})") from None
                if not isinstance(row, dict):
                    raise GlueError(f"{where}: not a JSON object")
                missing = [f for f in (*task.fields, "label") if f not in row]
                if missing:
                    raise GlueError(f"{where}: row lacks field(s) {', '.join(missing)} ({task.display})")
                bad = [f for f in task.fields if not isinstance(row[f], str)]
                if bad:
                    raise GlueError(f"{where}: field(s) {', '.join(bad)} must be strings")
                label = _label(task, row["label"])
                if label is None:
                    raise GlueError(f"{where}: bad label {row['label']!r} for {task.display} (expected {expected})")
                texts.append(tuple(row[f] for f in task.fields))
                labels.append(label)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise GlueError(f"{path}: cannot read ({err})") from None
    if not texts:
        raise GlueError(f"{path}: no rows")
    dtype = np.float32 if task.regression else np.int64
    return Split(texts, np.asarray(labels, dtype=dtype))


def in_dev_part(index: int, seed: int, fraction: float = SPLIT_DEV_FRACTION) -> bool:
    """Whether data row ``index`` (0-based) goes to the eval part of a seeded hash split.

    Row i is eval iff the first 8 bytes of sha1(f"{seed}:{i}"), read as a big-endian integer
    and divided by 2**64, are below ``fraction``: deterministic, reproducible anywhere, and
    independent of the other rows, so it needs no shuffling state.
    """
    digest = hashlib.sha1(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def hash_split(rows: Split, seed: int) -> tuple[Split, Split]:
    """(train, eval) parts of ``rows`` by :func:`in_dev_part`."""
    dev = [i for i in range(len(rows)) if in_dev_part(i, seed)]
    dev_set = set(dev)
    train = [i for i in range(len(rows)) if i not in dev_set]
    return rows.take(train), rows.take(dev)


def subsample(split: Split, n: int | None, seed: int) -> Split:
    """A seeded random subset of ``n`` rows (in file order); the split itself if n is None or >= its size."""
    if n is None or n >= len(split):
        return split
    index = np.sort(np.random.default_rng(seed).choice(len(split), size=n, replace=False))
    return split.take(index.tolist())


def load_task(
    data_dir: Path,
    task: Task,
    *,
    split_seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Read (and for QQP/QNLI, split) a task; optional seeded subsets of train and eval."""
    source: list[str] = []
    if task.split_from:
        rows = read_rows(data_dir / task.split_from, task)
        train, dev = hash_split(rows, split_seed)
        source.append(
            f"seeded 80/20 split of {task.split_from} ({len(rows)} rows): row i is eval iff "
            f"int(sha1('{split_seed}:i')[:8 bytes]) / 2**64 < {SPLIT_DEV_FRACTION} -> {len(train)} train / "
            f"{len(dev)} eval"
        )
    else:
        assert task.train and task.dev
        train = read_rows(data_dir / task.train, task)
        dev = read_rows(data_dir / task.dev, task)
        source.append(f"GLUE dev ({len(dev)} rows), train {len(train)} rows")
    if max_train is not None and max_train < len(train):
        source.append(f"{max_train} of {len(train)} train rows (seeded random subset, seed {seed})")
        train = subsample(train, max_train, seed)
    if max_eval is not None and max_eval < len(dev):
        source.append(f"{max_eval} of {len(dev)} eval rows (seeded random subset, seed {split_seed})")
        dev = subsample(dev, max_eval, split_seed)
    return TaskData(task, train, dev, source)


# --------------------------------------------------------------------------- probe


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


def probe(
    encoder: Encoder, data: TaskData, *, seed: int = 0, batch_size: int = 64, strength: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the linear probe on train features and predict eval; returns (predictions, details)."""
    task = data.task
    x_train, x_eval = features(encoder, [data.train, data.eval], batch_size)
    y_train = data.train.labels
    param = "alpha" if task.regression else "C"
    grid = PROBE_ALPHA_GRID if task.regression else PROBE_C_GRID
    details: dict[str, Any] = {"feature_dim": int(x_train.shape[1])}
    if strength is None:
        # Pick C / alpha on a seeded held-out part of train; eval stays untouched.
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(y_train))
        n_hold = max(1, int(round(PROBE_HOLDOUT_FRACTION * len(order))))
        hold, fit = order[:n_hold], order[n_hold:]
        main_metric = METRICS[task.metrics[0]]
        scores = {}
        for value in grid:
            model = _probe_model(task.regression, value, seed).fit(x_train[fit], y_train[fit])
            s = main_metric(y_train[hold], model.predict(x_train[hold]))
            scores[value] = -math.inf if math.isnan(s) else s
        strength = max(grid, key=lambda v: scores[v])  # ties: the first, i.e. the strongest regularisation
        details["selection"] = {str(v): round(100 * s, 3) for v, s in scores.items()}
        details["selection_holdout_rows"] = int(n_hold)
    details[param] = strength
    model = _probe_model(task.regression, strength, seed).fit(x_train, y_train)
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


# --------------------------------------------------------------------------- fine-tune

# Families whose position table has 2 slots before the first real position (padding offset).
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "bart"}


def transformer_ref(model: str) -> str:
    """Where the HF transformer of ``model`` lives: the ST directory's Transformer module, else itself."""
    from textcl.encoders import resolve_model_path

    ref = resolve_model_path(model)
    modules = Path(ref) / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GlueError(f"{modules}: not valid JSON ({err.msg})") from None
        sub = next((m.get("path", "") for m in entries if str(m.get("type", "")).endswith("Transformer")), None)
        if sub is None:
            raise GlueError(f"{modules}: no Transformer module, so no transformer weights to fine-tune")
        ref = str(Path(ref) / sub) if sub else ref
    elif Path(model).expanduser().exists() and not (Path(ref) / "config.json").is_file():
        raise GlueError(f"{model}: neither a sentence-transformers directory (modules.json) nor an HF one (config.json)")
    return ref


def finetune(
    ref: str,
    data: TaskData,
    *,
    epochs: float = 3.0,
    lr: float = 2e-5,
    batch_size: int = 32,
    max_seq_length: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fine-tune ``AutoModelForSequenceClassification`` from ``ref`` on train, predict eval.

    Returns (labels, predictions, details), labels in the order the Trainer evaluated: with
    length-grouped batches it also reorders the eval set, so the caller must not pair the
    predictions with ``data.eval.labels``.

    Why the HF ``Trainer`` and not a plain loop: its optimiser, schedule and seeding are
    the ``run_glue.py`` protocol people compare against, and it picks GPU/CPU by itself.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    task = data.task
    set_seed(seed)  # before the head is initialised, so the run is reproducible
    tokenizer = AutoTokenizer.from_pretrained(ref)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized weights" warning: recorded in details instead
    try:
        # float32 whatever the checkpoint's dtype: training plain fp16/bf16 weights (no master
        # copy) loses small updates, and transformers 5 would keep a half-precision dtype.
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            ref, num_labels=1 if task.regression else 2, output_loading_info=True, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    config = model.config
    limit = int(getattr(config, "max_position_embeddings", max_seq_length) or max_seq_length)
    if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES:
        limit -= 2
    length = min(max_seq_length, limit)

    def encode(split: Split) -> list[dict[str, Any]]:
        columns = [list(c) for c in zip(*split.texts)]
        enc = tokenizer(*columns, truncation=True, max_length=length)
        label_dtype = float if task.regression else int
        return [
            {**{k: enc[k][i] for k in enc.keys()}, "labels": label_dtype(y)} for i, y in enumerate(split.labels)
        ]

    train_rows, eval_rows = encode(data.train), encode(data.eval)
    with tempfile.TemporaryDirectory(prefix="textcl-glue-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            learning_rate=lr,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=2 * batch_size,
            weight_decay=0.0,
            warmup_steps=0,
            lr_scheduler_type="linear",
            optim="adamw_torch",  # fused AdamW is not on every CPU build
            # Batches of similar length: far less padding, which is most of the cost on CPU.
            train_sampling_strategy="group_by_length",
            seed=seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        result = trainer.train()
        output = trainer.predict(eval_rows)
    logits = output.predictions
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
    preds = logits.reshape(-1) if task.regression else logits.argmax(axis=-1)
    # The Trainer's length-grouped eval sampler shuffles rows: score against the labels it
    # returns, which are in its order. Check they are the eval labels, permuted, and nothing else.
    labels = np.asarray(output.label_ids).reshape(-1)
    expected = np.asarray(data.eval.labels).reshape(-1)
    if labels.shape != expected.shape or not np.allclose(np.sort(labels), np.sort(expected)):
        raise RuntimeError(f"{task.display}: Trainer.predict returned labels that are not the eval labels")
    labels = labels.astype(expected.dtype)
    details = {
        "max_seq_length": length,
        "train_loss": round(float(result.training_loss), 5),
        "steps": int(result.global_step),
        "newly_initialized": sorted(loading.get("missing_keys", [])),
        "device": str(trainer.args.device),
    }
    return labels, preds, details


def finetune_protocol(args: argparse.Namespace, details: dict[str, Any], task: Task) -> str:
    """How the model was fine-tuned, for the protocol line."""
    kind = "regression (1 output, MSE)" if task.regression else "2-way classification"
    inputs = "sentence pair cross-encoded" if len(task.fields) == 2 else "single sentence"
    return (
        f"fine-tune AutoModelForSequenceClassification ({kind}, {inputs}) with HF Trainer: "
        f"{args.epochs:g} epochs, lr {args.lr:g}, batch {args.batch_size or 32}, AdamW, linear decay, no warmup, "
        f"max_seq_length {details['max_seq_length']}, length-grouped batches, seed {args.seed}"
    )


# --------------------------------------------------------------------------- running


def majority_rate(labels: np.ndarray) -> float:
    """Share of the most common label (x100): what always predicting it scores in accuracy."""
    counts = np.bincount(labels.astype(np.int64))
    return round(100 * counts.max() / counts.sum(), 3)


def protocol_line(task: Task, data: TaskData, how: str) -> str:
    """One line a reader needs to interpret a task's numbers."""
    metrics = " and ".join(METRIC_LABELS[m] for m in task.metrics)
    where = "a held-out 20% split (see below)" if task.split_from else "GLUE dev"
    parts = [f"{task.display}: {metrics} x100 on {where}", how, *data.source]
    if task.note:
        parts.append(task.note)
    return "; ".join(parts)


def run_task(
    args: argparse.Namespace, data: TaskData, encoder: Encoder | None, ref: str | None
) -> tuple[dict[str, float | None], str, dict[str, Any]]:
    """Scores, protocol line and details of one task in the mode ``args`` asks for."""
    task = data.task
    y_true = data.eval.labels
    if args.mode == "probe":
        assert encoder is not None
        preds, details = probe(encoder, data, seed=args.seed, batch_size=args.batch_size or 64, strength=args.probe_c)
        how = probe_protocol(task, details, fixed=args.probe_c is not None)
    else:
        assert ref is not None
        y_true, preds, details = finetune(
            ref, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size or 32,
            max_seq_length=args.max_seq_length, seed=args.seed,
        )
        how = finetune_protocol(args, details, task)
    details.update(n_train=len(data.train), n_eval=len(data.eval))
    if not task.regression:
        details["eval_majority_rate"] = majority_rate(data.eval.labels)
    return score(task, y_true, preds), protocol_line(task, data, how), details


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2f}"


def print_table(report: dict[str, Any], tasks: Sequence[Task]) -> None:
    """One row per task, then the protocol lines."""
    print(f"{'task':<7} {'metrics (x100)':<34} {'train':>7} {'eval':>6} {'seconds':>8}")
    for t in tasks:
        d = report["details"][t.name]
        values = ", ".join(f"{METRIC_LABELS[m]} {_fmt(report[t.name].get(m))}" for m in t.metrics)
        print(f"{t.display:<7} {values:<34} {d['n_train']:>7} {d['n_eval']:>6} {report['seconds'][t.name]:>8.1f}")
    print("protocol:")
    for t in tasks:
        print(f"  {report['protocol'][t.name]}")


def write_plot(report: dict[str, Any], tasks: Sequence[Task], png: Path) -> None:
    """Bar chart: every metric of every task, x100."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for t in tasks:
        for m in t.metrics:  # the task's order: a report read back from JSON has sorted keys
            v = report[t.name].get(m)
            labels.append(f"{t.display}\n{METRIC_LABELS[m]}")
            values.append(math.nan if v is None else v)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels)), 4))
    bars = ax.bar(range(len(values)), values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("score x100")
    ax.set_ylim(min(0.0, *(v for v in values if not math.isnan(v))) if values else 0.0, 100)
    name = "/".join(Path(str(report["model"])).parts[-2:])  # packaged models end in a bare "model"
    split = [t.display for t in tasks if t.split_from]
    note = f" ({', '.join(split)}: held-out 20% split)" if split else ""
    ax.set_title(f"GLUE dev{note}, {report['mode']}: {name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.glue", description=__doc__.split("\n")[0])
    p.add_argument("model", help="model dir (textcl / sentence-transformers / HF) or hub name; probe mode also "
                   "takes benchmarks.models specs (avg-word-vectors:PATH, random-init:PATH)")
    p.add_argument("--tasks", default="all", help=f"comma list of {','.join(TASKS)} (default: all)")
    add_data_dir_argument(p)
    p.add_argument("--mode", choices=["finetune", "probe"], default="finetune")
    p.add_argument("--max-train-samples", type=int, default=None, help="seeded random subset of train per task")
    p.add_argument("--max-eval-samples", type=int, default=None, help="seeded random subset of eval per task")
    p.add_argument("--epochs", type=float, default=3.0, help="finetune epochs (default 3)")
    p.add_argument("--lr", type=float, default=2e-5, help="finetune learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=int, default=None, help="finetune batch (default 32); probe encode batch (64)")
    p.add_argument("--max-seq-length", type=int, default=128, help="finetune truncation (default 128); probe "
                   "uses the encoder's own")
    p.add_argument("--seed", type=int, default=0, help="training seed: init, order, train subset, probe hold-out")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the QQP/QNLI 80/20 split and of the eval "
                   "subset, kept apart from --seed so that runs with other seeds share one eval set")
    p.add_argument("--probe-c", type=float, default=None, help="fix the probe's C (Ridge alpha for STS-B) "
                   "instead of picking it on held-out train")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the tasks, print the table; write JSON / PNG if asked."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and args.out is None:
        parser.error("--plot needs --out")
    for name in ("max_train_samples", "max_eval_samples", "batch_size", "max_seq_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.epochs <= 0 or args.lr <= 0 or (args.probe_c is not None and args.probe_c <= 0):
        parser.error("--epochs, --lr and --probe-c must be > 0")
    tasks = parse_tasks(args.tasks)
    data_dir = resolve_data_dir(args.data_dir)
    check_files(data_dir, tasks)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    env = environment(("scikit-learn", "scipy", "accelerate"))
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    encoder: Encoder | None = None
    ref: str | None = None
    t0 = time.perf_counter()
    if args.mode == "probe":
        encoder = load_encoder(args.model)
        model_name = str(getattr(encoder, "name", args.model))
    else:
        ref = transformer_ref(args.model)
        model_name = args.model
    seconds["load_model"] = round(time.perf_counter() - t0, 2)
    report: dict[str, Any] = {}
    protocol: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    for task in tasks:
        t0 = time.perf_counter()
        data = load_task(
            data_dir, task, split_seed=args.split_seed, max_train=args.max_train_samples,
            max_eval=args.max_eval_samples, seed=args.seed,
        )
        print(f"{task.display}: {len(data.train)} train / {len(data.eval)} eval rows ({args.mode})", flush=True)
        report[task.name], protocol[task.name], details[task.name] = run_task(args, data, encoder, ref)
        seconds[task.name] = round(time.perf_counter() - t0, 2)
    seconds["total"] = round(time.perf_counter() - started, 2)
    env["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report.update(
        protocol=protocol,
        details=details,
        mode=args.mode,
        scale="x100",
        model=model_name,
        model_path=ref,
        command="python -m benchmarks.glue " + shlex.join(argv),
        environment=env,
        seconds=seconds,
    )
    print(f"model: {model_name}  mode: {args.mode}")
    print_table(report, tasks)
    if args.out is not None:
        write_report(args.out, report)
        print(f"wrote {args.out}")
        if args.plot:
            png = args.out.with_suffix(".png")
            write_plot(report, tasks, png)
            print(f"wrote {png}")
    return report


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        # GlueError / DataDirError carry code 2, so Python would exit without their message.
        if exc.code == 2 and exc.args and isinstance(exc.args[0], str):
            print(exc.args[0], file=sys.stderr)
        raise
