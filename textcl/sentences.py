"""Sentence-split document corpora for the sentence-level objectives (NSP, neighbour, permutation).

Splitter: **syntok** (rule-based, pure Python) plus two repairs. Paragraphs are cut at
blank lines first, whitespace inside a paragraph is collapsed to single spaces, syntok
splits each paragraph, and a piece ending in ``;`` or in a title glued to a dash
(``London--Mr.``) is joined to the next -- the only two syntok errors in the check below.

Why syntok. Measured on 60 chapters of ``gutenberg_chapters.jsonl.gz`` (every 30th of the
first 1800; 3265 paragraphs, 0.77 M characters of 19th-century fiction: "Mr.", "Mrs.",
"St.", initials, dialogue in straight and curly quotes), one process on a shared 2-core
machine. "Differ" counts, among 50 random paragraphs with titles, initials, ellipses or a
quote followed by a lower-case speech tag, those whose split differs from the
hand-checked reference (this module's output, each of the 50 read by eye):

==================  =========  ===========  ======  ==============================================
splitter            sentences  sentences/s  differ  typical errors
==================  =========  ===========  ======  ==============================================
syntok 1.4.4        8439       13.4 k       3/50    cut after ``;`` before a quote; ``--Mr. |``
NLTK Punkt 3.10     8999       50 k         40/50   trained unsupervised on the same 60 chapters:
 (PunktTrainer)                                     ``Mr. | Hersheimmer``, ``"Oh!" | cried Neb``
blingfire 0.1.8     8547       141 k        24/50   ``"Ten, forty-six!" | whispered the Captain``,
                                                    ``Dr. |`` at a paragraph end
pysbd 0.3.4         6286       2.2 k        16/50   no cut inside quotes: several sentences of a
                                                    speech stay one; ``'Ah! | ' cried``
sentencex 1.0.32    6391       521 k        13/50   no cut inside quotes (as pysbd)
this module         8277       ~12 k        0/50    (the reference)
==================  =========  ===========  ======  ==============================================

For next/neighbour-sentence objectives a speech tag cut off as its own "sentence"
(``whispered the Captain, ...``) and a name cut from its title make false, trivially easy
positives, and unsplit speeches make few, overlong ones, so accuracy matters more than
raw speed here; syntok splits the full 3000-chapter corpus in about a minute on a busy
core, once: the result is cached on disk (see :func:`load_sentence_documents`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from textcl.core.method import MethodConfig
from textcl.core.recipe import InputFile
from textcl.documents import DataError, check_data_file, load_documents

__all__ = [
    "SPLITTER",
    "SentenceDataSection",
    "SentenceDocument",
    "SplitStats",
    "default_cache_dir",
    "load_sentence_documents",
    "split_sentences",
    "splitter_version",
    "tokenize_sentences",
]

logger = logging.getLogger("textcl")

#: Name of the sentence splitter (part of the cache key).
SPLITTER = "syntok"
#: Version of textcl's own rules around the splitter (paragraphs, whitespace); bump it
#: whenever :func:`split_sentences` changes its output, so old caches are not reused.
_RULES_VERSION = 1
_CACHE_FORMAT = 1
#: Show a progress bar when splitting at least this many documents.
_PROGRESS_MIN_DOCUMENTS = 50

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_WHITESPACE = re.compile(r"\s+")
# A sentence ending in a title is never complete ("Mr." needs a name after it).
_TITLE_END = re.compile(r"(?<![A-Za-z])(?:Mr|Mrs|Messrs|Ms|Mme|Mlle|Dr|St|Rev|Capt|Col|Gen|Lieut|Sgt|Prof|Hon)\.$")


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
        None, description="sentence-split cache; default $TEXTCL_CACHE/sentences or ~/.cache/textcl/sentences"
    )


# --------------------------------------------------------------------------- splitting
def splitter_version() -> str:
    """``syntok-<version>-r<rules>``: identifies the splitter output (cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("syntok")
    except PackageNotFoundError:  # pragma: no cover - imported from a path, not installed
        v = "unknown"
    return f"{SPLITTER}-{v}-r{_RULES_VERSION}"


def split_sentences(text: str) -> list[str]:
    """Sentences of a document; paragraphs are separated by blank lines; whitespace normalised.

    A sentence never spans two paragraphs. Empty and whitespace-only text gives ``[]``.
    """
    from syntok import segmenter

    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = _WHITESPACE.sub(" ", paragraph).strip()
        if not paragraph:
            continue
        # syntok's own paragraph detection is not needed: the text has one paragraph now.
        pieces = ["".join(token.spacing + token.value for token in sentence).strip()
                  for sentence in segmenter.split(_tokenize(paragraph))]
        sentences.extend(_repair([p for p in pieces if p]))
    return sentences


def _repair(pieces: list[str]) -> list[str]:
    """Undo the two syntok errors seen on the Gutenberg sample: a cut after a semicolon
    (``said the voice; | "you just see..."``) and after a title glued to a dash
    (``London--Mr. | Romaine``)."""
    out: list[str] = []
    for piece in pieces:
        if out and (out[-1].endswith(";") or _TITLE_END.search(out[-1])):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _tokenize(paragraph: str) -> Any:
    from syntok.tokenizer import Tokenizer

    global _TOKENIZER
    if _TOKENIZER is None:
        # replace_not_contraction=False keeps the text exactly as written (no "not" for "n't").
        _TOKENIZER = Tokenizer(replace_not_contraction=False)
    return _TOKENIZER.tokenize(paragraph)


_TOKENIZER: Any = None


# --------------------------------------------------------------------------- loading + cache
def default_cache_dir() -> Path:
    """``$TEXTCL_CACHE/sentences``, else ``$XDG_CACHE_HOME/textcl/sentences``, else
    ``~/.cache/textcl/sentences``."""
    if os.environ.get("TEXTCL_CACHE"):
        return Path(os.environ["TEXTCL_CACHE"]).expanduser() / "sentences"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "textcl" / "sentences"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_file(cache_dir: Path, source: str, content_id: str, text_field: str, id_field: str | None,
                max_documents: int | None) -> Path:
    key = json.dumps(
        [content_id, splitter_version(), text_field, id_field, max_documents], separators=(",", ":")
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.removeprefix("hf://")).name.split(".")[0])[:40]
    return cache_dir / f"{stem or 'corpus'}-{digest}.json.gz"


def _read_cache(path: Path) -> list[SentenceDocument] | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("format") != _CACHE_FORMAT or data.get("splitter") != splitter_version():
            return None
        return [SentenceDocument(str(i), list(s)) for i, s in data["documents"]]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        logger.warning("sentence cache %s is unreadable; splitting again", path)
        return None


def _write_cache(path: Path, source: str, docs: list[SentenceDocument]) -> None:
    """Temp file + rename: a killed run never leaves a truncated cache under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = {
        "format": _CACHE_FORMAT,
        "splitter": splitter_version(),
        "source": source,
        "documents": [[d.id, d.sentences] for d in docs],
    }
    try:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=3) as fh:
            json.dump(payload, fh, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache must not stop training
        logger.warning("could not write the sentence cache %s (%s)", path, exc)
        tmp.unlink(missing_ok=True)


def _split_all(texts: list[tuple[str, str]]) -> list[SentenceDocument]:
    from tqdm.auto import tqdm

    bar = tqdm(
        texts, desc="splitting sentences", unit="doc", dynamic_ncols=True,
        disable=len(texts) < _PROGRESS_MIN_DOCUMENTS,
    )
    return [SentenceDocument(doc_id, split_sentences(text)) for doc_id, text in bar]


def load_sentence_documents(
    source: str,
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    max_documents: int | None = None,
    min_sentences: int = 2,
    cache_dir: str | Path | None = None,
) -> tuple[list[SentenceDocument], SplitStats]:
    """Read documents (textcl.documents.load_documents: .jsonl[.gz]/.txt[.gz]/hf://), split into
    sentences (cached on disk by file content hash + splitter name/version), skip and count
    empty / too-short documents; raise DataError if nothing is left.

    The cache (``cache_dir``, default :func:`default_cache_dir`) holds every document's
    sentences, empty ones included, so any ``min_sentences`` reuses it. Its key is the
    SHA-256 of the file's bytes (for ``hf://`` sources: the dataset's fingerprint), the
    splitter name and version, the fields read and ``max_documents``.
    """
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    local = not source.startswith("hf://")
    cache_path: Path | None = None
    docs: list[SentenceDocument] | None = None
    if local:
        path = check_data_file(source)  # missing, a directory, empty, binary, not UTF-8
        cache_path = _cache_file(cache_root, source, _file_hash(path), text_field, id_field, max_documents)
        # The name's stem is only for people browsing the cache: the same content under
        # another file name is a hit too.
        for hit in sorted(cache_root.glob(f"*-{cache_path.name.rsplit('-', 1)[1]}")):
            docs = _read_cache(hit)
            if docs is not None:
                logger.info("sentences of %s from the cache %s", source, hit)
                break
    if docs is None:
        raw = load_documents(
            source, text_field=text_field, id_field=id_field, max_documents=max_documents, keep_empty=True
        )
        if not local:
            cache_path = _cache_file(cache_root, source, _hub_fingerprint(source), text_field, id_field,
                                     max_documents)
        docs = _split_all([(d.id, d.text) for d in raw])
        if cache_path is not None:
            _write_cache(cache_path, source, docs)

    kept = [d for d in docs if len(d.sentences) >= min_sentences]
    empty = sum(1 for d in docs if not d.sentences)
    stats = SplitStats(
        documents=len(docs),
        kept=len(kept),
        empty=empty,
        too_few_sentences=len(docs) - len(kept) - empty,
        sentences=sum(len(d.sentences) for d in kept),
    )
    if not kept:
        raise DataError(
            f"{source}: no document has at least {min_sentences} sentences "
            f"({stats.documents} read: {stats.empty} empty, {stats.too_few_sentences} with fewer "
            f"than {min_sentences} sentences); check data.text_field ({text_field!r}) and the file, "
            "or lower data.min_sentences"
        )
    if stats.empty or stats.too_few_sentences:
        logger.info("%s: %s", source, stats.describe())
    return kept, stats


def _hub_fingerprint(source: str) -> str:
    """The ``datasets`` fingerprint of a hub source (changes when the data changes)."""
    import datasets

    name, _, split = source[len("hf://") :].partition(":")
    ds = datasets.load_dataset(name, split=split or "train")
    return f"{source}@{getattr(ds, '_fingerprint', '')}"


# --------------------------------------------------------------------------- tokenisation
def tokenize_sentences(tokenizer: Any, docs: list[SentenceDocument], max_tokens: int) -> list[list[list[int]]]:
    """Per document, per sentence: token ids without special tokens, truncated to max_tokens."""
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
        out = tokenizer(
            part, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        ids.extend(x[:max_tokens] for x in out)
        bar.update(len(part))
    bar.close()
    result, pos = [], 0
    for d in docs:
        result.append(ids[pos : pos + len(d.sentences)])
        pos += len(d.sentences)
    return result
