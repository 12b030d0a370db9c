"""``Dataset.map`` results cached on disk under an explicit fingerprint, and their workers.

A corpus's derived columns (document index, sentence splits, token ids) are computed once
by ``Dataset.map`` in ``num_proc`` worker processes and written as Arrow files named by a
fingerprint that textcl computes itself (:func:`fingerprint_of`,
:func:`tokenizer_fingerprint`): the same source, settings and tokenizer find the same
files again, whatever number of processes wrote them (:func:`complete_files` finds a
finished set of shards). :func:`cached_map` runs or reuses such a map;
:func:`map_to_files` returns its files for the positional readers of
:mod:`textcl.arrow_columns`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textcl.arrow_columns import _dataset_files

__all__ = [
    "cached_map",
    "complete_files",
    "default_num_proc",
    "fingerprint_of",
    "map_processes",
    "map_to_files",
    "tokenizer_fingerprint",
]

logger = logging.getLogger("textcl")


def default_num_proc() -> int:
    """The ``data.num_proc`` default: the CPUs this process may run on (its affinity mask,
    else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: A worker process costs a fork and a dill round trip: below this many rows per process
#: the work stays in this process (tests, toy corpora), above it ``num_proc`` workers run.
MIN_ROWS_PER_PROCESS = 32


def map_processes(num_proc: int | None, rows: int) -> int | None:
    """``num_proc`` for ``Dataset.map`` over ``rows`` rows: ``None`` (this process) for a
    small input, else ``num_proc`` (default :func:`default_num_proc`) capped so that each
    worker gets at least :data:`MIN_ROWS_PER_PROCESS` rows. Work done by workers stays out
    of this process's memory."""
    if rows < 2 * MIN_ROWS_PER_PROCESS:
        return None
    wanted = default_num_proc() if num_proc is None else int(num_proc)
    return max(1, min(wanted, rows // MIN_ROWS_PER_PROCESS))


def fingerprint_of(*parts: Any) -> str:
    """A ``datasets`` fingerprint (32 hex digits) of JSON-able ``parts``."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides a tokenizer's ``input_ids``: a fast tokenizer's pipeline (its
    ``tokenizer.json`` without the call-time truncation and padding settings), else the
    ``datasets`` hash of the object."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:  # pragma: no cover - slow tokenizers
        from datasets.fingerprint import Hasher

        text = Hasher.hash(tokenizer)
    return fingerprint_of(type(tokenizer).__name__, hashlib.sha256(text.encode("utf-8")).hexdigest())


@contextmanager
def _progress(show: bool) -> Iterator[None]:
    """``datasets`` progress bars on for the block when ``show`` (long maps), as they were after."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if show and was_disabled:
        datasets.enable_progress_bars()
    elif not show and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            datasets.disable_progress_bars()
        else:
            datasets.enable_progress_bars()


def cached_map(dataset: Any, function: Any, *, fingerprint: str, cache_file: str | Path | None = None,
               num_proc: int | None = None, desc: str | None = None, progress: bool = False,
               **kwargs: Any) -> Any:
    """``dataset.map(function, batched=True, ...)`` stored as a memory-mapped Arrow file named by
    ``fingerprint`` (in ``cache_file``, else beside ``dataset``'s own cache files): a second
    call with the same fingerprint reads the file instead of mapping again, whatever
    ``num_proc`` wrote it. ``num_proc`` workers (:func:`map_processes`) split the rows into
    contiguous shards; the result keeps the row order. A dataset held in memory, or a cache
    directory that cannot be written (logged), gives a result in memory."""
    cache_dir: Path | None = None
    if cache_file is not None:
        cache_dir = Path(cache_file).parent
    elif dataset.cache_files:
        cache_dir = Path(dataset.cache_files[0]["filename"]).parent
    in_memory = cache_dir is None
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            writable = os.access(cache_dir, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            logger.warning("cannot write the cache directory %s; %s stays in memory", cache_dir, desc or "the result")
            in_memory, cache_file = True, None
    with _progress(progress):
        return dataset.map(
            function, batched=True, new_fingerprint=fingerprint, num_proc=map_processes(num_proc, len(dataset)),
            cache_file_name=None if in_memory or cache_file is None else str(cache_file),
            keep_in_memory=in_memory, desc=desc, **kwargs,
        )


def map_to_files(dataset: Any, function: Any, *, fingerprint: str, cache_file: str | Path | None = None,
                 **kwargs: Any) -> Any:
    """:func:`cached_map`, its result given as its Arrow files (a list, for
    :class:`~textcl.arrow_columns.ArrowLists` and :func:`~textcl.arrow_columns.read_column`)
    when it is on disk -- a cache hit opens nothing -- else as the in-memory dataset.
    ``cache_file`` defaults to ``datasets``' own name beside ``dataset``'s cache files."""
    if cache_file is None and dataset.cache_files:
        cache_file = Path(dataset.cache_files[0]["filename"]).parent / f"cache-{fingerprint}.arrow"
    if cache_file is not None:
        files = complete_files(cache_file)
        if files:
            return files
    out = cached_map(dataset, function, fingerprint=fingerprint, cache_file=cache_file, **kwargs)
    return _dataset_files(out) or out


def complete_files(cache_file: str | Path) -> list[str] | None:
    """The files a ``Dataset.map`` wrote for ``cache_file``: the file itself, else a complete
    set of ``num_proc`` shards (``<stem>_00000_of_00002.arrow``, ...) in order; None if
    there is neither (an interrupted run leaves an incomplete set: ``map`` finishes it)."""
    path = Path(cache_file)
    if path.is_file():
        return [str(path)]
    if not path.parent.is_dir():
        return None
    pattern = re.compile(re.escape(path.stem) + r"_(\d{5})_of_(\d{5})" + re.escape(path.suffix))
    sets: dict[int, dict[int, str]] = {}
    for candidate in path.parent.glob(f"{path.stem}_*_of_*{path.suffix}"):
        m = pattern.fullmatch(candidate.name)
        if m:
            sets.setdefault(int(m.group(2)), {})[int(m.group(1))] = str(candidate)
    for n, shards in sorted(sets.items()):
        if sorted(shards) == list(range(n)):
            return [shards[r] for r in range(n)]
    return None


def _features(spec: dict[str, Any]) -> Any:
    """``datasets.Features`` of ``{column: type}`` (``"int32"``, or ``["int32"]`` for a list of
    them): the schema a map writes, given up front rather than inferred from the first batch."""
    import datasets

    def one(kind: Any) -> Any:
        if isinstance(kind, list):
            return datasets.List(one(kind[0]))
        return datasets.Value(kind)

    return datasets.Features({name: one(kind) for name, kind in spec.items()})
