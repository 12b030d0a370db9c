"""Unlabelled sentences to fit on (whitening, token weights): read from a corpus and sampled.

Only training-corpus text goes through here, never evaluation data. Below the encoder in the
text stack: it imports only the corpus readers, lazily.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_texts", "sample_texts"]


def read_texts(source: str | Path, *, text_field: str = "text") -> list[str]:
    """Texts to fit on: lines of a ``.txt[.gz]`` file (one sentence each), or the sentences of a
    document corpus (``.jsonl[.gz]`` / ``hf://`` dataset, split by :mod:`textcl.sentences`)."""
    # Imported on use, for speed: only read_texts needs the corpus readers and the sentence
    # splitter (~0.5 s of imports, pydantic and syntok), not whiten_model or --help.
    from textcl.corpus import _is_text_file
    from textcl.data_files import check_data_file

    source = str(source)
    if _is_text_file(source):
        import gzip

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"corpus {path} not found -- fix --corpus")
        check_data_file(path)  # DataError (a ValueError), one line: empty, binary, not UTF-8
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            return [line.strip() for line in fh if line.strip()]
    from textcl.sentences import load_sentence_documents

    docs, _ = load_sentence_documents(source, text_field=text_field, id_field=None, min_sentences=1)
    return [s for d in docs for s in d.sentences]


def sample_texts(texts: Sequence[str], n: int | None, seed: int = 0) -> list[str]:
    """``n`` distinct texts drawn uniformly with ``seed`` (all of them, shuffled, if fewer)."""
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    random.Random(seed).shuffle(unique)
    return unique if n is None else unique[:n]
