"""Document corpora for document-level objectives (DeCLUTR, NSP, permutation).

Local files go through the ``datasets`` loaders (``json`` for ``.jsonl[.gz]``,
``text`` for ``.txt[.gz]``, one document per line), so the same code reads a hub
dataset for users with a network (``hf://NAME[:SPLIT]``).

Corpora stay in Arrow: ``datasets`` converts a file once into a memory-mapped Arrow
cache, and :func:`load_documents` returns a :class:`DocumentCorpus` that reads a
document's text when it is asked for, so a process holds only the pages it touches
(its resident memory does not grow with the corpus). Derived columns (ids and
held-out keys, token ids) are ``Dataset.map`` results cached under an explicit
fingerprint (:func:`cached_map`) and read through zero-copy numpy views
(:class:`ArrowLists`). ``hf://`` sources are downloaded and memory-mapped, not
streamed: the objectives draw examples by index (random access).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "ArrowInts",
    "ArrowLists",
    "DataError",
    "Document",
    "DocumentCorpus",
    "as_document_corpus",
    "cached_map",
    "check_data_file",
    "complete_files",
    "datasets_quiet",
    "default_num_proc",
    "diagnose_data_file",
    "fingerprint_of",
    "held_out_split",
    "load_documents",
    "map_processes",
    "map_to_files",
    "read_column",
    "read_problem",
    "source_dataset",
    "split_key",
    "text_problem",
    "tokenizer_fingerprint",
]

logger = logging.getLogger("textcl")

# Bytes read up front to catch a binary, non-UTF-8 or non-gzip file before a loader does.
_SNIFF_BYTES = 1 << 16


class DataError(ValueError):
    """Training data problem (empty corpus, missing field, too-short documents, unreadable file)."""


def _is_json(path: Path) -> bool:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".json")


def _open_bytes(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_problem(path: Path, exc: BaseException) -> DataError:
    """The DataError for an exception raised while reading ``path``'s bytes."""
    if isinstance(exc, gzip.BadGzipFile):
        return DataError(f"{path}: not gzip data ({exc}) — compress it with gzip, or drop the .gz from its name")
    if isinstance(exc, (EOFError, zlib.error)):
        return DataError(
            f"{path}: the gzip data is truncated or corrupt ({exc}) — re-create or re-download the file"
        )
    return DataError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc}) — check the file")


_BINARY = "binary data (a NUL byte), not text — give a UTF-8 .txt[.gz] or .jsonl[.gz] file"


def text_problem(data: bytes) -> tuple[int, str] | None:
    """``(offset, what is wrong)`` for the first NUL byte or invalid UTF-8 in ``data``, else None."""
    nul = data.find(b"\x00")
    if data.isascii():  # the common case, and a fast check
        return None if nul < 0 else (nul, _BINARY)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if nul < 0 or exc.start < nul:
            return exc.start, (f"not UTF-8 (byte 0x{data[exc.start]:02x}) — re-encode the file as UTF-8, "
                               "e.g. iconv -f latin1 -t utf-8")
    return None if nul < 0 else (nul, _BINARY)


def _line_problem(raw: bytes, json_lines: bool) -> str | None:
    """What is wrong with one line of a corpus file, or None."""
    problem = text_problem(raw)
    if problem is not None:
        return problem[1]
    text = raw.decode("utf-8")
    if json_lines and text.strip():
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"invalid JSON ({exc.msg}, column {exc.colno}) — write one JSON object per line"
        if not isinstance(row, dict):
            return 'not a JSON object — write one {"text": ...} object per line'
    return None


def diagnose_data_file(path: str | Path) -> DataError | None:
    """Read a local corpus file with the standard library and return its first problem --
    broken gzip, a NUL byte, a line that is not UTF-8, a JSON line that does not parse (with
    its line number) -- as a DataError, or None if every line reads.

    Loaders call it when a faster reader (``datasets``) fails, to name the line.
    """
    path = Path(path)
    json_lines = _is_json(path)
    if json_lines and path.name.removesuffix(".gz").endswith(".json"):
        try:  # a .json file may be one JSON document rather than JSON lines
            with _open_bytes(path) as fh:
                json.loads(fh.read())
            return None
        except (ValueError, OSError, EOFError, zlib.error):
            pass
    try:
        with _open_bytes(path) as fh:
            for line_no, raw in enumerate(fh, 1):
                problem = _line_problem(raw, json_lines)
                if problem is not None:
                    return DataError(f"{path}: line {line_no}: {problem}")
    except (OSError, EOFError, zlib.error) as exc:
        return _read_problem(path, exc)
    return None


def check_data_file(source: str | Path) -> Path:
    """A local corpus file, checked before a loader reads it: ``DataError`` (one line, with
    the fix) when it is missing, a directory, empty, not gzip data despite ``.gz``, or
    binary / not UTF-8 / not JSON lines in its first 64 KiB."""
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{source}: is a directory, not a file — give a .jsonl[.gz] or .txt[.gz] file")
    if not path.is_file():
        raise DataError(f"{source}: file not found — fix the path (relative paths are relative to the working directory)")
    try:
        with _open_bytes(path) as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_problem(path, exc) from None
    json_lines = _is_json(path)
    if not head or (json_lines and len(head) < _SNIFF_BYTES and not head.strip()):
        raise DataError(f"{source}: the file is empty — give a corpus file with one text per line")
    # Whole lines only: the last one may be cut by the 64 KiB read.
    lines = head.split(b"\n")
    if len(head) == _SNIFF_BYTES:
        lines = lines[:-1]
    json_whole = json_lines and path.name.removesuffix(".gz").endswith(".json")
    for line_no, raw in enumerate(lines, 1):
        problem = _line_problem(raw, json_lines and not json_whole)
        if problem is not None:
            raise DataError(f"{source}: line {line_no}: {problem}")
    return path


def read_problem(path: str | Path, exc: BaseException) -> DataError:
    """The one-line DataError for an exception raised while reading ``path``'s bytes
    (broken or truncated gzip data, an I/O error)."""
    return _read_problem(Path(path), exc)


@contextmanager
def datasets_quiet() -> Iterator[None]:
    """``datasets`` logs a failed JSON read as an error before raising; we raise our own one line."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class Document:
    id: str
    text: str


# --------------------------------------------------------------------------- Arrow plumbing
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
    """:func:`cached_map`, its result given as its Arrow files (a list, for :class:`ArrowLists`
    and :func:`read_column`) when it is on disk -- a cache hit opens nothing -- else as the
    in-memory dataset. ``cache_file`` defaults to ``datasets``' own name beside ``dataset``'s
    cache files."""
    if cache_file is None and dataset.cache_files:
        cache_file = Path(dataset.cache_files[0]["filename"]).parent / f"cache-{fingerprint}.arrow"
    if cache_file is not None:
        files = complete_files(cache_file)
        if files:
            return files
    out = cached_map(dataset, function, fingerprint=fingerprint, cache_file=cache_file, **kwargs)
    return _dataset_files(out) or out


def _chunk_starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


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


class _ColumnFiles:
    """One column of Arrow IPC stream files (the format of ``datasets``' cache files): where
    each record batch's buffers lie, found by reading the message headers with plain reads,
    and positional reads (``os.pread``) of single rows.

    Why not the memory map ``datasets`` uses: a process that reads rows of a mapped file at
    random ends up with most of the file resident -- the kernel maps whole page-cache folios
    around each access (measured: 12,800 random reads of a 558 MB file left 490 MB of it in
    the reader's RSS; ``MADV_RANDOM`` made no difference) -- so the training process would
    grow with the corpus. Positional reads go through the page cache and leave nothing in
    the process."""

    def __init__(self, files: Sequence[str], column: str):
        import pyarrow as pa

        self.files, self.name = [str(f) for f in files], column
        sizes: list[int] = []
        chunks: list[tuple[int, int, int, int]] = []  # file, array offset, first buffer, values buffer
        kind: tuple[str, np.dtype, np.dtype | None] | None = None
        for index, path in enumerate(self.files):
            with pa.OSFile(path) as fh:
                reader = pa.ipc.MessageReader.open_stream(fh)
                schema = pa.ipc.read_schema(reader.read_next_message())
                field = schema.get_field_index(column)
                if field < 0:
                    raise KeyError(f"{path}: no column {column!r}")
                kind = _column_kind(schema.field(field).type)
                while True:
                    try:
                        message = reader.read_next_message()
                    except StopIteration:
                        break
                    if message is None:
                        break
                    if message.type != "record batch":
                        continue
                    body = message.body
                    base = fh.tell() - body.size  # the body ends where the reader stopped
                    batch = pa.ipc.read_record_batch(message, schema)
                    if not batch.num_rows:
                        continue
                    array = batch.column(field)
                    if array.null_count:
                        raise ValueError(f"{path}: column {column!r} has nulls")
                    buffers = array.buffers()
                    first = base + buffers[1].address - body.address
                    values = base + buffers[3].address - body.address if kind[0] == "list" else -1
                    sizes.append(batch.num_rows)
                    chunks.append((index, array.offset, first, values))
        if kind is None:
            raise ValueError(f"no Arrow data in {self.files}")
        self.kind, self.offset_type, self.value_type = kind
        self.starts = _chunk_starts(sizes)
        self.chunks = chunks
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def _read(self, file: int, nbytes: int, at: int) -> bytes:
        if self._pid != os.getpid():  # a forked child opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(self.files[file], os.O_RDONLY)
        data = os.pread(fd, nbytes, at)
        if len(data) != nbytes:
            raise OSError(f"{self.files[file]}: short read at byte {at} (the file changed?)")
        return data

    def _locate(self, i: int) -> tuple[tuple[int, int, int, int], int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        chunk = self.chunks[c]
        return chunk, i - int(self.starts[c]) + chunk[1]

    def row(self, i: int) -> Any:
        """A list row as a numpy array, a scalar row as a numpy scalar."""
        (file, _, first, values), j = self._locate(i)
        if self.kind != "list":
            size = self.value_type.itemsize
            return np.frombuffer(self._read(file, size, first + size * j), self.value_type)[0]
        osize = self.offset_type.itemsize
        a, b = np.frombuffer(self._read(file, 2 * osize, first + osize * j), self.offset_type).tolist()
        size = self.value_type.itemsize
        if b == a:
            return np.zeros(0, self.value_type)
        return np.frombuffer(self._read(file, size * (b - a), values + size * a), self.value_type)

    def column(self) -> np.ndarray:
        """Every value of a scalar column, or every row's length of a list column (one number
        per row: for the per-document columns)."""
        parts = []
        for c, (file, offset, first, _) in enumerate(self.chunks):
            rows = int(self.starts[c + 1] - self.starts[c])
            if self.kind == "list":
                size = self.offset_type.itemsize
                o = np.frombuffer(self._read(file, size * (rows + 1), first + size * offset), self.offset_type)
                parts.append(np.diff(o).astype(np.int64))
            else:
                size = self.value_type.itemsize
                parts.append(np.frombuffer(self._read(file, size * rows, first + size * offset), self.value_type))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _column_kind(arrow_type: Any) -> tuple[str, np.dtype, np.dtype | None]:
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        offsets = np.dtype(np.int64 if pa.types.is_large_list(arrow_type) else np.int32)
        return "list", offsets, np.dtype(arrow_type.value_type.to_pandas_dtype())
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "scalar", np.dtype(np.int64), np.dtype(arrow_type.to_pandas_dtype())
    raise TypeError(f"unsupported column type {arrow_type} (a list of numbers or a number)")


def _dataset_files(dataset: Any) -> list[str] | None:
    """The cache files a dataset reads, in row order, when it reads them whole (no indices
    mapping, no in-memory part); else None."""
    if getattr(dataset, "_indices", None) is not None or not dataset.cache_files:
        return None
    files = [f["filename"] for f in dataset.cache_files]
    return files if len(set(files)) == len(files) else None


class _ColumnViews:
    """One column of an in-memory Arrow dataset, through numpy views of its record batches."""

    def __init__(self, dataset: Any, column: str):
        if getattr(dataset, "_indices", None) is not None:
            raise ValueError("a dataset without an indices mapping is needed (flatten_indices first)")
        chunks = [c for c in dataset.data.column(column).chunks if len(c)]
        self.kind = _column_kind(dataset.features.arrow_schema.field(column).type)[0]
        self.starts = _chunk_starts([len(c) for c in chunks])
        if self.kind == "list":
            self.offsets = [c.offsets.to_numpy() for c in chunks]
            self.values = [c.values.to_numpy() for c in chunks]
        else:
            self.values = [c.to_numpy() for c in chunks]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(i)
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = i - int(self.starts[c])
        if self.kind != "list":
            return self.values[c][j]
        o = self.offsets[c]
        return self.values[c][o[j] : o[j + 1]]

    def column(self) -> np.ndarray:
        if self.kind == "list":
            parts = [np.diff(o).astype(np.int64) for o in self.offsets]
        else:
            parts = list(self.values)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _column_access(source: Any, column: str) -> _ColumnFiles | _ColumnViews:
    """Positional reads of the files of ``source`` (a list of Arrow files, or a dataset that
    reads whole files), else numpy views of an in-memory dataset."""
    if isinstance(source, (list, tuple)):
        return _ColumnFiles(source, column)
    files = _dataset_files(source)
    if files is not None:
        access = _ColumnFiles(files, column)
        if len(access) == len(source):
            return access
    return _ColumnViews(source, column)


def read_column(source: Any, column: str) -> np.ndarray:
    """A whole numeric column (a list column: each row's length) of a dataset or of Arrow
    files, without memory-mapping them."""
    return _column_access(source, column).column()


class ArrowLists(Sequence[list[int]]):
    """Row ``i`` of a ``list<int>`` column as a list of ints, from a dataset or its Arrow
    files: positional reads of the files (nothing of them stays in this process, see
    :class:`_ColumnFiles`), or numpy views of an in-memory dataset. Pickles small (file
    names and a few numbers per record batch)."""

    def __init__(self, source: Any, column: str):
        self.column = column
        self._access = _column_access(source, column)

    def __len__(self) -> int:
        return len(self._access)

    def array(self, i: int) -> np.ndarray:
        """Row ``i`` as a numpy array."""
        return self._access.row(i)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        return self._access.row(i).tolist()

    def lengths(self) -> np.ndarray:
        """The length of every row (int64; one number per row)."""
        return self._access.column()


class ArrowInts(Sequence[int]):
    """Row ``i`` of an integer column, from a dataset or its Arrow files (as :class:`ArrowLists`)."""

    def __init__(self, source: Any, column: str):
        self.column = column
        self._access = _column_access(source, column)

    def __len__(self) -> int:
        return len(self._access)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        return int(self._access.row(i))


# --------------------------------------------------------------------------- reading
def _check_text_field(ds: Any, source: str, text_field: str) -> None:
    if text_field not in ds.column_names:
        raise DataError(
            f"{source}: no field {text_field!r} in the documents (fields: {', '.join(ds.column_names)}); "
            "set data.text_field"
        )


def source_dataset(source: str, *, text_field: str = "text", max_documents: int | None = None) -> Any:
    """The documents of ``source`` as a ``datasets.Dataset`` (the loader's memory-mapped Arrow
    cache), checked to have ``text_field`` and cut to ``max_documents``. A local file that is
    missing, a directory, empty, binary, not UTF-8, broken gzip or not JSON lines raises
    ``DataError`` naming the file (and line). ``hf://NAME[:SPLIT]`` is downloaded (not
    streamed: the objectives read documents by index) and memory-mapped the same way."""
    import datasets

    datasets.disable_progress_bars()
    if source.startswith("hf://"):
        name, _, split = source[len("hf://") :].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
    else:
        path = check_data_file(source)
        kind = "json" if _is_json(path) else "text"
        try:
            with datasets_quiet():
                ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # datasets wraps the cause; read the file ourselves to name it
            problem = diagnose_data_file(path)
            if problem is None:
                first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
                problem = DataError(f"{source}: cannot be read as {kind} documents ({first}) — check the file")
            raise problem from None
    _check_text_field(ds, source, text_field)
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    return ds


def split_key(doc_id: str) -> float:
    """A document's place in ``[0, 1)`` for :func:`held_out_split` (a hash of its id)."""
    return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64


#: Bump when the document index (ids, empty flags, held-out keys) changes.
_INDEX_VERSION = 1
_INDEX_FEATURES = {"id": "string", "nonempty": "bool", "split_key": "float64"}


def _features(spec: dict[str, Any]) -> Any:
    import datasets

    def one(kind: Any) -> Any:
        if isinstance(kind, list):
            return datasets.List(one(kind[0]))
        return datasets.Value(kind)

    return datasets.Features({name: one(kind) for name, kind in spec.items()})


def _index_batch(texts: list[Any], *rest: list[Any], has_ids: bool) -> dict[str, list[Any]]:
    """One batch of the document index: ids (``str`` of the id field, else of the row
    number), whether the text is non-empty, and the held-out key of the id."""
    ids = [str(i) for i in (rest[0] if has_ids else rest[-1])]
    return {
        "id": ids,
        "nonempty": [isinstance(t, str) and bool(t.strip()) for t in texts],
        "split_key": [split_key(i) for i in ids],
    }


def _document_tokens_batch(texts: list[Any], *, tokenizer: Any) -> dict[str, list[Any]]:
    texts = [t if isinstance(t, str) else "" for t in texts]
    if not texts:
        return {"input_ids": []}
    out = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                    verbose=False)["input_ids"]
    return {"input_ids": out}


class _DocumentTable:
    """What the views of one corpus share: the source dataset (its text column), the
    index (``id``, ``nonempty``, ``split_key`` per row), and memoised token ids."""

    def __init__(self, dataset: Any, text_field: str, index: Any, key: str):
        self.dataset, self.text_field, self.index, self.key = dataset, text_field, index, key
        self.texts = dataset.select_columns([text_field])
        self.ids = index.select_columns(["id"])
        self.split_keys = read_column(index, "split_key").astype(np.float64)
        self._tokens: dict[str, ArrowLists] = {}


class RowView(Sequence[Any]):
    """A view of some rows of an Arrow-backed table: it holds the table and the row numbers
    only. Subclasses read one item (``_item``) and iterate in batches; slicing and
    :meth:`take` give a view of the same class, and equality compares items, so a view
    equals the list of documents it stands for."""

    def __init__(self, table: Any, rows: np.ndarray):
        self.table = table
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def _item(self, row: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return type(self)(self.table, self.rows[i])
        return self._item(int(self.rows[i]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} documents)"

    def take(self, selection: Any) -> Any:
        """The view of ``selection`` (a boolean mask or positions) of this view's rows."""
        return type(self)(self.table, self.rows[np.asarray(selection)])


class DocumentCorpus(RowView):
    """Documents of an Arrow dataset, read when asked for: ``corpus[i]`` is a
    :class:`Document`, iteration reads in batches. A view (``take``, slices,
    :func:`held_out_split`) shares the dataset and holds only its row numbers."""

    table: _DocumentTable

    def _item(self, row: int) -> Document:
        t = self.table
        text = t.texts[row][t.text_field]
        return Document(t.ids[row]["id"], text if isinstance(text, str) else "")

    def __iter__(self) -> Iterator[Document]:
        t = self.table
        for start in range(0, len(self.rows), 256):
            rows = self.rows[start : start + 256].tolist()
            texts, ids = t.texts[rows][t.text_field], t.ids[rows]["id"]
            for doc_id, text in zip(ids, texts):
                yield Document(doc_id, text if isinstance(text, str) else "")

    def split_keys(self) -> np.ndarray:
        """:func:`split_key` of each document's id (float64, one per document of the view)."""
        return self.table.split_keys[self.rows]

    def ids(self, positions: Any) -> list[str]:
        """The ids of the documents at ``positions`` of this view."""
        rows = self.rows[np.asarray(positions, dtype=np.int64)].tolist()
        return list(self.table.ids[rows]["id"]) if rows else []

    def token_ids(self, tokenizer: Any, num_proc: int | None = None) -> ArrowLists:
        """Token ids (no special tokens, no truncation) of every row of the underlying
        dataset, index by ``self.rows[i]``: a ``Dataset.map`` cached beside the source's
        Arrow files, keyed by the source's fingerprint and the tokenizer."""
        t = self.table
        fp = fingerprint_of("document-tokens", 1, t.key, tokenizer_fingerprint(tokenizer))
        if fp not in t._tokens:
            out = map_to_files(
                t.dataset, _document_tokens_batch, fingerprint=fp, num_proc=num_proc, input_columns=[t.text_field],
                remove_columns=t.dataset.column_names, features=_features({"input_ids": ["int32"]}),
                fn_kwargs={"tokenizer": tokenizer}, batch_size=256, desc="tokenizing documents",
                progress=len(t.dataset) >= 1000,
            )
            t._tokens[fp] = ArrowLists(out, "input_ids")
        return t._tokens[fp]


def load_documents(
    source: str,
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    max_documents: int | None = None,
    keep_empty: bool = False,
    num_proc: int | None = None,
) -> DocumentCorpus:
    """Read documents from a ``.jsonl[.gz]`` / ``.json`` / ``.txt[.gz]`` file or
    ``hf://NAME[:SPLIT]``. Empty documents are dropped and an empty corpus raises,
    unless ``keep_empty`` (then they come back with text ``""``, for callers that
    count them). A local file that is missing, a directory, empty, binary, not UTF-8,
    broken gzip or not JSON lines raises ``DataError`` naming the file (and line).

    The result is a :class:`DocumentCorpus` over the loader's memory-mapped Arrow data;
    the ids (``str`` of ``id_field``, else the row number), the empty flags and the
    held-out keys are a cached ``Dataset.map`` (``num_proc`` processes)."""
    ds = source_dataset(source, text_field=text_field, max_documents=max_documents)
    has_ids = bool(id_field) and id_field in ds.column_names
    key = fingerprint_of("documents", ds._fingerprint, text_field, id_field if has_ids else None)
    index = cached_map(
        ds, _index_batch, fingerprint=fingerprint_of("document-index", _INDEX_VERSION, key), num_proc=num_proc,
        input_columns=[text_field, id_field] if has_ids else [text_field], with_indices=True,
        remove_columns=ds.column_names, features=_features(_INDEX_FEATURES), fn_kwargs={"has_ids": has_ids},
        desc="indexing documents",
    )
    table = _DocumentTable(ds, text_field, index, key)
    if keep_empty:
        return DocumentCorpus(table, np.arange(len(ds), dtype=np.int64))
    rows = np.flatnonzero(np.asarray(index.data.column("nonempty").to_numpy(zero_copy_only=False), dtype=bool))
    if not len(rows):
        raise DataError(f"{source}: the corpus has no non-empty documents")
    return DocumentCorpus(table, rows)


def as_document_corpus(documents: Sequence[Document]) -> DocumentCorpus:
    """``documents`` as a :class:`DocumentCorpus` (a list is put into an in-memory dataset)."""
    if isinstance(documents, DocumentCorpus):
        return documents
    import datasets

    docs = list(documents)
    ds = datasets.Dataset.from_dict({"id": [d.id for d in docs], "text": [d.text for d in docs]},
                                    features=_features({"id": "string", "text": "string"}))
    index = datasets.Dataset.from_dict(
        _index_batch([d.text for d in docs], [d.id for d in docs], list(range(len(docs))), has_ids=True),
        features=_features(_INDEX_FEATURES),
    )
    key = fingerprint_of("document-list", [[d.id, d.text] for d in docs])
    return DocumentCorpus(_DocumentTable(ds, "text", index, key), np.arange(len(docs), dtype=np.int64))


def held_out_split(docs: Sequence[Any], fraction: float) -> tuple[Any, Any]:
    """Deterministic train / held-out split by a hash of the document id (stable when
    documents are added or reordered): a document is held out when ``split_key(id) <
    fraction``. A :class:`DocumentCorpus` (or sentence-document view) splits into two
    views from its stored keys; a list into two lists."""
    if hasattr(docs, "split_keys") and hasattr(docs, "take"):
        if fraction <= 0:
            return docs, docs.take(np.zeros(len(docs), dtype=bool))
        held = docs.split_keys() < fraction
        return docs.take(~held), docs.take(held)
    if fraction <= 0:
        return docs, []
    train, held_list = [], []
    for d in docs:
        (held_list if split_key(d.id) < fraction else train).append(d)
    return train, held_list
