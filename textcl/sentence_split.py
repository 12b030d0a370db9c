"""The sentence splitter of the sentence-level objectives: text in, a list of sentences out.

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
raw speed here; syntok splits the full 3000-chapter corpus in one to three minutes on a
busy core, and only once: :mod:`textcl.sentences` runs it in ``data.num_proc`` processes
(``Dataset.map``) and caches the result on disk.

Kept apart from the sentence corpora because its output is a cache key: any change to
:func:`split_sentences` must bump ``_RULES_VERSION`` (:func:`splitter_version`), and
nothing else here decides what a sentence is.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SPLITTER", "split_sentences", "splitter_version"]

#: Name of the sentence splitter (part of the cache key).
SPLITTER = "syntok"
#: Version of textcl's own rules around the splitter (paragraphs, whitespace); bump it
#: whenever :func:`split_sentences` changes its output, so old caches are not reused.
_RULES_VERSION = 1

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_WHITESPACE = re.compile(r"\s+")
# A sentence ending in a title is never complete ("Mr." needs a name after it).
_TITLE_END = re.compile(r"(?<![A-Za-z])(?:Mr|Mrs|Messrs|Ms|Mme|Mlle|Dr|St|Rev|Capt|Col|Gen|Lieut|Sgt|Prof|Hon)\.$")


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
