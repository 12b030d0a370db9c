"""Document corpora for document-level objectives (DeCLUTR, NSP, permutation).

Local files go through the ``datasets`` loaders (``json`` for ``.jsonl[.gz]``,
``text`` for ``.txt[.gz]``, one document per line), so the same code reads a hub
dataset for users with a network (``hf://NAME[:SPLIT]``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataError", "Document", "held_out_split", "load_documents"]


class DataError(ValueError):
    """Training data problem (empty corpus, missing field, too-short documents)."""


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
    count them)."""
    import datasets

    datasets.disable_progress_bars()
    if source.startswith("hf://"):
        name, _, split = source[len("hf://") :].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
    else:
        path = Path(source)
        suffixes = [s for s in path.suffixes if s != ".gz"]
        kind = "json" if suffixes and suffixes[-1] in (".jsonl", ".json") else "text"
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
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
