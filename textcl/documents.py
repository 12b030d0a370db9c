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

This module holds the document corpus itself: reading a source into a dataset, the
document index (ids, empty flags, held-out keys), the :class:`DocumentCorpus` view and
the held-out split. What it builds on lives below it, one concern each:
:mod:`textcl.data_files` (checking a corpus file, :class:`DataError`),
:mod:`textcl.arrow_cache` (cached ``Dataset.map`` and fingerprints) and
:mod:`textcl.arrow_columns` (reading Arrow columns by row, :class:`RowView`). Their
names are re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Re-exported: these names lived here before the split, and callers import them from here.
from textcl.arrow_cache import (  # noqa: F401
    MIN_ROWS_PER_PROCESS,
    _features,
    cached_map,
    complete_files,
    default_num_proc,
    fingerprint_of,
    map_processes,
    map_to_files,
    tokenizer_fingerprint,
)
from textcl.arrow_columns import ArrowInts, ArrowLists, RowView, read_column
from textcl.data_files import (
    DataError,
    _is_json,
    check_data_file,
    datasets_quiet,
    diagnose_data_file,
    read_problem,
    text_problem,
)

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


@dataclass
class Document:
    id: str
    text: str


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
