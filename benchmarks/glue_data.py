"""GLUE tasks, their data files and scores: what every mode of :mod:`benchmarks.glue` shares.

Task table, the jsonl readers with file:line errors, the seeded QQP/QNLI 80/20 split, seeded
train/eval subsets, and scoring through the ``evaluate`` GLUE metric module.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_DEV_FRACTION = 0.2
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

