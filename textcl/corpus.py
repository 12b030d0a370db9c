"""Word corpora for word-level objectives (SGNS): reading, normalisation, vocabulary.

A corpus is one sentence per line (``.txt`` / ``.txt.gz``), or JSON lines / a hub dataset
(``.jsonl[.gz]``, ``hf://NAME[:SPLIT]``) with one text per row in ``text_field``. Text
files are read by a plain block reader: gzip blocks of 16 MiB, normalised with one
``bytes.translate`` and split with ``str.split``. Reading, normalising and splitting the
500k-sentence Gutenberg corpus took 0.9-1.7 s this way against 3.7-8.8 s with the
``datasets`` text loader streaming and 3.8-9.0 s through Arrow (three runs of
``benchmarks/sgns_speed.py --compare-readers`` on a busy 2-core machine), and memory stays
one block plus the int32 token ids. JSON lines and hub datasets go through ``datasets`` in streaming mode.

Normalisation (``normalize``):

* ``none``: words are the whitespace-separated tokens, as they are;
* ``lowercase``: ``str.lower()`` first;
* ``a-z``: ASCII-lowercase, and words are the maximal runs of the letters a-z; every other
  character (digits, punctuation, apostrophes, non-ASCII letters) separates words -- the
  text8 convention (``re.findall("[a-z]+", text.lower())`` up to the two non-ASCII
  characters whose Unicode lowercase is an ASCII letter, U+0130 and U+212A);
* ``moses``: the English Moses tokenizer (sacremoses' ``MosesTokenizer(lang="en")
  .tokenize(line, escape=False)``), case kept: punctuation split off as tokens
  (``said,`` -> ``said ,``), clitics split (``don't`` -> ``don 't``), numbers such as
  ``3.14`` kept whole. It runs in Python at ~8k lines/s on one core, so a corpus of 500k
  sentences takes about a minute more to read than with the other modes.

The vocabulary keeps words occurring at least ``min_count`` times, most frequent first, at
most ``max_vocab`` of them; words of equal count are in gensim's order (the word that first
appeared later comes first), so evaluations restricted to the top N words (analogies: 30000)
see the same words for both. Words outside it are dropped from the token stream before
training, as word2vec and gensim do, so context windows reach across them.
"""

from __future__ import annotations

import functools
import gc
import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np

from textcl.documents import (
    DataError,
    check_data_file,
    datasets_quiet,
    diagnose_data_file,
    read_problem,
    text_problem,
)

__all__ = [
    "Corpus",
    "Normalize",
    "Vocabulary",
    "chunk_boundaries",
    "cut_at_chunk_grid",
    "iter_sentences",
    "load_corpus",
    "moses_tokenize_line",
    "normalize_text",
]

Normalize = Literal["none", "lowercase", "a-z", "moses"]

_BLOCK_BYTES = 16 << 20

# bytes.translate table for "a-z": A-Z -> a-z, a-z and "\n" kept, every other byte -> " ".
_AZ_TABLE = bytearray(b" " * 256)
for _c in range(ord("a"), ord("z") + 1):
    _AZ_TABLE[_c] = _c
    _AZ_TABLE[_c - 32] = _c
_AZ_TABLE[ord("\n")] = ord("\n")
_AZ = bytes(_AZ_TABLE)


@functools.lru_cache(maxsize=1)
def _moses_tokenize() -> Callable[[str], list[str]]:
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang="en")
    # escape=False: words as written ("&", not Moses' XML escape "&amp;").
    return functools.partial(tokenizer.tokenize, escape=False)


def moses_tokenize_line(line: str) -> str:
    """``line`` as Moses-tokenised English: its tokens joined by single spaces."""
    return " ".join(_moses_tokenize()(line))


def normalize_text(text: str, normalize: Normalize) -> str:
    """``text`` normalised as a corpus line is (see the module docstring)."""
    if normalize == "none":
        return text
    if normalize == "lowercase":
        return text.lower()
    if normalize == "moses":
        return moses_tokenize_line(text)
    return text.encode("utf-8").translate(_AZ).decode("ascii")


@dataclass
class Vocabulary:
    """Words, most frequent first, and their corpus counts."""

    words: list[str]
    counts: np.ndarray  # int64, one per word
    index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Corpus:
    """The token stream of in-vocabulary words, cut into sentences.

    ``ids[offsets[s]:offsets[s + 1]]`` are the vocabulary ids of sentence ``s``.
    """

    source: str
    vocab: Vocabulary
    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len = sentences + 1
    raw_words: int  # tokens read, including words dropped by min_count / max_vocab
    raw_sentences: int  # non-empty lines (after splitting overlong ones)

    @property
    def words(self) -> int:
        """In-vocabulary tokens (what training sees before subsampling)."""
        return int(len(self.ids))

    @property
    def sentences(self) -> int:
        return int(len(self.offsets) - 1)


# ------------------------------------------------------------------------------ reading
def _is_text_file(source: str) -> bool:
    if source.startswith("hf://"):
        return False
    suffixes = [s for s in Path(source).suffixes if s != ".gz"]
    return not (suffixes and suffixes[-1] in (".jsonl", ".json"))


def _text_blocks(path: str, normalize: Normalize) -> Iterator[list[str]]:
    """Lines of a text file, normalised, in blocks of about ``_BLOCK_BYTES``.

    Raises ``DataError`` naming the line for binary data (a NUL byte) or bytes that are
    not UTF-8 (a latin-1 file would otherwise become words with U+FFFD in them), and for
    broken gzip data.
    """
    opener = gzip.open if path.endswith(".gz") else open
    line = 1  # number of the first line of the next block

    def checked(block: bytes) -> bytes:
        problem = text_problem(block)
        if problem is not None:
            offset, what = problem
            at = line + block.count(b"\n", 0, offset)
            raise DataError(f"{path}: line {at}: {what}")
        return block

    try:
        with opener(path, "rb") as fh:
            rest = b""
            while True:
                block = fh.read(_BLOCK_BYTES)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest = block
                    continue
                rest = block[cut + 1 :]
                lines = _decode_lines(checked(block[: cut + 1]), normalize)
                line += len(lines)
                yield lines
            if rest:
                yield _decode_lines(checked(rest), normalize)
    except (OSError, EOFError, zlib.error) as exc:
        raise read_problem(path, exc) from None


def _decode_lines(block: bytes, normalize: Normalize) -> list[str]:
    if normalize == "a-z":
        text = block.translate(_AZ).decode("ascii")
    else:
        text = block.decode("utf-8", errors="replace")
        if normalize == "lowercase":
            text = text.lower()
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    if normalize == "moses":
        lines = [moses_tokenize_line(line) for line in lines]
    return lines


def _json_problem(source: str, exc: Exception) -> DataError:
    """datasets wraps the cause of a failed read: read the file ourselves to name the line."""
    problem = diagnose_data_file(source)
    if problem is None:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        problem = DataError(f"{source}: cannot be read as JSON lines ({first}) — check the file")
    return problem


def _dataset_blocks(source: str, normalize: Normalize, text_field: str) -> Iterator[list[str]]:
    """Texts of a JSON-lines file or hub dataset (streaming), one text = one sentence."""
    import datasets

    datasets.disable_progress_bars()
    if source.startswith("hf://"):
        name, _, split = source[len("hf://") :].partition(":")
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
        rows = iter(ds)
    else:
        try:
            with datasets_quiet():
                rows = iter(datasets.load_dataset("json", data_files=source, split="train", streaming=True))
        except Exception as exc:
            raise _json_problem(source, exc) from None
    block: list[str] = []
    while True:
        try:
            with datasets_quiet():
                row = next(rows, None)
        except Exception as exc:
            if source.startswith("hf://"):
                raise
            raise _json_problem(source, exc) from None
        if row is None:
            break
        if text_field not in row:
            raise DataError(
                f"{source}: no field {text_field!r} in the rows (fields: {', '.join(row)}); "
                "set data.text_field"
            )
        text = row[text_field]
        if isinstance(text, str):
            block.append(normalize_text(text.replace("\n", " "), normalize))
        if len(block) >= 65536:
            yield block
            block = []
    if block:
        yield block


def _line_blocks(source: str, normalize: Normalize, text_field: str) -> Iterator[list[str]]:
    if not source.startswith("hf://"):
        check_data_file(source)  # missing, a directory, empty, binary, not UTF-8
    if _is_text_file(source):
        return _text_blocks(source, normalize)
    return _dataset_blocks(source, normalize, text_field)


def _sentence_blocks(
    source: str,
    normalize: Normalize,
    text_field: str,
    max_sentences: int | None,
    max_sentence_length: int,
) -> Iterator[tuple[list[list[str]], int]]:
    """Blocks of tokenised sentences (empty lines dropped, long ones split) and lines read."""
    remaining = max_sentences
    for lines in _line_blocks(source, normalize, text_field):
        if remaining is not None:
            lines = lines[:remaining]
            remaining -= len(lines)
        sentences = [s for s in map(str.split, lines) if s]
        if any(len(s) > max_sentence_length for s in sentences):
            # Split overlong lines as gensim's LineSentence does (text8 is one line).
            L = max_sentence_length
            sentences = [s[i : i + L] for s in sentences for i in range(0, len(s), L)]
        yield sentences, len(lines)
        if remaining is not None and remaining <= 0:
            return


def iter_sentences(
    source: str | Path,
    normalize: Normalize = "none",
    *,
    text_field: str = "text",
    max_sentences: int | None = None,
    max_sentence_length: int = 10_000,
) -> Iterator[list[str]]:
    """Tokenised, normalised sentences of a corpus, as ``load_corpus`` reads them."""
    for block, _ in _sentence_blocks(str(source), normalize, text_field, max_sentences,
                                     max_sentence_length):
        yield from block


def load_corpus(
    source: str | Path,
    *,
    normalize: Normalize = "none",
    min_count: int = 5,
    max_vocab: int | None = None,
    text_field: str = "text",
    max_sentences: int | None = None,
    max_sentence_length: int = 10_000,
) -> Corpus:
    """Read a corpus once: count words, build the vocabulary, encode the tokens.

    A line of more than ``max_sentence_length`` words is read as consecutive sentences of
    at most that many (counted before the vocabulary filter, as gensim's ``LineSentence``).

    Raises ``DataError`` (naming the file and the fix) when the corpus has no words or no
    word reaches ``min_count``, and (naming the line) when the file is missing, empty,
    binary, not UTF-8, broken gzip or not JSON lines.
    """
    source = str(source)
    # Words get provisional ids in order of first appearance; counts come from one bincount.
    provisional: dict[str, int] = {}
    id_blocks: list[np.ndarray] = []
    length_blocks: list[np.ndarray] = []
    lines_read = 0
    # Millions of short-lived lists and strings: the cyclic GC would rescan them over and
    # over (5x the reading time measured); none of them can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for sentences, n_lines in _sentence_blocks(source, normalize, text_field, max_sentences,
                                                   max_sentence_length):
            lines_read += n_lines
            if not sentences:
                continue
            flat = list(chain.from_iterable(sentences))
            for word in dict.fromkeys(flat):  # unique, in order of appearance
                if word not in provisional:
                    provisional[word] = len(provisional)
            id_blocks.append(np.fromiter(map(provisional.__getitem__, flat), np.int32, len(flat)))
            length_blocks.append(np.fromiter(map(len, sentences), np.int64, len(sentences)))
            del flat, sentences
    finally:
        if gc_was_enabled:
            gc.enable()
    if not provisional:
        raise DataError(
            f"{source}: the corpus has no words ({lines_read} lines read, normalize={normalize!r}); "
            "point data.corpus at a text file with one sentence per line"
            + (" or check data.normalize" if normalize == "a-z" else "")
        )
    prov_ids = np.concatenate(id_blocks)
    lengths = np.concatenate(length_blocks)
    counts = np.bincount(prov_ids, minlength=len(provisional)).astype(np.int64)
    prov_words = np.array(list(provisional), dtype=object)

    eligible = np.flatnonzero(counts >= min_count)
    if len(eligible) == 0:
        top = int(counts.argmax())
        raise DataError(
            f"{source}: no word occurs at least data.min_count={min_count} times "
            f"({len(provisional)} distinct words, {int(counts.sum())} tokens; the most frequent, "
            f"{prov_words[top]!r}, occurs {int(counts[top])} times); lower data.min_count or "
            "use a larger corpus"
        )
    # Most frequent first; ties as gensim's sort_by_descending_frequency orders them (the
    # word that appeared later first), so both keep the same words in the top N.
    order = eligible[np.lexsort((-eligible, -counts[eligible]))]
    if max_vocab is not None:
        order = order[:max_vocab]
    final = np.full(len(provisional), -1, np.int32)
    final[order] = np.arange(len(order), dtype=np.int32)

    ids = final[prov_ids]
    keep = ids >= 0
    sentence_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    kept_lengths = np.bincount(sentence_of[keep], minlength=len(lengths))
    kept_lengths = kept_lengths[kept_lengths > 0]
    offsets = np.zeros(len(kept_lengths) + 1, np.int64)
    np.cumsum(kept_lengths, out=offsets[1:])
    vocab = Vocabulary(words=[str(w) for w in prov_words[order]], counts=counts[order])
    return Corpus(
        source=source,
        vocab=vocab,
        ids=np.ascontiguousarray(ids[keep]),
        offsets=offsets,
        raw_words=int(len(prov_ids)),
        raw_sentences=int(len(lengths)),
    )


def cut_at_chunk_grid(offsets: np.ndarray, chunk_words: int) -> np.ndarray:
    """``offsets`` with the long sentences cut where they cross the chunk grid.

    The grid is the word positions ``k * chunk_words`` of the token stream. A sentence
    longer than ``chunk_words // 4`` words is cut at every grid position strictly inside
    it; shorter sentences are left whole (so a corpus of ordinary sentences -- all shorter
    than a quarter chunk -- comes back unchanged, as the same array). With the result,
    :func:`chunk_boundaries` gives chunks of more than ``0.75 * chunk_words`` and less than
    ``1.25 * chunk_words`` words (the last may be shorter), whatever the line lengths.
    Without the cut a chunk holds up to ``chunk_words + max_sentence_length - 1`` words: two
    ~10,000-word pieces of a single-line corpus fell into one 10,000-word chunk, a step of
    twice the pairs. Each cut loses the pairs that would cross it (at most ``window *
    (window + 1)``), as any sentence end does.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    size = max(1, int(chunk_words))
    starts, ends = offsets[:-1], offsets[1:]
    first = starts // size + 1  # first grid line after the sentence's first word
    last = (ends - 1) // size  # last grid line before its end
    cuts = np.where(ends - starts > size // 4, np.maximum(last - first + 1, 0), 0)
    total = int(cuts.sum())
    if total == 0:
        return offsets
    # Grid line indices first[i], first[i] + 1, ... (cuts[i] of them) per sentence i.
    step = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cuts) - cuts, cuts)
    grid = (np.repeat(first, cuts) + step) * size
    return np.sort(np.concatenate([offsets, grid]))  # grid lines lie strictly inside sentences


def chunk_boundaries(offsets: np.ndarray, chunk_words: int) -> np.ndarray:
    """Sentence indices cutting a corpus into chunks of about ``chunk_words`` words.

    Chunk ``k`` holds the sentences starting in words ``[k * chunk_words, (k + 1) *
    chunk_words)``, so every chunk (except the last) has ``chunk_words`` words give or
    take one sentence, and sentences are never cut here (:func:`cut_at_chunk_grid` first
    cuts the long ones, so "one sentence" stays under a quarter chunk). Returns ``bounds``
    with chunk ``c`` = sentences ``bounds[c]:bounds[c + 1]``.
    """
    starts = offsets[:-1] // max(1, int(chunk_words))
    first = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])
    return np.append(first, len(offsets) - 1).astype(np.int64)
