"""Arrow data read by row without memory-mapping it: numeric columns and row views.

``datasets`` keeps a corpus and every derived column (ids, token ids, sentence counts) in
Arrow IPC files; the objectives read them one row at a time, in random order, for the
whole run. :class:`ArrowLists` and :class:`ArrowInts` read a row of a numeric column
with positional reads of those files (``os.pread``; why not a memory map:
:class:`_ColumnFiles`), or through numpy views when the data is in memory;
:func:`read_column` reads a whole column (a list column: its row lengths). :class:`RowView`
is the base of the corpus views (:class:`textcl.documents.DocumentCorpus`,
:class:`textcl.sentences.SentenceDocuments`): a table and row numbers, nothing per row.

Kept apart from the corpora so that the byte-level Arrow layout (record batches, offset
and value buffers) has one home, below every corpus type that reads through it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ArrowInts", "ArrowLists", "RowView", "read_column"]


def _chunk_starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


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


class _ArrowRows(Sequence[Any]):
    """Row ``i`` of one column of a dataset or of its Arrow files, converted by :meth:`_convert`
    (the indexing that :class:`ArrowLists` and :class:`ArrowInts` share)."""

    def __init__(self, source: Any, column: str):
        self.column = column
        self._access = _column_access(source, column)

    def __len__(self) -> int:
        return len(self._access)

    def _convert(self, row: np.ndarray) -> Any:
        raise NotImplementedError

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        return self._convert(self._access.row(i))


class ArrowLists(_ArrowRows, Sequence[list[int]]):
    """Row ``i`` of a ``list<int>`` column as a list of ints, from a dataset or its Arrow
    files: positional reads of the files (nothing of them stays in this process, see
    :class:`_ColumnFiles`), or numpy views of an in-memory dataset. Pickles small (file
    names and a few numbers per record batch)."""

    def array(self, i: int) -> np.ndarray:
        """Row ``i`` as a numpy array."""
        return self._access.row(i)

    def _convert(self, row: np.ndarray) -> list[int]:
        return row.tolist()

    def lengths(self) -> np.ndarray:
        """The length of every row (int64; one number per row)."""
        return self._access.column()


class ArrowInts(_ArrowRows, Sequence[int]):
    """Row ``i`` of an integer column, from a dataset or its Arrow files (as :class:`ArrowLists`)."""

    def _convert(self, row: np.ndarray) -> int:
        return int(row)


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
