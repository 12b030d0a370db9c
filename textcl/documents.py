"""Document corpora for document-level objectives (DeCLUTR, NSP, permutation).

Local files go through the ``datasets`` loaders (``json`` for ``.jsonl[.gz]``,
``text`` for ``.txt[.gz]``, one document per line), so the same code reads a hub
dataset for users with a network (``hf://NAME[:SPLIT]``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DataError",
    "Document",
    "check_data_file",
    "datasets_quiet",
    "diagnose_data_file",
    "held_out_split",
    "load_documents",
    "read_problem",
    "text_problem",
]

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


def load_documents(
    source: str,
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    max_documents: int | None = None,
    keep_empty: bool = False,
) -> list[Document]:
    """Read documents from a ``.jsonl[.gz]`` / ``.json`` / ``.txt[.gz]`` file or
    ``hf://NAME[:SPLIT]``. Empty documents are dropped and an empty corpus raises,
    unless ``keep_empty`` (then they come back with text ``""``, for callers that
    count them). A local file that is missing, a directory, empty, binary, not UTF-8,
    broken gzip or not JSON lines raises ``DataError`` naming the file (and line)."""
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
    if text_field not in ds.column_names:
        raise DataError(
            f"{source}: no field {text_field!r} in the documents (fields: {', '.join(ds.column_names)}); "
            "set data.text_field"
        )
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    texts = ds[text_field]
    ids = ds[id_field] if id_field and id_field in ds.column_names else list(range(len(ds)))
    if keep_empty:
        return [Document(str(i), t if isinstance(t, str) else "") for i, t in zip(ids, texts)]
    docs = [Document(str(i), t) for i, t in zip(ids, texts) if isinstance(t, str) and t.strip()]
    if not docs:
        raise DataError(f"{source}: the corpus has no non-empty documents")
    return docs


def held_out_split(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """Deterministic train / held-out split by a hash of the document id (stable when
    documents are added or reordered)."""
    if fraction <= 0:
        return docs, []
    train, held = [], []
    for d in docs:
        h = int.from_bytes(hashlib.sha1(d.id.encode("utf-8")).digest()[:8], "big") / 2**64
        (held if h < fraction else train).append(d)
    return train, held
