"""GLUE dev-set scores of a sentence encoder: fine-tuned, or frozen with a linear probe.

    python -m benchmarks.glue [NAME=]MODEL [[NAME=]MODEL ...]
        [--tasks cola,sst2,mrpc,stsb,rte,wnli,qqp,qnli] [--data-dir DIR]
        [--mode finetune|probe] [--max-train-samples N] [--max-eval-samples N]
        [--epochs E] [--lr LR] [--batch-size B] [--max-seq-length L]
        [--seed S | --seeds S1,S2,...] [--split-seed S] [--probe-c C]
        [--out F.json [--fresh]] [--plot]

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

Scores are on the GLUE dev sets, x100, computed by an ``evaluate`` metric module: the hub's
``evaluate.load("glue", task)`` when the hub is reachable, else the local copy
``benchmarks/glue_metric.py`` (same formulas, scikit-learn / scipy; STS-B in float64 where
the hub's casts to float32): CoLA Matthews corr; MRPC/QQP F1 and accuracy; STS-B Pearson
and Spearman; the rest accuracy. Data layout: ``DIR/glue/<task>/``
as in ``../shared/data/README.md``. QQP (only a 23,497-row *train* subset) and QNLI (only
dev) are split 80/20 by a seeded hash of the row index, and the protocol says so; MNLI is
not in the data.

Several models and seeds: every (model, task, seed) is one run; per model and task the
report gives the per-seed scores, their mean and sample standard deviation (ddof=1), and
for every model after the first the difference of means from the first. A run's seed sets
the head's init, the batch order and the ``--max-train-samples`` subset, so two models with
the same seed see the same data in the same order (paired). With ``--out`` the JSON is
rewritten after every run and a restart with the same settings skips the finished runs.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks._cli import cli_main
from benchmarks.common import add_data_dir_argument, environment, resolve_data_dir, write_report

# The formulas live with the evaluate module; re-exported for the probe's model selection.
from benchmarks.glue_scores import METRICS, accuracy, f1, matthews, pearson, spearman  # noqa: F401

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


#: The offline ``evaluate`` module of the GLUE metrics (see its docstring).
GLUE_METRIC_MODULE = Path(__file__).with_name("glue_metric.py")


@functools.cache
def glue_metric(task_name: str) -> Any:
    """The ``evaluate`` module scoring a task: the hub's "glue" when the hub is reachable, else
    :data:`GLUE_METRIC_MODULE` (loaded from its file, no network)."""
    import evaluate

    from textcl.model_location import _hub_reachable, _offline_env

    if not _offline_env() and _hub_reachable():
        try:
            return evaluate.load("glue", task_name)
        except Exception as exc:  # any hub failure: the local module has the same formulas
            print(f"note: evaluate.load('glue', {task_name!r}) failed ({type(exc).__name__}); "
                  f"using {GLUE_METRIC_MODULE.name}", file=sys.stderr)
    return evaluate.load(str(GLUE_METRIC_MODULE), config_name=task_name, keep_in_memory=True)


def score(task: Task, y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float | None]:
    """The task's GLUE metrics (:func:`glue_metric`), x100 and rounded to 3 decimals (None
    where undefined)."""
    result = glue_metric(task.name).compute(predictions=np.asarray(y_pred), references=np.asarray(y_true))
    out: dict[str, float | None] = {}
    for name in task.metrics:
        value = float(result[name])
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
    seed_text: str | None = None,
) -> TaskData:
    """Read (and for QQP/QNLI, split) a task; optional seeded subsets of train and eval.

    ``seed_text`` replaces "seed S" in the train-subset source line: with several seeds one
    protocol line describes every run, each drawing its subset with its own seed.
    """
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
        source.append(f"{max_train} of {len(train)} train rows (seeded random subset, {seed_text or f'seed {seed}'})")
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
    from textcl.encoders import ModelLoadError, locate_model

    try:
        ref = locate_model(model)  # a missing path, a half-installed dir, offline and not cached
    except ModelLoadError as err:
        raise GlueError(str(err)) from None
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
        PrinterCallback,
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
        # With tqdm off the Trainer prints its end-of-training metrics dict; the progress line
        # per run says what matters, and train_loss goes into details.
        trainer.remove_callback(PrinterCallback)
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


def seeds_phrase(seeds: Sequence[int]) -> str:
    """"seed 0" for one seed, "the run's seed, one of 0, 1, 2" for several: for protocol lines."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"the run's seed, one of {', '.join(map(str, seeds))}"


def finetune_protocol(
    args: argparse.Namespace, details: dict[str, Any], task: Task, seeds: Sequence[int] | None = None
) -> str:
    """How the model was fine-tuned, for the protocol line (``seeds`` defaults to ``[args.seed]``)."""
    kind = "regression (1 output, MSE)" if task.regression else "2-way classification"
    inputs = "sentence pair cross-encoded" if len(task.fields) == 2 else "single sentence"
    seeds = list(seeds) if seeds is not None else [args.seed]
    what = "seed" if len(seeds) == 1 else "seeds"
    sets = "head init, batch order" + (" and train subset" if args.max_train_samples else "")
    return (
        f"fine-tune AutoModelForSequenceClassification ({kind}, {inputs}) with HF Trainer: "
        f"{args.epochs:g} epochs ({details['steps']} optimizer steps), lr {args.lr:g}, batch {args.batch_size or 32}, "
        f"AdamW, linear decay, no warmup, max_seq_length {details['max_seq_length']}, length-grouped batches, "
        f"{what} {', '.join(map(str, seeds))} ({sets})"
    )


# --------------------------------------------------------------------------- running one task


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
    args: argparse.Namespace, data: TaskData, encoder: Encoder | None, ref: str | None, seed: int | None = None
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Scores and details of one task, one model, one seed (default ``args.seed``), in ``args.mode``."""
    seed = args.seed if seed is None else seed
    task = data.task
    y_true = data.eval.labels
    if args.mode == "probe":
        assert encoder is not None
        preds, details = probe(encoder, data, seed=seed, batch_size=args.batch_size or 64, strength=args.probe_c)
    else:
        assert ref is not None
        y_true, preds, details = finetune(
            ref, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size or 32,
            max_seq_length=args.max_seq_length, seed=seed,
        )
    details.update(n_train=len(data.train), n_eval=len(data.eval))
    if not task.regression:
        details["eval_majority_rate"] = majority_rate(data.eval.labels)
    return score(task, y_true, preds), details


def task_protocol(args: argparse.Namespace, data: TaskData, details: dict[str, Any], seeds: Sequence[int]) -> str:
    """The protocol line of a task, from its data and the details of one of its runs."""
    task = data.task
    if args.mode == "probe":
        how = probe_protocol(task, details, fixed=args.probe_c is not None)
        if len(seeds) > 1:
            how += f"; {seeds_phrase(seeds)} picks the hold-out part and the train subset"
    else:
        how = finetune_protocol(args, details, task, seeds)
    return protocol_line(task, data, how)


# --------------------------------------------------------------------------- models, seeds, resuming

STD_NOTE = (
    "mean and std over seeds; std is the sample standard deviation (ddof=1, n-1 in the denominator), "
    "null with one seed; diff = mean of the model minus mean of the first model, diff_std = sample std "
    "of the per-seed paired differences (same seed = same train subset and batch order for both models)"
)
# What decides a run's result besides (model, task, seed): a resumed report must agree on all.
RUN_SETTINGS = (
    "mode", "epochs", "lr", "batch_size", "max_seq_length", "max_train_samples", "max_eval_samples",
    "split_seed", "probe_c",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: its name in tables and reports, and where it is."""

    name: str
    spec: str


def parse_models(specs: Sequence[str]) -> list[ModelSpec]:
    """``PATH`` or ``NAME=PATH`` per model; an unnamed model is named by its spec. Names must differ."""
    out: list[ModelSpec] = []
    for raw in specs:
        name, sep, spec = raw.partition("=")
        # An existing path that happens to contain "=" is a path, not a name.
        if sep and _NAME.fullmatch(name) and not Path(raw).expanduser().exists():
            if not spec:
                raise GlueError(f"model {raw!r}: no path after '='")
            out.append(ModelSpec(name, spec))
        else:
            out.append(ModelSpec(raw, raw))
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GlueError(f"model name(s) {', '.join(map(repr, twice))} given twice: name each model, "
                        "e.g. start=PATH1 cert=PATH2")
    return out


def parse_seeds(text: str) -> list[int]:
    """Seeds from a comma list ("0,1,2"): distinct integers >= 0, in the order given."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GlueError(f"--seeds {text!r}: expected a comma list of integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise GlueError(f"--seeds {text!r}: expected distinct integers >= 0, e.g. 0,1,2")
    return seeds


def weights_fingerprint(ref: str) -> str | None:
    """sha1 (16 hex) of a local model directory's weight files; None for a hub name.

    Recorded so that resuming never mixes runs of a model retrained at the same path.
    """
    root = Path(ref)
    if not root.is_dir():
        return None
    digest = hashlib.sha1()
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".pt", ".pth"}:
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def model_identity(mode: str, spec: ModelSpec) -> dict[str, Any]:
    """Where a model's weights are (absolute path or hub name) and their fingerprint, for resuming."""
    if mode == "probe":  # benchmarks.models specs: the spec is the identity
        return {"spec": spec.spec, "path": None, "fingerprint": None}
    ref = transformer_ref(spec.spec)
    local = Path(ref).exists()
    return {
        "spec": spec.spec,
        "path": os.path.abspath(ref) if local else ref,
        "ref": ref,
        "fingerprint": weights_fingerprint(ref) if local else None,
    }


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide a run's result (see RUN_SETTINGS)."""
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    # The effective batch: an explicit "--batch-size 32" resumes a report made with the default.
    settings["batch_size"] = args.batch_size or (64 if args.mode == "probe" else 32)
    return settings


def _identity_key(info: dict[str, Any]) -> tuple[Any, ...]:
    """What must match for a model's runs to be reused: path and weights, or the probe spec."""
    return (info.get("path"), info.get("fingerprint")) if info.get("path") else (info.get("spec"),)


def resume_state(
    out: Path, settings: dict[str, Any], models: dict[str, dict[str, Any]], fresh: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runs, model info) of a previous report at ``out`` that can be continued, else empty ones.

    A report that cannot be continued (other settings, a model whose path or weights changed,
    an older single-run format, unreadable) is moved to ``OUT.bak`` with a message saying why.
    """
    if not out.exists():
        return {}, {}
    problem = None
    old: Any = None
    try:
        old = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"cannot be read as JSON ({err})"
    if fresh:
        problem = "--fresh given"
    elif problem is None and not (isinstance(old, dict) and isinstance(old.get("runs"), dict)
                                  and isinstance(old.get("settings"), dict)):
        problem = "has no per-run results (written by the single-run version of this benchmark)"
    elif problem is None:
        diffs = [f"{k} {old['settings'].get(k)!r} there, {v!r} now"
                 for k, v in settings.items() if old["settings"].get(k) != v]
        old_info = old.get("model_info", {})
        for name, info in models.items():
            prev = old_info.get(name)
            if prev is not None and _identity_key(prev) != _identity_key(info):
                diffs.append(f"model {name!r} was {prev.get('path') or prev.get('spec')} (weights "
                             f"{prev.get('fingerprint')}), now {info['path'] or info['spec']} (weights {info['fingerprint']})")
        if diffs:
            problem = "was made with other settings: " + "; ".join(diffs)
    if problem is None:
        n = sum(len(seeds) for tasks in old["runs"].values() for seeds in tasks.values())
        print(f"resuming {out}: {n} finished run(s) there are kept and not run again", flush=True)
        return old["runs"], old.get("model_info", {})
    backup = out.with_name(out.name + ".bak")
    os.replace(out, backup)
    print(f"{out} {problem}: starting fresh (the old report is now {backup})", flush=True)
    return {}, {}


# --------------------------------------------------------------------------- aggregating


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None below 2 values, where it is undefined."""
    return round(float(np.std(values, ddof=1)), 3) if len(values) >= 2 else None


def summarize(
    runs: dict[str, Any], models: Sequence[str], tasks: Sequence[Task], seeds: Sequence[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model, task and metric: per-seed scores, mean, sample std (ddof=1) and n; and the
    differences of every later model from the first.

    Only finished runs count; an undefined score (None, e.g. Pearson of constant predictions)
    is left out of the mean and std, so ``n`` says how many values went in.
    """
    summary: dict[str, Any] = {}
    for name in models:
        for task in tasks:
            done = runs.get(name, {}).get(task.name, {})
            for metric in task.metrics:
                per_seed = {str(s): done[str(s)]["scores"].get(metric) for s in seeds if str(s) in done}
                values = [v for v in per_seed.values() if v is not None]
                summary.setdefault(name, {}).setdefault(task.name, {})[metric] = {
                    "per_seed": per_seed, "mean": _mean(values), "std": _std(values), "n": len(values),
                }
    differences: dict[str, Any] = {}
    base = models[0] if models else None
    for name in models[1:]:
        for task in tasks:
            for metric in task.metrics:
                a, b = summary[base][task.name][metric], summary[name][task.name][metric]
                paired = [b["per_seed"][s] - a["per_seed"][s] for s in b["per_seed"]
                          if a["per_seed"].get(s) is not None and b["per_seed"][s] is not None]
                diff = None if a["mean"] is None or b["mean"] is None else round(b["mean"] - a["mean"], 3)
                differences.setdefault(name, {}).setdefault(task.name, {})[metric] = {
                    "diff": diff, "diff_std": _std(paired), "n_pairs": len(paired),
                }
    return summary, differences


def estimate_seconds_left(
    done: Sequence[tuple[str, float]], pending: Sequence[str], work: dict[str, float]
) -> float | None:
    """Seconds the ``pending`` runs (their task names) should take, from the ``done`` ones.

    A task with finished runs costs their mean time; another costs its ``work`` (text volume
    x passes) at the seconds-per-work rate of all finished runs. None before any run finished.
    """
    if not done:
        return None
    by_task: dict[str, list[float]] = {}
    for name, sec in done:
        by_task.setdefault(name, []).append(sec)
    rate = sum(sec for _, sec in done) / max(sum(work[name] for name, _ in done), 1e-9)
    return sum(float(np.mean(by_task[t])) if t in by_task else rate * work[t] for t in pending)


# The fixed cost of one optimizer step (AdamW over every weight, embeddings included, and the
# Trainer's bookkeeping) in "characters of training text" (see task_work): on CPU with a 4-layer,
# 256-wide BERT (16k vocab) a step cost 134 ms + 0.2 ms per token, i.e. ~680 tokens ~ 2,600
# characters. Without it, a task of short rows (CoLA) was estimated at half its time.
STEP_CHARS = 2600


def task_work(data: TaskData, mode: str, epochs: float, batch_size: int = 32) -> float:
    """Relative cost of one run: characters forwarded, a training pass counting 3 forwards
    (forward + backward), plus each optimizer step's fixed cost (STEP_CHARS)."""
    train = sum(len(t) for row in data.train.texts for t in row)
    evaluate = sum(len(t) for row in data.eval.texts for t in row)
    if mode == "probe":
        return float(train + evaluate)
    steps = math.ceil(epochs * math.ceil(len(data.train) / batch_size))
    return float(3 * (epochs * train + steps * STEP_CHARS) + evaluate)


# --------------------------------------------------------------------------- printing, plotting


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2f}"


def _mean_std(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "nan"
    return _fmt(entry["mean"]) if entry["std"] is None else f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def print_table(report: dict[str, Any], tasks: Sequence[Task]) -> None:
    """Per task, metric and model: per-seed scores, mean ± sample std, difference from the first model;
    then a markdown table of the means and the protocol lines."""
    models, seeds = report["models"], report["seeds"]
    summary, differences = report["summary"], report["differences"]
    width = max(5, *(len(m) for m in models))
    per_seed_head = "seed " + " / ".join(map(str, seeds))
    cells = {}
    for t in tasks:
        for m in t.metrics:
            for name in models:
                e = summary[name][t.name][m]
                cells[t.name, m, name] = " / ".join(_fmt(e["per_seed"].get(str(s))) if str(s) in e["per_seed"]
                                                    else "-" for s in seeds)
    seed_width = max(len(per_seed_head), *(len(c) for c in cells.values())) if cells else len(per_seed_head)
    delta = f"diff vs {models[0]}" if len(models) > 1 else ""
    print(f"{'task':<7} {'metric':<14} {'model':<{width}} {per_seed_head:<{seed_width}} {'mean ± std':>15} {delta}")
    for t in tasks:
        for m in t.metrics:
            for name in models:
                e = summary[name][t.name][m]
                d = differences.get(name, {}).get(t.name, {}).get(m)
                dtext = "" if d is None else _signed(d["diff"]) + (f" (paired std {d['diff_std']:.2f})"
                                                                   if d["diff_std"] is not None else "")
                print(f"{t.display:<7} {METRIC_LABELS[m]:<14} {name:<{width}} {cells[t.name, m, name]:<{seed_width}} "
                      f"{_mean_std(e):>15} {dtext}")
    print(f"({'std: sample standard deviation over seeds, ddof=1' if len(seeds) > 1 else 'one seed: no std'})")
    print("markdown:")
    print(markdown_table(report, tasks))
    print("protocol:")
    for t in tasks:
        if t.name in report["protocol"]:
            print(f"  {report['protocol'][t.name]}")


def markdown_table(report: dict[str, Any], tasks: Sequence[Task]) -> str:
    """Models as rows, task metrics as columns, "mean ± std" cells; a diff row per later model."""
    models, summary, differences = report["models"], report["summary"], report["differences"]
    cols = [(t, m) for t in tasks for m in t.metrics]
    lines = [
        "| model | " + " | ".join(f"{t.display} {METRIC_LABELS[m]}" for t, m in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in models:
        lines.append(f"| {name} | " + " | ".join(_mean_std(summary[name][t.name][m]) for t, m in cols) + " |")
    for name in models[1:]:
        lines.append(f"| {name} − {models[0]} | "
                     + " | ".join(_signed(differences[name][t.name][m]["diff"]) for t, m in cols) + " |")
    return "\n".join(lines)


def write_plot(report: dict[str, Any], tasks: Sequence[Task], png: Path) -> None:
    """Grouped bars: every metric of every task (x100), one bar per model at its mean over
    seeds, error bars one sample std (ddof=1) where there are 2+ seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, summary = report["models"], report["summary"]
    cols = [(t, m) for t in tasks for m in t.metrics]  # the task's order: JSON keys come back sorted
    n = len(models)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, (0.6 + 0.35 * n) * len(cols)), 4.2))
    lowest, highest = 0.0, 100.0
    for i, name in enumerate(models):
        entries = [summary[name][t.name][m] for t, m in cols]
        means = [math.nan if e["mean"] is None else e["mean"] for e in entries]
        stds = [0.0 if e["std"] is None else e["std"] for e in entries]
        x = [j + (i - (n - 1) / 2) * width for j in range(len(cols))]
        has_err = any(e["std"] is not None for e in entries)
        ax.bar(x, means, width, yerr=stds if has_err else None, capsize=3 if has_err else 0,
               label=name, color=f"C{i}")
        for xi, mean, std in zip(x, means, stds):
            # Above the error bar (below it for a negative score), so the two never overlap.
            if math.isnan(mean):
                ax.text(xi, 1, "n/a", ha="center", va="bottom", fontsize=7)
                continue
            y = mean + std + 1 if mean >= 0 else mean - std - 1
            ax.text(xi, y, f"{mean:.1f}", ha="center", va="bottom" if mean >= 0 else "top", fontsize=7)
            if mean >= 0:
                highest = max(highest, y + 6)
            else:
                lowest = min(lowest, y - 6)
    ax.set_xticks(range(len(cols)), [f"{t.display}\n{METRIC_LABELS[m]}" for t, m in cols], fontsize=8)
    ax.set_ylabel("score x100")
    ax.set_ylim(lowest, highest)
    ax.axhline(0, color="black", linewidth=0.5)
    seeds = report["seeds"]
    err = f"mean of seeds {', '.join(map(str, seeds))} ± sample std" if len(seeds) > 1 else f"seed {seeds[0]}"
    split = [t.display for t in tasks if t.split_from]
    note = f" ({', '.join(split)}: held-out 20% split)" if split else ""
    if n > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        title = f"GLUE dev{note}, {report['mode']}: {err}"
    else:
        name = "/".join(Path(str(report["model"])).parts[-2:])  # packaged models end in a bare "model"
        title = f"GLUE dev{note}, {report['mode']}: {name}" + (f" ({err})" if len(seeds) > 1 else "")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.glue", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="+", help="one or more models, each PATH or NAME=PATH: model dir (textcl / "
                   "sentence-transformers / HF) or hub name; probe mode also takes benchmarks.models specs "
                   "(avg-word-vectors:PATH, random-init:PATH). With 2+, differences are taken from the first")
    p.add_argument("--tasks", default="all", help=f"comma list of {','.join(TASKS)} (default: all)")
    add_data_dir_argument(p)
    p.add_argument("--mode", choices=["finetune", "probe"], default="finetune")
    p.add_argument("--max-train-samples", type=int, default=None, help="seeded random subset of train per task "
                   "(drawn with each run's seed)")
    p.add_argument("--max-eval-samples", type=int, default=None, help="seeded random subset of eval per task")
    p.add_argument("--epochs", type=float, default=3.0, help="finetune epochs, fractions allowed (default 3)")
    p.add_argument("--lr", type=float, default=2e-5, help="finetune learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=int, default=None, help="finetune batch (default 32); probe encode batch (64)")
    p.add_argument("--max-seq-length", type=int, default=128, help="finetune truncation (default 128); probe "
                   "uses the encoder's own")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=None, help="one training seed (default 0): init, order, train "
                      "subset, probe hold-out")
    seed.add_argument("--seeds", default=None, help="several training seeds, e.g. 0,1,2: every model runs "
                      "every task with each; tables give mean ± sample std")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the QQP/QNLI 80/20 split and of the eval "
                   "subset, kept apart from --seed so that runs with other seeds share one eval set")
    p.add_argument("--probe-c", type=float, default=None, help="fix the probe's C (Ridge alpha for STS-B) "
                   "instead of picking it on held-out train")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here, after every run; an "
                   "existing report made with the same settings is continued (finished runs are skipped)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing --out report (it is kept as OUT.bak)")
    p.add_argument("--plot", action="store_true", help="also write a PNG bar chart next to --out")
    return p


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.plot and args.out is None:
        parser.error("--plot needs --out")
    if args.fresh and args.out is None:
        parser.error("--fresh needs --out")
    for name in ("max_train_samples", "max_eval_samples", "batch_size", "max_seq_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be >= 0")
    if not (args.epochs > 0 and math.isfinite(args.epochs)) or args.lr <= 0 or (
        args.probe_c is not None and args.probe_c <= 0
    ):
        parser.error("--epochs, --lr and --probe-c must be > 0")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run every (model, task, seed), print the tables; write JSON / PNG if asked."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [0 if args.seed is None else args.seed]
    args.seed = seeds[0]  # what single-seed helpers (run_task, finetune_protocol) default to
    models = parse_models(args.model)
    names = [m.name for m in models]
    tasks = parse_tasks(args.tasks)
    data_dir = resolve_data_dir(args.data_dir)
    check_files(data_dir, tasks)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    env = environment(("scikit-learn", "scipy", "accelerate"))
    started = time.perf_counter()
    t0 = time.perf_counter()
    # Before any run: a wrong path fails now, not after an hour of the first model's runs.
    identity = {m.name: model_identity(args.mode, m) for m in models}
    settings = settings_of(args)
    runs: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    if args.out is not None:
        runs, model_info = resume_state(args.out, settings, identity, args.fresh)
    model_info.update(identity)
    encoders: dict[str, Encoder] = {}
    load_seconds = time.perf_counter() - t0

    phrase = seeds_phrase(seeds)

    def load(task: Task, seed: int) -> TaskData:
        return load_task(
            data_dir, task, split_seed=args.split_seed, max_train=args.max_train_samples,
            max_eval=args.max_eval_samples, seed=seed, seed_text=phrase if len(seeds) > 1 else None,
        )

    # The first seed's data of every task up front: the time estimate needs every task's size.
    first_data = {t.name: load(t, seeds[0]) for t in tasks}
    work = {name: task_work(d, args.mode, args.epochs, args.batch_size or 32) for name, d in first_data.items()}
    # Task outermost, model innermost: the models' runs with one seed sit side by side, so an
    # interrupted comparison is still paired, and each task's first run times that task.
    plan = [(t, s, m) for t in tasks for s in seeds for m in models]
    todo = [(t, s, m) for t, s, m in plan if str(s) not in runs.get(m.name, {}).get(t.name, {})]
    if len(todo) < len(plan):
        print(f"{len(plan) - len(todo)} of {len(plan)} runs already in {args.out}: skipped", flush=True)
    print(f"{len(todo)} run(s) to do: {len(models)} model(s) x {len(tasks)} task(s) x {len(seeds)} seed(s) "
          f"({args.mode})", flush=True)
    done_times: list[tuple[str, float]] = []

    def build_report() -> dict[str, Any]:
        summary, differences = summarize(runs, names, tasks, seeds)
        first = names[0]
        protocol, details = {}, {}
        for t in tasks:
            mine = [runs.get(n, {}).get(t.name, {}) for n in names]
            finished = next((r for r in mine if r), None)
            if finished is None:
                continue
            run = finished[min(finished, key=int)]
            protocol[t.name] = task_protocol(args, first_data[t.name], run["details"], seeds)
            own = runs.get(first, {}).get(t.name, {})
            if own:
                details[t.name] = own[min(own, key=int)]["details"]
        seconds: dict[str, float] = {"load_model": round(load_seconds, 2)}
        for t in tasks:
            secs = [r["seconds"] for n in names for s, r in runs.get(n, {}).get(t.name, {}).items() if int(s) in seeds]
            if secs:
                seconds[t.name] = round(sum(secs), 2)
        seconds["total"] = round(sum(v for k, v in seconds.items()), 2)
        seconds["wall_this_invocation"] = round(time.perf_counter() - started, 2)
        first_model = model_info[first]
        label = str(getattr(encoders.get(first), "name", first)) if args.mode == "probe" else first
        out: dict[str, Any] = {
            # Single-run layout, kept for readers of the older reports: the first model's means.
            **{t.name: {m: summary[first][t.name][m]["mean"] for m in t.metrics} for t in tasks
               if runs.get(first, {}).get(t.name)},
            "protocol": protocol,
            "details": details,
            "mode": args.mode,
            "scale": "x100",
            "model": label,
            "model_path": first_model.get("ref"),
            "command": "python -m benchmarks.glue " + shlex.join(argv),
            "environment": env,
            "seconds": seconds,
            # Several models and seeds.
            "models": names,
            "model_info": model_info,
            "seeds": seeds,
            "tasks": [t.name for t in tasks],
            "settings": settings,
            "runs": runs,
            "summary": summary,
            "differences": differences,
            "std_note": STD_NOTE,
        }
        return out

    data_cache: dict[tuple[str, int], TaskData] = {}
    for k, (task, seed, model) in enumerate(todo, 1):
        t0 = time.perf_counter()
        key = (task.name, seed)
        if key not in data_cache:  # runs go task by task, seed by seed: keep one (task, seed) in memory
            data_cache = {key: first_data[task.name] if seed == seeds[0] else load(task, seed)}
        data = data_cache[key]
        if args.mode == "probe" and model.name not in encoders:
            t1 = time.perf_counter()
            encoders[model.name] = load_encoder(model.spec)
            load_seconds += time.perf_counter() - t1
        encoder = encoders.get(model.name)
        scores, details = run_task(args, data, encoder, model_info[model.name].get("ref"), seed)
        sec = round(time.perf_counter() - t0, 2)
        runs.setdefault(model.name, {}).setdefault(task.name, {})[str(seed)] = {
            "scores": scores, "details": details, "seconds": sec,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # runs may span sessions
        }
        done_times.append((task.name, sec))
        left = estimate_seconds_left(done_times, [t.name for t, _, _ in todo[k:]], work)
        values = ", ".join(f"{METRIC_LABELS[m]} {_fmt(scores.get(m))}" for m in task.metrics)
        eta = "" if left is None or k == len(todo) else (
            f"; ~{_minutes(left)} left, ~{_minutes(time.perf_counter() - started + left)} in all")
        print(f"[{k}/{len(todo)}] {model.name} {task.display} seed {seed} ({len(data.train)} train / "
              f"{len(data.eval)} eval): {values} ({sec:.1f} s){eta}", flush=True)
        if k == 1 and len(todo) > 1:
            print("  (estimate: each task's runs take as long as its finished ones; a task not run yet is scaled "
                  "from the others by its text volume x passes)", flush=True)
        if args.out is not None:
            write_report(args.out, build_report())
    env["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = build_report()
    where = ", ".join(f"{n} = {model_info[n]['spec']}" for n in names)
    print(f"models: {where}  mode: {args.mode}  "
          f"seeds: {', '.join(map(str, seeds))}")
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
    main()  # cli_main prints a GlueError / DataDirError's one line (SystemExit(2) would not)
