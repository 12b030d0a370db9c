"""Checks of local corpus files, done before a loader reads them.

A corpus file that is missing, a directory, empty, binary, not UTF-8, broken gzip or not
JSON lines should fail with one line naming the file (and the line) and the fix, not with
a ``datasets`` or ``gzip`` traceback. :func:`check_data_file` reads the first 64 KiB up
front; :func:`diagnose_data_file` reads the whole file with the standard library when a
faster reader has already failed, to name the line. Every document and word corpus
reader (:mod:`textcl.documents`, :mod:`textcl.sentences`, :mod:`textcl.corpus`) goes
through here, and :class:`DataError` is the one exception they raise for bad data.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DataError",
    "check_data_file",
    "datasets_quiet",
    "diagnose_data_file",
    "json_object_lines",
    "read_problem",
    "text_problem",
]

# Bytes read up front to catch a binary, non-UTF-8 or non-gzip file before a loader does.
_SNIFF_BYTES = 1 << 16


class DataError(ValueError):
    """Training data problem (empty corpus, missing field, too-short documents, unreadable file)."""


def json_object_lines(
    path: str | Path, *, error: type[Exception] = DataError, hint: str = ""
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each non-blank line of a JSON-lines file (``.gz`` allowed), ``where``
    being ``FILE:LINE``. A line that is not JSON, or not a JSON object, raises ``error`` naming
    it; ``hint`` is appended to the invalid-JSON message (how to make the file, say)."""
    opener: Any = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: invalid JSON ({exc.msg}){hint}") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


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
