"""SentEval tasks: their names, their data files, how rows are read, and the encoding every
task shares (each distinct text encoded once). Part of :mod:`benchmarks.senteval`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import CallableEncoder, Encoder, ObjectEncoder, load_model

__all__ = [
    "CV_TASKS",
    "STS_TASKS",
    "TASK_GROUPS",
    "TRANSFER_TASKS",
    "DataFormatError",
    "encode_unique",
    "parse_tasks",
    "read_jsonl",
    "required_files",
    "sts_file",
]

STS_TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
TRANSFER_TASKS = ("mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc")
TASK_GROUPS = {"sts": STS_TASKS, "transfer": TRANSFER_TASKS, "all": STS_TASKS + TRANSFER_TASKS}
CV_TASKS = ("mr", "cr", "subj", "mpqa")

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
    from textcl.data_files import json_object_lines

    rows = []
    for where, row in json_object_lines(path, error=DataFormatError):
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
