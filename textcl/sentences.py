"""Sentence-split document corpora for the sentence-level objectives (NSP, neighbour, permutation).

Documents are read as :mod:`textcl.documents` reads them, split into sentences by
:func:`~textcl.sentence_split.split_sentences` (syntok plus two repairs; why syntok, and
how it compares with other splitters: :mod:`textcl.sentence_split`) once, in
``data.num_proc`` processes (``Dataset.map``): the result is cached on disk as
memory-mapped Arrow (see :func:`load_sentence_documents`), and so are the token ids
(:func:`tokenize_sentence_dataset`). Nothing is held per sentence in Python: the
objectives read sentences by index through :class:`SentenceDocuments` and
:class:`SentenceTokens`.

The splitter's names (``SPLITTER``, :func:`split_sentences`, :func:`splitter_version`)
are re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from textcl.arrow_cache import (
    _features,
    cached_map,
    complete_files,
    fingerprint_of,
    map_to_files,
    tokenizer_fingerprint,
)
from textcl.arrow_columns import ArrowInts, ArrowLists, RowView, read_column
from textcl.core.io import file_sha256
from textcl.core.method import MethodConfig
from textcl.core.recipe import InputFile
from textcl.data_files import DataError, check_data_file
from textcl.documents import source_dataset, split_key

# split_sentences is looked up here by _split_batch (so a test can stand in for it), and
# SPLITTER / splitter_version are re-exported: they lived here before the split.
from textcl.sentence_split import SPLITTER, split_sentences, splitter_version

__all__ = [
    "SPLITTER",
    "SentenceDataSection",
    "SentenceDocument",
    "SentenceDocuments",
    "SentenceTokens",
    "SplitStats",
    "as_sentence_documents",
    "default_cache_dir",
    "load_sentence_documents",
    "split_sentences",
    "splitter_version",
    "tokenize_sentence_dataset",
    "tokenize_sentences",
]

logger = logging.getLogger("textcl")

#: 1: one json.gz file per corpus (ignored now); 2: Arrow (``Dataset.map`` output).
_CACHE_FORMAT = 2
_TOKENS_FORMAT = 1
#: Show a progress bar when splitting at least this many documents.
_PROGRESS_MIN_DOCUMENTS = 50


@dataclass
class SentenceDocument:
    """A document as its list of sentences (in order)."""

    id: str
    sentences: list[str]


@dataclass
class SplitStats:
    """What :func:`load_sentence_documents` read, kept and skipped."""

    documents: int  # documents read
    kept: int  # documents kept
    empty: int  # documents with no sentence
    too_few_sentences: int  # documents with fewer than min_sentences sentences (skipped, counted)
    sentences: int  # sentences in kept documents

    def describe(self) -> str:
        """One line for logs and model cards."""
        return (
            f"{self.kept} of {self.documents} documents kept ({self.sentences} sentences); "
            f"skipped {self.empty} empty and {self.too_few_sentences} with too few sentences"
        )


class SentenceDataSection(MethodConfig):
    """The ``data:`` recipe section shared by the sentence-level objectives."""

    documents: InputFile
    text_field: str = "text"
    id_field: str = "id"
    max_documents: int | None = Field(None, ge=1)
    held_out_fraction: float = Field(0.02, ge=0, lt=1, description="document-level split (held_out_split)")
    max_eval_documents: int = Field(128, ge=2)
    min_sentences: int = Field(2, ge=1)
    max_tokens: int = Field(48, ge=1, description="per sentence, special tokens excluded (truncation)")
    cache_dir: str | None = Field(
        None, description="sentence-split and token-id caches (Arrow); default $TEXTCL_CACHE/sentences or "
        "~/.cache/textcl/sentences"
    )
    num_proc: int | None = Field(
        None, ge=1, description="processes for sentence splitting and tokenisation (datasets map); "
        "default: the CPUs available"
    )


# --------------------------------------------------------------------------- loading + cache
def default_cache_dir() -> Path:
    """``$TEXTCL_CACHE/sentences``, else ``$XDG_CACHE_HOME/textcl/sentences``, else
    ``~/.cache/textcl/sentences``."""
    if os.environ.get("TEXTCL_CACHE"):
        return Path(os.environ["TEXTCL_CACHE"]).expanduser() / "sentences"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "textcl" / "sentences"


_SENTENCE_FEATURES = {"id": "string", "sentences": ["string"], "num_sentences": "int32", "split_key": "float64"}
_TOKEN_FEATURES = {"input_ids": ["int32"], "text_key": "int64"}
#: Keep the low 63 bits of a hash (a non-negative int64).
_KEY_MASK = 0x7FFFFFFFFFFFFFFF


def _cache_digest(content_id: str, text_field: str, id_field: str | None, max_documents: int | None) -> str:
    key = json.dumps(
        [content_id, splitter_version(), text_field, id_field, max_documents, _CACHE_FORMAT], separators=(",", ":")
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def _cache_stem(source: str) -> str:
    """For people browsing the cache only: a lookup goes by the digest."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.removeprefix("hf://")).name.split(".")[0])[:40]
    return stem or "corpus"


def _load_cached(cache_root: Path, digest: str) -> _SentenceTable | None:
    """The sentence dataset cached under ``digest`` (one file, or every shard of a
    ``num_proc`` run; any file-name stem); None on a miss. Only its per-document columns are
    read (the files are opened when documents are). Unreadable files are logged and
    removed, so the split runs again."""
    if not cache_root.is_dir():
        return None
    pattern = re.compile(rf"(.+-{digest})(?:_(\d{{5}})_of_(\d{{5}}))?\.arrow")
    sets: dict[tuple[str, int], dict[int, Path]] = {}
    for path in sorted(cache_root.glob(f"*-{digest}*.arrow")):
        m = pattern.fullmatch(path.name)
        if m:
            n = int(m.group(3) or 1)
            sets.setdefault((m.group(1), n), {})[int(m.group(2) or 0)] = path
    for (_, n), shards in sorted(sets.items()):
        if sorted(shards) != list(range(n)):
            continue  # an interrupted num_proc run: map finishes it
        try:
            return _SentenceTable(digest, cache_root, files=[str(shards[r]) for r in range(n)])
        except Exception:  # noqa: BLE001 - a truncated or foreign file: split again
            pass
        logger.warning("sentence cache %s is unreadable; splitting again", shards[0])
        for path in shards.values():
            path.unlink(missing_ok=True)
    return None


def _split_batch(texts: list[Any], *rest: list[Any], has_ids: bool) -> dict[str, list[Any]]:
    """One ``Dataset.map`` batch: id (``str`` of the id field, else of the row number),
    sentences, their number, and the held-out key of the id."""
    ids = [str(i) for i in (rest[0] if has_ids else rest[-1])]
    sentences = [split_sentences(t) if isinstance(t, str) else [] for t in texts]
    return {
        "id": ids,
        "sentences": sentences,
        "num_sentences": [len(s) for s in sentences],
        "split_key": [split_key(i) for i in ids],
    }


class _SentenceTable:
    """What the views of one sentence dataset share: the dataset (``id``, ``sentences``,
    ``num_sentences``, ``split_key`` per document: its Arrow ``files``, opened when
    documents are read, or an in-memory ``dataset``), its cache key and directory, the
    per-document counts and keys (one number per document) and memoised token ids."""

    def __init__(self, key: str, cache_dir: Path | None, *, files: list[str] | None = None,
                 dataset: Any = None):
        self.key, self.cache_dir, self.files, self._dataset = key, cache_dir, files, dataset
        source = files if files is not None else dataset
        self.num_sentences = read_column(source, "num_sentences").astype(np.int64)
        self.split_keys = read_column(source, "split_key").astype(np.float64)
        if len(self.split_keys) != len(self.num_sentences):
            raise ValueError(f"sentence cache {files}: columns of different lengths")
        self.sentence_start = np.concatenate([[0], np.cumsum(self.num_sentences)]).astype(np.int64)
        self._rows: Any = None
        self.tokens: dict[str, SentenceTokens] = {}

    @property
    def dataset(self) -> Any:
        """The ``datasets.Dataset`` (memory-mapped files are opened on first use)."""
        if self._dataset is None:
            import datasets

            parts = [datasets.Dataset.from_file(f) for f in self.files or []]
            self._dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        return self._dataset

    @property
    def rows(self) -> Any:
        if self._rows is None:
            self._rows = self.dataset.select_columns(["id", "sentences"])
        return self._rows


class SentenceDocuments(RowView):
    """Sentence-split documents in Arrow, read when asked for: ``docs[i]`` is a
    :class:`SentenceDocument`; iteration reads in batches. A view (``take``, slices,
    :func:`~textcl.documents.held_out_split`) shares the dataset and holds its row numbers."""

    table: _SentenceTable

    def _item(self, row: int) -> SentenceDocument:
        item = self.table.rows[row]
        return SentenceDocument(item["id"], list(item["sentences"]))

    def __iter__(self) -> Iterator[SentenceDocument]:
        for start in range(0, len(self.rows), 256):
            batch = self.table.rows[self.rows[start : start + 256].tolist()]
            for doc_id, sentences in zip(batch["id"], batch["sentences"]):
                yield SentenceDocument(doc_id, list(sentences))

    @property
    def lengths(self) -> np.ndarray:
        """Sentences per document of the view (int64)."""
        return self.table.num_sentences[self.rows]

    def split_keys(self) -> np.ndarray:
        """:func:`~textcl.documents.split_key` of each document's id (one per document)."""
        return self.table.split_keys[self.rows]


def as_sentence_documents(docs: Sequence[SentenceDocument]) -> SentenceDocuments:
    """``docs`` as :class:`SentenceDocuments` (a list is put into an in-memory dataset)."""
    if isinstance(docs, SentenceDocuments):
        return docs
    import datasets

    docs = list(docs)
    ids = [d.id for d in docs]
    ds = datasets.Dataset.from_dict(
        {"id": ids, "sentences": [list(d.sentences) for d in docs],
         "num_sentences": [len(d.sentences) for d in docs], "split_key": [split_key(i) for i in ids]},
        features=_features(_SENTENCE_FEATURES),
    )
    key = fingerprint_of("sentence-list", [[d.id, d.sentences] for d in docs])
    return SentenceDocuments(_SentenceTable(key, None, dataset=ds), np.arange(len(docs), dtype=np.int64))


def _sentence_table(source: str, *, text_field: str, id_field: str | None, max_documents: int | None,
                    cache_root: Path, num_proc: int | None) -> _SentenceTable:
    local = not source.startswith("hf://")
    if local:
        path = check_data_file(source)  # missing, a directory, empty, binary, not UTF-8
        digest = _cache_digest(file_sha256(path), text_field, id_field, max_documents)
        cached = _load_cached(cache_root, digest)
        if cached is not None:
            logger.info("sentences of %s from the cache %s", source, cache_root)
            return cached
    raw = source_dataset(source, text_field=text_field, max_documents=max_documents)
    if not local:
        digest = _cache_digest(f"{source}@{raw._fingerprint}", text_field, id_field, max_documents)
        cached = _load_cached(cache_root, digest)
        if cached is not None:
            return cached
    has_ids = bool(id_field) and id_field in raw.column_names
    split = cached_map(
        raw, _split_batch, fingerprint=digest, cache_file=cache_root / f"{_cache_stem(source)}-{digest}.arrow",
        num_proc=num_proc, input_columns=[text_field, id_field] if has_ids else [text_field], with_indices=True,
        remove_columns=raw.column_names, features=_features(_SENTENCE_FEATURES), fn_kwargs={"has_ids": has_ids},
        batch_size=64, desc="splitting sentences", progress=len(raw) >= _PROGRESS_MIN_DOCUMENTS,
    )
    if split.cache_files:
        return _SentenceTable(digest, cache_root, files=[f["filename"] for f in split.cache_files])
    return _SentenceTable(digest, None, dataset=split)  # the cache directory cannot be written


def load_sentence_documents(
    source: str,
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    max_documents: int | None = None,
    min_sentences: int = 2,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
) -> tuple[SentenceDocuments, SplitStats]:
    """Read documents (textcl.documents.source_dataset: .jsonl[.gz]/.txt[.gz]/hf://), split into
    sentences (cached on disk by file content hash + splitter name/version), skip and count
    empty / too-short documents; raise DataError if nothing is left.

    Splitting is a ``Dataset.map`` in ``num_proc`` processes (default: the CPUs available;
    small corpora stay in this process) written as Arrow into ``cache_dir`` (default
    :func:`default_cache_dir`) under a fingerprint: the SHA-256 of the file's bytes (for
    ``hf://`` sources: the dataset's fingerprint), the splitter name and version, the
    fields read and ``max_documents``. The cache holds every document's sentences, empty
    ones included, so any ``min_sentences`` reuses it; the same content under another file
    name is a hit, changed content a miss. The result is a view of the memory-mapped
    cache, read when asked for.
    """
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    table = _sentence_table(source, text_field=text_field, id_field=id_field, max_documents=max_documents,
                            cache_root=cache_root, num_proc=num_proc)
    counts = table.num_sentences
    kept = np.flatnonzero(counts >= min_sentences)
    empty = int((counts == 0).sum())
    stats = SplitStats(
        documents=len(counts),
        kept=len(kept),
        empty=empty,
        too_few_sentences=len(counts) - len(kept) - empty,
        sentences=int(counts[kept].sum()),
    )
    if not len(kept):
        raise DataError(
            f"{source}: no document has at least {min_sentences} sentences "
            f"({stats.documents} read: {stats.empty} empty, {stats.too_few_sentences} with fewer "
            f"than {min_sentences} sentences); check data.text_field ({text_field!r}) and the file, "
            "or lower data.min_sentences"
        )
    if stats.empty or stats.too_few_sentences:
        logger.info("%s: %s", source, stats.describe())
    return SentenceDocuments(table, kept), stats


# --------------------------------------------------------------------------- tokenisation
def _token_ids(tokenizer: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    if not texts:
        return []
    out = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False,
    )["input_ids"]
    return [x[:max_tokens] for x in out]


def text_key(token_ids: Sequence[int]) -> int:
    """A hash of a sentence's token ids, equal for equal sentences in every process
    (``hash`` of a tuple of ints is not salted per process, unlike a str's)."""
    return hash(tuple(token_ids)) & _KEY_MASK


def _tokenize_batch(sentences: list[list[str]], *, tokenizer: Any, max_tokens: int) -> dict[str, list[Any]]:
    """One ``Dataset.map`` batch: a row per sentence of the batch's documents."""
    ids = _token_ids(tokenizer, [s for doc in sentences for s in doc], max_tokens)
    return {"input_ids": ids, "text_key": [text_key(x) for x in ids]}


class SentenceTokens:
    """Token ids of every sentence of a sentence dataset, one Arrow row per sentence in
    document order (``input_ids``: ``list<int32>``, ``text_key``: int64), read by position
    from the cache files (:class:`~textcl.documents.ArrowLists`); ``sentence_start[r]`` is
    the first sentence row of document row ``r``."""

    def __init__(self, source: Any, sentence_start: np.ndarray):
        self.ids = ArrowLists(source, "input_ids")
        self.keys = ArrowInts(source, "text_key")
        self.sentence_start = sentence_start

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_sentence_dataset(tokenizer: Any, docs: SentenceDocuments, max_tokens: int,
                              num_proc: int | None = None) -> SentenceTokens:
    """Token ids (no special tokens, truncated to ``max_tokens``) and text keys of every
    sentence of ``docs``' dataset -- all its documents, so one cache serves every view and
    ``min_sentences`` -- as a ``Dataset.map`` (``num_proc`` processes) cached beside the
    sentence cache, keyed by the sentence cache's digest, the tokenizer and ``max_tokens``."""
    table = docs.table
    fp = fingerprint_of("sentence-tokens", _TOKENS_FORMAT, table.key, tokenizer_fingerprint(tokenizer), max_tokens)
    if fp not in table.tokens:
        # A cache hit reads the files' layout only; a miss maps (and opens the sentences).
        cache_file = table.cache_dir / f"tokens-{fp}.arrow" if table.cache_dir is not None else None
        out: Any = complete_files(cache_file) if cache_file is not None else None
        if out is None:
            ds = table.dataset
            out = map_to_files(
                ds, _tokenize_batch, fingerprint=fp, cache_file=cache_file, num_proc=num_proc,
                input_columns=["sentences"], remove_columns=ds.column_names, features=_features(_TOKEN_FEATURES),
                fn_kwargs={"tokenizer": tokenizer, "max_tokens": max_tokens}, batch_size=64,
                writer_batch_size=20_000, desc="tokenizing sentences",
                progress=len(ds) >= 20 * _PROGRESS_MIN_DOCUMENTS,
            )
        tokens = SentenceTokens(out, table.sentence_start)
        if len(tokens) != int(table.sentence_start[-1]):  # pragma: no cover - a foreign cache file
            raise RuntimeError(f"{cache_file}: {len(tokens)} tokenised sentences for {int(table.sentence_start[-1])}")
        table.tokens[fp] = tokens
    return table.tokens[fp]


def tokenize_sentences(tokenizer: Any, docs: Sequence[SentenceDocument], max_tokens: int) -> list[list[list[int]]]:
    """Per document, per sentence: token ids without special tokens, truncated to max_tokens
    (Python lists: for small inputs such as a pairs file; corpora use
    :func:`tokenize_sentence_dataset`)."""
    from tqdm.auto import tqdm

    flat = [s for d in docs for s in d.sentences]
    ids: list[list[int]] = []
    chunk = 8192
    bar = tqdm(
        total=len(flat), desc="tokenizing sentences", unit="sent", dynamic_ncols=True,
        disable=len(flat) < 20 * chunk,
    )
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        ids.extend(_token_ids(tokenizer, part, max_tokens))
        bar.update(len(part))
    bar.close()
    result, pos = [], 0
    for d in docs:
        result.append(ids[pos : pos + len(d.sentences)])
        pos += len(d.sentences)
    return result
