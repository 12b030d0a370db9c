"""Word vectors in the word2vec text / binary formats (numpy only; no gensim needed).

``WordVectors`` holds a vocabulary (a list of words, most frequent first, as word2vec
writes it) and a float32 matrix with one row per word. Files written by :meth:`WordVectors.save`
load in ``gensim.models.KeyedVectors.load_word2vec_format`` to the same words and values.

Formats (both start with a header line ``"<count> <dim>"``):

* text: one line per word, ``word v1 ... vdim`` separated by single spaces;
* binary: per word, the UTF-8 word, a space, ``dim`` little-endian float32 values and a
  newline (the C word2vec layout; a missing newline is accepted, as gensim does).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

__all__ = ["VECTOR_FILE_NAMES", "WordVectors", "init_embeddings_from_word_vectors"]

logger = logging.getLogger(__name__)

#: Names looked for, in this order, when ``WordVectors.load`` is given a directory.
VECTOR_FILE_NAMES = ("vectors.bin", "vectors.txt")

_FLOAT = np.dtype("<f4")  # word2vec binary files are little-endian float32


def _open(path: Path, mode: str, compress: bool | None = None) -> IO[bytes]:
    """``path`` opened in binary ``mode``, through gzip if ``compress`` (default: a .gz suffix)."""
    if compress is None:
        compress = path.suffix == ".gz"
    return gzip.open(path, mode) if compress else open(path, mode)  # type: ignore[return-value]


def _format_suffix(path: Path) -> str:
    """The suffix that names the format (``vectors.bin.gz`` -> ``.bin``)."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _looks_binary(path: Path, header_len: int) -> bool:
    """Sniff a file without a telling suffix: float32 bytes are rarely valid, NUL-free UTF-8."""
    with _open(path, "rb") as fh:
        sample = fh.read(header_len + 4096)[header_len:]
    if b"\0" in sample:
        return True
    try:
        # A cut multi-byte character at the end of the sample is not evidence of binary.
        sample.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < len(sample) - 4
    return False


class WordVectors:
    """A vocabulary and its float32 vectors; row ``i`` of :attr:`vectors` is ``words[i]``."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray) -> None:
        """``words`` must be unique; ``vectors`` is ``(len(words), dim)`` (copied to float32)."""
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"vectors must be 2-d (words, dim), got shape {matrix.shape}")
        words = [str(w) for w in words]
        if len(words) != matrix.shape[0]:
            raise ValueError(f"{len(words)} words but {matrix.shape[0]} vectors")
        index = {w: i for i, w in enumerate(words)}
        if len(index) != len(words):
            dupes = sorted(w for w, n in Counter(words).items() if n > 1)[:5]
            raise ValueError(f"duplicate words in the vocabulary: {dupes}")
        self.words: list[str] = words
        self.index: dict[str, int] = index
        self.vectors: np.ndarray = matrix
        self._unit: np.ndarray | None = None

    # ------------------------------------------------------------------ container protocol

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        """The vector of ``word`` (a view into :attr:`vectors`); KeyError if unknown."""
        return self.vectors[self._row(word)]

    def __repr__(self) -> str:
        return f"WordVectors({len(self)} words, dim={self.dim})"

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return int(self.vectors.shape[1])

    def _row(self, word: str) -> int:
        try:
            return self.index[word]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words)") from None

    # ------------------------------------------------------------------ similarity

    @property
    def unit_vectors(self) -> np.ndarray:
        """Rows scaled to unit length (zero rows stay zero), computed once and cached."""
        if self._unit is None or self._unit.shape != self.vectors.shape:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            # Zero vectors (e.g. padding rows) get cosine 0 with everything instead of NaN.
            self._unit = self.vectors / np.maximum(norms, np.finfo(np.float32).tiny)
        return self._unit

    def similarity(self, w1: str, w2: str) -> float:
        """Cosine similarity of two words."""
        unit = self.unit_vectors
        return float(unit[self._row(w1)] @ unit[self._row(w2)])

    def most_similar(
        self,
        word_or_vector: str | Sequence[str] | np.ndarray,
        topn: int = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]:
        """The ``topn`` words nearest by cosine, best first, as ``(word, cosine)``.

        A list of words queries the mean of their unit vectors (as gensim's ``positive=``);
        query words are never returned. ``restrict_vocab`` searches only the first N words.
        """
        exclude: list[int] = []
        if isinstance(word_or_vector, str):
            word_or_vector = [word_or_vector]
        if isinstance(word_or_vector, np.ndarray):
            query = np.asarray(word_or_vector, dtype=np.float32)
            if query.shape != (self.dim,):
                raise ValueError(f"query vector must have shape ({self.dim},), got {query.shape}")
        else:
            exclude = [self._row(w) for w in word_or_vector]
            if not exclude:
                raise ValueError("most_similar needs at least one word")
            query = self.unit_vectors[exclude].mean(axis=0)
        query = query / max(float(np.linalg.norm(query)), np.finfo(np.float32).tiny)
        limit = len(self) if restrict_vocab is None else max(0, min(int(restrict_vocab), len(self)))
        scores = self.unit_vectors[:limit] @ query
        excluded = [i for i in exclude if i < limit]
        scores[excluded] = -np.inf
        k = min(topn, limit - len(set(excluded)))
        if k <= 0:
            return []
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(self.words[i], float(scores[i])) for i in best]

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        binary: bool | None = None,
        limit: int | None = None,
        unicode_errors: str = "strict",
    ) -> WordVectors:
        """Read word2vec text or binary vectors, or a directory holding ``vectors.bin``/``.txt``.

        ``binary=None`` decides by suffix (``.bin`` binary; ``.txt``/``.vec`` text; else by
        content); ``.gz`` files are read through gzip. ``limit`` reads only the first N words.
        A word repeated in the file keeps its first vector (with a warning), as gensim does.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            found = [path / n for n in VECTOR_FILE_NAMES if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"{path} is a directory without {' or '.join(VECTOR_FILE_NAMES)}"
                )
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"word vectors file {path} does not exist")
        with _open(path, "rb") as fh:
            header = fh.readline()
        count, dim = cls._parse_header(header, path)
        if limit is not None:
            count = min(count, max(int(limit), 0))
        if binary is None:
            suffix = _format_suffix(path)
            binary = suffix == ".bin" or (
                suffix not in (".txt", ".vec") and _looks_binary(path, len(header))
            )
        reader = cls._read_binary if binary else cls._read_text
        words, matrix = reader(path, len(header), count, dim, unicode_errors)
        return cls(words, matrix)

    @staticmethod
    def _parse_header(header: bytes, path: Path) -> tuple[int, int]:
        parts = header.split()
        try:
            count, dim = (int(p) for p in parts)
        except ValueError:
            text = header[:80].decode("utf-8", "replace").strip()
            raise ValueError(
                f"{path}, line 1: expected a word2vec header '<count> <dim>', got {text!r}"
            ) from None
        if count < 0 or dim < 1:
            raise ValueError(f"{path}, line 1: invalid word2vec header (count={count}, dim={dim})")
        return count, dim

    @staticmethod
    def _finish(words: list[str], matrix: np.ndarray, path: Path) -> tuple[list[str], np.ndarray]:
        """Keep each repeated word's first row (gensim's rule), with a warning."""
        first: dict[str, int] = {}
        for row, word in enumerate(words):
            if word in first:
                logger.warning("%s: duplicate word %r, keeping its first vector", path, word)
            else:
                first[word] = row
        if len(first) == len(words):
            return words, matrix
        return list(first), matrix[list(first.values())]

    @classmethod
    def _read_text(
        cls, path: Path, header_len: int, count: int, dim: int, errors: str
    ) -> tuple[list[str], np.ndarray]:
        matrix = np.empty((count, dim), dtype=np.float32)
        words: list[str] = []
        with _open(path, "rb") as fh:
            fh.readline()
            for i in range(count):
                line_no = i + 2
                raw = fh.readline()
                if not raw:
                    raise ValueError(
                        f"{path}, line {line_no}: file ends after {i} of {count} vectors "
                        "(is the header's count right?)"
                    )
                # Split on single spaces like gensim: a word may hold other whitespace (e.g. NBSP).
                try:
                    parts = raw.decode("utf-8", errors).rstrip().split(" ")
                except UnicodeDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid UTF-8: {err}") from None
                if len(parts) != dim + 1:
                    raise ValueError(
                        f"{path}, line {line_no}: expected a word and {dim} values, "
                        f"got {len(parts) - 1} values"
                    )
                try:
                    matrix[i] = np.array(parts[1:], dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{path}, line {line_no}: non-numeric vector value") from None
                words.append(parts[0])
        return cls._finish(words, matrix, path)

    @classmethod
    def _read_binary(
        cls, path: Path, header_len: int, count: int, dim: int, errors: str
    ) -> tuple[list[str], np.ndarray]:
        with _open(path, "rb") as fh:
            data = fh.read()
        width = dim * _FLOAT.itemsize
        words: list[str] = []
        matrix = np.empty((count, dim), dtype=np.float32)
        pos = header_len
        for i in range(count):
            space = data.find(b" ", pos)
            if space == -1 or len(data) - (space + 1) < width:
                raise ValueError(
                    f"{path}: binary file ends after {i} of {count} vectors "
                    "(is the header's count or dim right?)"
                )
            # Records may end in "\n" (C word2vec) or not (gensim): strip it from the next word.
            try:
                words.append(data[pos:space].decode("utf-8", errors).lstrip("\n"))
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}: word {i + 1} (byte {pos}) is not valid UTF-8: {err}"
                ) from None
            matrix[i] = np.frombuffer(data, dtype=_FLOAT, count=dim, offset=space + 1)
            pos = space + 1 + width
        return cls._finish(words, matrix, path)

    # ------------------------------------------------------------------ writing

    def save(self, path: str | os.PathLike[str], binary: bool | None = None) -> Path:
        """Write word2vec text or binary (``binary=None``: binary iff the suffix is ``.bin``).

        Text values use ``%.9g``, which float32 reads back exactly. The file is written
        under a temporary name and renamed into place, so readers never see half a file.
        """
        path = Path(path).expanduser()
        if binary is None:
            binary = _format_suffix(path) == ".bin"
        for i, word in enumerate(self.words):
            # The formats separate words by a space and records by a newline.
            if not word or any(c in word for c in " \n\r"):
                raise ValueError(
                    f"word {i} ({word!r}) is empty or holds a space/newline: not writable"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with _open(tmp, "wb", compress=path.suffix == ".gz") as fh:
                fh.write(f"{len(self)} {self.dim}\n".encode())
                if binary:
                    self._write_binary(fh)
                else:
                    self._write_text(fh)
            with open(tmp, "rb+") as raw:
                os.fsync(raw.fileno())  # data on disk before the rename makes it visible
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def _write_binary(self, fh: IO[bytes]) -> None:
        data = self.vectors.astype(_FLOAT, copy=False)
        for word, row in zip(self.words, data):
            fh.write(word.encode("utf-8") + b" " + row.tobytes() + b"\n")

    def _write_text(self, fh: IO[bytes], block: int = 4096) -> None:
        # %.9g round-trips float32 exactly; one %-format per row is far faster than per value.
        row_fmt = " ".join(["%.9g"] * self.dim)
        for start in range(0, len(self), block):
            lines = [
                f"{word} {row_fmt % tuple(row)}\n"
                for word, row in zip(
                    self.words[start : start + block], self.vectors[start : start + block].tolist()
                )
            ]
            fh.write("".join(lines).encode("utf-8"))


# --------------------------------------------------------------------- transfer to encoders
def init_embeddings_from_word_vectors(
    model: Any,
    tokenizer: Any,
    vectors: WordVectors | str | Path,
    scale: Literal["match", "none"] | float = "match",
    *,
    rest: Literal["keep", "zero"] = "keep",
    lowercase_fallback: bool = True,
) -> dict[str, Any]:
    """Copy word vectors into the input-embedding rows of tokens that are whole words.

    ``model``: a transformers model (``get_input_embeddings()``) or a ``TextEncoder``;
    ``vectors``: a :class:`textcl.word_vectors.WordVectors` or a path ``WordVectors.load`` reads
    (an SGNS output dir, a word2vec file). A token is a whole word when it is not special, not a
    WordPiece continuation (``##x``) and is in the vector vocabulary (else its lowercase form,
    with ``lowercase_fallback``; the most frequent case variant wins).

    Vectors of ``d`` dims go into the first ``d`` dims of a row (``d`` must be <= the hidden
    size); the other dims keep their init (``rest="keep"``) or become 0 (``"zero"``).
    ``scale="match"`` multiplies the copied block so its standard deviation equals that of the
    embedding values it replaces (word2vec values are ~10x BERT's 0.02-std init), ``"none"``
    copies as is, a float multiplies by that number. Rows of other tokens are untouched.

    The word-start markers of SentencePiece (``▁``) and byte-level BPE (``Ġ``) are stripped
    before the lookup, so the same call serves WordPiece, SentencePiece and BPE vocabularies.

    Returns ``vocab_size``, ``covered``, ``coverage`` (covered / vocab), ``special``,
    ``subword``, ``missing``, ``hidden``, ``vector_dim``, ``dims_copied``, ``scale``, ``rest``.
    """
    import torch

    source = None
    if not isinstance(vectors, WordVectors):
        source = str(vectors)
        vectors = WordVectors.load(vectors)
    transformer = getattr(model, "transformer", model)  # a TextEncoder wraps the HF model
    weight = transformer.get_input_embeddings().weight
    hidden, d = int(weight.shape[1]), vectors.dim
    if d > hidden:
        raise ValueError(
            f"the word vectors are {d}-d but the model's input embeddings {hidden}-d; train SGNS "
            f"with model.dim <= {hidden} (e.g. --set model.dim={hidden})"
        )
    if rest not in ("keep", "zero"):
        raise ValueError(f"rest must be 'keep' or 'zero', got {rest!r}")
    lowered: dict[str, int] = {}
    if lowercase_fallback:
        for i, w in enumerate(vectors.words):  # most frequent first: setdefault keeps it
            lowered.setdefault(w.lower(), i)
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    rows, sources = [], []
    n_special = n_subword = n_missing = 0
    vocab = tokenizer.get_vocab()
    for token, row in sorted(vocab.items(), key=lambda kv: kv[1]):
        if row >= weight.shape[0]:
            continue
        if token in special:
            n_special += 1
        elif token.startswith("##"):
            n_subword += 1
        else:
            word = token.lstrip("▁Ġ") or token
            found = vectors.index.get(word)
            if found is None and lowercase_fallback:
                found = lowered.get(word.lower())
            if found is None:
                n_missing += 1
            else:
                rows.append(row)
                sources.append(found)
    factor = 1.0
    with torch.no_grad():
        if rows:
            index = torch.tensor(rows, dtype=torch.long, device=weight.device)
            new = torch.from_numpy(np.ascontiguousarray(vectors.vectors[sources])).to(weight.device, torch.float32)
            if scale == "match":
                old_std = weight[index, :d].float().std()
                factor = float(old_std / new.std().clamp_min(1e-12))
            elif scale == "none":
                factor = 1.0
            elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
                factor = float(scale)
            else:
                raise ValueError(f"scale must be 'match', 'none' or a number, got {scale!r}")
            block = weight[index].float()
            block[:, :d] = new * factor
            if rest == "zero":
                block[:, d:] = 0.0
            weight[index] = block.to(weight.dtype)
    total = len(vocab)
    stats = {
        "vocab_size": total,
        "covered": len(rows),
        "coverage": len(rows) / total if total else 0.0,
        "special": n_special,
        "subword": n_subword,
        "missing": n_missing,
        "hidden": hidden,
        "vector_dim": d,
        "dims_copied": d,
        "vector_words": len(vectors),
        "scale": factor,
        "scale_mode": scale if isinstance(scale, str) else "fixed",
        "rest": rest,
    }
    if source is not None:
        stats["vectors"] = source
    return stats
