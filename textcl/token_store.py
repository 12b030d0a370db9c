"""Flat numeric arrays on disk, read in slices: the token ids and sentence offsets of SGNS.

A word corpus (:mod:`textcl.corpus`) is written once as raw little-endian arrays -- its
vocabulary ids (``int32``, one per token) and sentence offsets (``int64``) -- in a cache
directory, and training reads the slice of a chunk at a time with positional reads
(``os.preadv``) into a fresh array. Nothing but the slice asked for is ever resident: as
:mod:`textcl.arrow_columns` explains, a memory map of a file read all the way through would
leave the pages it touched in the process's resident memory, so a run would grow with its
corpus again.

:class:`DiskArray` is the read side (a 1-D array you can slice, index, iterate by blocks and
pickle into ``DataLoader`` workers); :class:`ArrayWriter` the write side (appends, then
renames the finished file into place); :func:`blocks` walks any 1-D array, in memory or on
disk, a bounded number of items at a time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from textcl.core.io import file_sha256  # kept importable from here

__all__ = ["ArrayWriter", "DiskArray", "blocks", "default_cache_dir", "file_sha256", "scratch_dir"]

#: Items per block when a whole on-disk array is walked (8 MiB of int64).
BLOCK_ITEMS = 1 << 20


def default_cache_dir() -> Path:
    """``$TEXTCL_CACHE/sgns``, else ``$XDG_CACHE_HOME/textcl/sgns``, else ``~/.cache/textcl/sgns``."""
    if os.environ.get("TEXTCL_CACHE"):
        return Path(os.environ["TEXTCL_CACHE"]).expanduser() / "sgns"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "textcl" / "sgns"


def scratch_dir(prefix: str = "textcl-sgns-") -> Path:
    """A new temporary directory, removed when the process exits (for corpora that are not
    cached: hub datasets, an unwritable cache directory)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


class DiskArray:
    """A read-only 1-D array of ``dtype`` stored raw in ``path`` (little-endian, no header).

    ``a[i]`` is a numpy scalar, ``a[i:j]`` (step 1) a fresh writable array read from the file,
    ``a[index_array]`` the items at those positions (read a block at a time);
    ``np.asarray(a)`` reads the whole file (small arrays and tests only). The file
    descriptor is opened on first use in each process and not pickled.
    """

    def __init__(self, path: str | Path, dtype: Any, length: int | None = None):
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        size = self.path.stat().st_size
        if size % self.dtype.itemsize:
            raise ValueError(f"{self.path}: {size} bytes is not a whole number of {self.dtype} items")
        self.length = size // self.dtype.itemsize
        if length is not None and length != self.length:
            raise ValueError(f"{self.path}: {self.length} items, expected {length}")
        self._fd: int | None = None
        self._pid = -1

    # ---- the file
    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and getattr(self, "_pid", -1) == os.getpid():
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def read(self, start: int, stop: int) -> np.ndarray:
        """Items ``start:stop`` (clipped to the array) as a new array."""
        start, stop = max(0, int(start)), min(self.length, int(stop))
        out = np.empty(max(0, stop - start), self.dtype)
        view, at, fd = memoryview(out).cast("B"), start * self.dtype.itemsize, self._file()
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[done:]], at + done)
            else:  # pragma: no cover - no preadv (older macOS): a read, then a copy
                data = os.pread(fd, len(view) - done, at + done)
                n = len(data)
                view[done : done + n] = data
            if n <= 0:
                raise OSError(f"{self.path}: the file ended at byte {at + done} (truncated cache file?)")
            done += n
        return out

    # ---- the array
    def __len__(self) -> int:
        return self.length

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    @property
    def ndim(self) -> int:
        return 1

    @property
    def nbytes(self) -> int:
        return self.length * self.dtype.itemsize

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.length)
            if step != 1:
                return self.read(0, self.length)[index]
            return self.read(start, max(start, stop))
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.length if index < 0 else 0)
            if not 0 <= i < self.length:
                raise IndexError(f"index {int(index)} out of range for {self.length} items")
            return self.read(i, i + 1)[0]
        return self.take(np.asarray(index))

    def take(self, index: np.ndarray) -> np.ndarray:
        """The items at positions ``index`` (any shape of integers; negative ones from the end)."""
        index = np.asarray(index, dtype=np.int64)
        flat = np.where(index < 0, index + self.length, index).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= self.length):
            raise IndexError(f"index out of range for {self.length} items")
        out = np.empty(flat.size, self.dtype)
        order = np.argsort(flat, kind="stable")
        wanted = flat[order]
        for start, block in blocks(self):
            lo, hi = np.searchsorted(wanted, [start, start + len(block)])
            out[order[lo:hi]] = block[wanted[lo:hi] - start]
        return out.reshape(index.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(0, self.length)
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[Any]:
        return self.read(0, self.length).tolist()

    def __repr__(self) -> str:
        return f"DiskArray({str(self.path)!r}, {self.dtype}, {self.length} items)"


def blocks(array: Any, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, array[start:start + size])`` over a 1-D array in memory or a :class:`DiskArray`
    (``size`` default :data:`BLOCK_ITEMS`)."""
    size = max(1, int(size or BLOCK_ITEMS))
    for start in range(0, len(array), size):
        yield start, array[start : start + size]


class ArrayWriter:
    """Appends arrays of one ``dtype`` to ``path`` (through ``path.partial``, renamed into
    place by :meth:`close`, so a reader never sees half a file). A context manager: an
    exception leaves no file behind."""

    def __init__(self, path: str | Path, dtype: Any):
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._partial, "wb")
        self.length = 0

    def write(self, values: Any) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self._fh.write(memoryview(values).cast("B"))
        self.length += len(values)

    def close(self) -> DiskArray:
        """Finish the file; the array written, for reading."""
        self._fh.close()
        os.replace(self._partial, self.path)
        return DiskArray(self.path, self.dtype, self.length)

    def abort(self) -> None:
        self._fh.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is not None:
            self.abort()
        elif not self._fh.closed:
            self.close()
