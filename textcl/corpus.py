"""Word corpora for word-level objectives (SGNS): reading, normalisation, vocabulary.

A corpus is one sentence per line (``.txt`` / ``.txt.gz``), or JSON lines / a hub dataset
(``.jsonl[.gz]``, ``hf://NAME[:SPLIT]``) with one text per row in ``text_field``. Text
files are read by a plain block reader: blocks of 4 MiB, normalised with one
``bytes.translate`` and split with ``str.split``. Reading, normalising and splitting the
500k-sentence Gutenberg corpus took 0.9-1.7 s this way (with 16 MiB blocks) against
3.7-8.8 s with the ``datasets`` text loader streaming and 3.8-9.0 s through Arrow (three
runs of ``benchmarks/sgns_speed.py --compare-readers`` on a busy 2-core machine). A block's
words as Python strings are the reader's memory, whatever the corpus size: ``load_corpus``
of 11.4M words (62 MB of text) peaked at 126 MiB RSS with 4 MiB blocks, 344 MiB with 16 MiB
ones (33 MiB after the imports). A line longer than a block (text8 is one 100 MB line) comes
in pieces cut at a space or tab, and its sentences are cut as if it had come whole. JSON
lines and hub datasets go through ``datasets`` in streaming mode, in blocks of at most
65,536 rows and about 4 MiB of text.

Corpora larger than memory: :func:`load_corpus` keeps no token in memory. It writes the
vocabulary ids (``int32``) and the sentence offsets (``int64``) to disk in two streamed
passes (:mod:`textcl.corpus_build`), once per file content and settings, in a cache
directory (``data.cache_dir``; default ``$TEXTCL_CACHE/sgns``, else
``~/.cache/textcl/sgns``), and the :class:`Corpus` reads them back a slice at a time
(:class:`~textcl.token_store.DiskArray`). What stays in memory is the word table and its
counts, and one block while reading.

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
import gzip
import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from textcl.arrow_cache import fingerprint_of
from textcl.corpus_build import FORMAT, write_corpus
from textcl.corpus_chunks import chunk_boundaries, cut_at_chunk_grid, longest_sentence
from textcl.documents import (
    DataError,
    check_data_file,
    datasets_quiet,
    diagnose_data_file,
    read_problem,
    text_problem,
)
from textcl.token_store import DiskArray, default_cache_dir, file_sha256, scratch_dir

__all__ = [
    "Corpus",
    "Normalize",
    "Vocabulary",
    "chunk_boundaries",
    "cut_at_chunk_grid",
    "iter_sentences",
    "load_corpus",
    "longest_sentence",
    "moses_tokenize_line",
    "normalize_text",
]

Normalize = Literal["none", "lowercase", "a-z", "moses"]

logger = logging.getLogger("textcl")

_BLOCK_BYTES = 4 << 20
_BLOCK_ROWS = 65536

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

    ``ids[offsets[s]:offsets[s + 1]]`` are the vocabulary ids of sentence ``s``. Both are
    1-D arrays: on disk (:class:`~textcl.token_store.DiskArray`, read by slices) as
    :func:`load_corpus` returns them, or numpy arrays (``np.asarray`` of those reads them
    into memory; the training gives the same result with either).
    """

    source: str
    vocab: Vocabulary
    ids: np.ndarray | DiskArray  # int32
    offsets: np.ndarray | DiskArray  # int64, len = sentences + 1
    raw_words: int  # tokens read, including words dropped by min_count / max_vocab
    raw_sentences: int  # non-empty lines (after splitting overlong ones)
    directory: Path | None = None  # where the arrays are stored (the cache entry)

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


def _text_blocks(path: str, normalize: Normalize) -> Iterator[tuple[list[str], bool]]:
    """Lines of a text file, normalised, in blocks of about ``_BLOCK_BYTES``, each with
    whether its last line goes on in the next block.

    A line longer than a block comes in pieces cut after a space or tab (words are never
    cut; not with ``moses``, whose tokens depend on the whole line): memory stays about two
    blocks however long the lines. Raises ``DataError`` naming the line for binary data (a
    NUL byte) or bytes that are not UTF-8 (a latin-1 file would otherwise become words with
    U+FFFD in them), and for broken gzip data.
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
                if cut >= 0:
                    rest = block[cut + 1 :]
                    lines = _decode_lines(checked(block[: cut + 1]), normalize)
                    line += len(lines)
                    yield lines, False
                    del lines  # not alive while the next block is read
                    continue
                space = max(block.rfind(b" "), block.rfind(b"\t")) if normalize != "moses" else -1
                if len(block) < _BLOCK_BYTES or space < 0:
                    rest = block
                    continue
                rest = block[space + 1 :]
                yield _decode_lines(checked(block[: space + 1]), normalize), True
            if rest:
                yield _decode_lines(checked(rest), normalize), False
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


def _dataset_blocks(source: str, normalize: Normalize, text_field: str) -> Iterator[tuple[list[str], bool]]:
    """Texts of a JSON-lines file or hub dataset (streaming), one text = one sentence, in
    blocks of at most ``_BLOCK_ROWS`` rows and about ``_BLOCK_BYTES`` characters."""
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
    chars = 0
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
            chars += len(text)
        if len(block) >= _BLOCK_ROWS or chars >= _BLOCK_BYTES:
            yield block, False
            block, chars = [], 0
    if block:
        yield block, False


def _line_blocks(source: str, normalize: Normalize, text_field: str) -> Iterator[tuple[list[str], bool]]:
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
    """Blocks of tokenised sentences (empty lines dropped, long ones split) and the number
    of lines they finish.

    A line longer than ``max_sentence_length`` words is read as pieces of that many (the
    last shorter), counted from its first word, also when it comes in several blocks: the
    words after its last whole piece wait for the next block.
    """
    size = max_sentence_length
    remaining = max_sentences
    carry: list[str] | None = None  # words of a line going on in the next block (< size)
    for lines, open_end in _line_blocks(source, normalize, text_field):
        finished = len(lines) - open_end
        if remaining is not None and finished >= remaining:
            lines, open_end, finished = lines[:remaining], False, remaining
        words = list(map(str.split, lines))
        if carry is not None and words:
            words[0] = carry + words[0]
        carry = None
        if open_end:
            tail = words.pop()
            whole = len(tail) - len(tail) % size
            carry = tail[whole:]
            if whole:
                words.append(tail[:whole])
        sentences = [s for s in words if s]
        if any(len(s) > size for s in sentences):
            # Split overlong lines as gensim's LineSentence does (text8 is one line).
            sentences = [s[i : i + size] for s in sentences for i in range(0, len(s), size)]
        yield sentences, finished
        del lines, words, sentences  # one block alive at a time
        if remaining is not None:
            remaining -= finished
            if remaining <= 0:
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


# ------------------------------------------------------------------------------ on disk
def _cache_stem(source: str) -> str:
    """For people browsing the cache only: a lookup goes by the digest."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.removeprefix("hf://")).name.split(".")[0])[:40]
    return stem or "corpus"


def _open_stored(directory: Path, source: str) -> Corpus | None:
    """The corpus written to ``directory``, or None (nothing there, or unreadable: removed)."""
    if not (directory / "meta.json").is_file():
        shutil.rmtree(directory, ignore_errors=True)  # not a finished corpus (those are renamed whole)
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        ids = DiskArray(directory / "ids.int32", np.int32, meta["words"])
        offsets = DiskArray(directory / "offsets.int64", np.int64, meta["sentences"] + 1)
        words, counts = vocab["words"], np.asarray(vocab["counts"], dtype=np.int64)
        if len(words) != meta["vocabulary"] or len(counts) != len(words):
            raise ValueError("vocabulary size")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("sgns: the corpus cache %s is unreadable (%s); reading the corpus again", directory, exc)
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return Corpus(source=source, vocab=Vocabulary(words=words, counts=counts), ids=ids, offsets=offsets,
                  raw_words=int(meta["raw_words"]), raw_sentences=int(meta["raw_sentences"]), directory=directory)


def _build_dir(root: Path | None, digest: str) -> tuple[Path, bool]:
    """A fresh directory to write the corpus in, and whether it can go into the cache."""
    if root is not None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f".{digest}.{os.getpid()}.partial"
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            return path, True
        except OSError as exc:
            logger.warning("sgns: cannot write the corpus cache in %s (%s); using a temporary directory", root, exc)
    return scratch_dir(), False


def _settings_key(normalize: str, min_count: int, max_vocab: int | None, text_field: str,
                  max_sentences: int | None, max_sentence_length: int) -> dict[str, Any]:
    key = {"format": FORMAT, "normalize": normalize, "min_count": min_count, "max_vocab": max_vocab,
           "text_field": text_field, "max_sentences": max_sentences, "max_sentence_length": max_sentence_length}
    if normalize == "moses":
        from importlib.metadata import version

        key["sacremoses"] = version("sacremoses")
    return key


def load_corpus(
    source: str | Path,
    *,
    normalize: Normalize = "none",
    min_count: int = 5,
    max_vocab: int | None = None,
    text_field: str = "text",
    max_sentences: int | None = None,
    max_sentence_length: int = 10_000,
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Read a corpus once: count words, build the vocabulary, write the tokens' ids to disk.

    A line of more than ``max_sentence_length`` words is read as consecutive sentences of
    at most that many (counted before the vocabulary filter, as gensim's ``LineSentence``).

    The ids and sentence offsets are written once per file content and settings under
    ``cache_dir`` (default :func:`~textcl.token_store.default_cache_dir`) and found there by
    later calls (a resumed run reads no text); a hub dataset (``hf://``) is written to a
    temporary directory removed at exit. The :class:`Corpus` reads them from disk by slices.

    Raises ``DataError`` (naming the file and the fix) when the corpus has no words or no
    word reaches ``min_count``, and (naming the line) when the file is missing, empty,
    binary, not UTF-8, broken gzip or not JSON lines.
    """
    source = str(source)
    key = _settings_key(normalize, min_count, max_vocab, text_field, max_sentences, max_sentence_length)
    root = None
    content = source
    if not source.startswith("hf://"):
        content = file_sha256(check_data_file(source))  # missing, a directory, empty, binary, not UTF-8
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = fingerprint_of("sgns-corpus", content, key)
    final = root / f"{_cache_stem(source)}-{digest}" if root is not None else None
    if final is not None:
        cached = _open_stored(final, source)
        if cached is not None:
            logger.info("sgns: corpus %s from the cache %s", source, final)
            return cached
    directory, persistent = _build_dir(root, digest)
    try:
        sentence_blocks = _sentence_blocks(source, normalize, text_field, max_sentences, max_sentence_length)
        stats = write_corpus(sentence_blocks, directory, source=source, normalize=normalize,
                             min_count=min_count, max_vocab=max_vocab)
        meta = {**stats, "source": source, "content": content, "settings": key}
        (directory / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if persistent and final is not None:
        try:
            os.replace(directory, final)
        except OSError:  # another process wrote it first: theirs is the same
            shutil.rmtree(directory, ignore_errors=True)
        directory = final
    corpus = _open_stored(directory, source)
    if corpus is None:  # pragma: no cover - written just now
        raise DataError(f"{source}: the corpus written to {directory} cannot be read back")
    return corpus
