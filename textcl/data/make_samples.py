"""Regenerate the small data files shipped in ``textcl/data/``.

Run from the repository root::

    python -m textcl.data.make_samples --data-dir ../shared/data

``--data-dir`` is the shared-data folder (the one holding ``corpora/`` and ``sts/``).
The selection is deterministic (fixed seed, sorted inputs) and the gzip stream is
written with ``mtime=0`` and no embedded file name, so the same inputs give the same
bytes. The last lines printed are the table rows used in ``textcl/data/README.md``.

Two files are written:

* ``gutenberg_sample.jsonl.gz`` -- Project Gutenberg chapters, at most two per book,
  800-3000 words each, with the fields of the source corpus unchanged.
* ``sts_sample.jsonl`` -- STS Benchmark pairs from the two caption genres whose text
  licence is CC BY-SA (``images`` and ``track5.en-en``): every such pair of the *dev*
  split, plus a score-stratified set of ``images`` pairs from the *train* split. No pair
  of the STS-B test split is included.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import re
from collections import defaultdict
from pathlib import Path

SEED = 20240917
GUTENBERG_FIELDS = ("id", "title", "author", "chapter", "heading", "n_words", "text")
STS_FIELDS = ("sentence1", "sentence2", "score", "genre", "source", "year", "split")

#: STS-B ``source`` values whose sentence text is released under CC BY-SA
#: (see ``licenses/stsb_LICENSE.txt``).
STS_SOURCES = ("images", "track5.en-en")

MIN_WORDS, MAX_WORDS = 800, 3000
MAX_PER_BOOK = 2
MAX_GZ_BYTES = 2_500_000

# Chapters carrying end matter or editorial apparatus rather than running prose.
_APPARATUS = re.compile(
    r"transcriber|^\s*\[?footnote|^\s*illustration|^\s*list of illustrations"
    r"|^\s*(\*\s*){3,}|^\s*(index|appendix|notes)\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl_bytes(rows: list[dict], fields: tuple[str, ...]) -> bytes:
    lines = [json.dumps({k: r[k] for k in fields}, ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0: no name or timestamp in the header -> reproducible bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def select_chapters(rows: list[dict], n: int, seed: int = SEED) -> list[dict]:
    """Pick ``n`` chapters: eligible ones only, round-robin over books, <= 2 per book."""
    by_book: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        if MIN_WORDS <= r["n_words"] <= MAX_WORDS and not _APPARATUS.search(r["text"]):
            by_book[r["id"].split("-ch")[0]].append(r)
    rng = random.Random(seed)
    books = sorted(by_book)
    rng.shuffle(books)
    for b in books:
        rng.shuffle(by_book[b])
    candidates = [by_book[b][k] for k in range(MAX_PER_BOOK) for b in books if k < len(by_book[b])]
    if n > len(candidates):
        raise ValueError(f"asked for {n} chapters, only {len(candidates)} are eligible")
    return sorted(candidates[:n], key=lambda r: r["id"])


def _pair_key(r: dict) -> frozenset:
    return frozenset((r["sentence1"].strip(), r["sentence2"].strip()))


def select_sts(
    dev: list[dict], train: list[dict], test: list[dict], n_train: int, seed: int = SEED
) -> list[dict]:
    """All CC BY-SA caption pairs of STS-B dev + ``n_train`` stratified train ``images`` pairs."""
    banned = {_pair_key(r) for r in test}
    seen: set[frozenset] = set()
    out: list[dict] = []
    for r in dev:
        k = _pair_key(r)
        if r["source"] in STS_SOURCES and k not in banned and k not in seen:
            seen.add(k)
            out.append({**r, "split": "dev"})
    # Score bins [0,1), [1,2), [2,3), [3,4), [4,5]; equal numbers from each bin.
    bins: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(train):
        k = _pair_key(r)
        if r["source"] == "images" and k not in banned and k not in seen:
            bins[min(int(r["score"]), 4)].append(i)
    rng = random.Random(seed)
    per_bin, extra = divmod(n_train, 5)
    chosen: list[int] = []
    for b in range(5):
        want = per_bin + (1 if b < extra else 0)
        if want > len(bins[b]):
            raise ValueError(f"score bin {b} has only {len(bins[b])} train pairs")
        chosen += rng.sample(bins[b], want)
    out += [{**train[i], "split": "train"} for i in sorted(chosen)]
    for r in out:
        if not 0.0 <= float(r["score"]) <= 5.0:
            raise ValueError(f"score out of range: {r}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir", required=True, type=Path, help="shared data folder holding corpora/ and sts/"
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where to write the files (default: this package folder)",
    )
    p.add_argument("--n-chapters", type=int, default=500)
    p.add_argument(
        "--n-sts-train",
        type=int,
        default=225,
        help="stratified STS-B train 'images' pairs added to the dev pairs",
    )
    args = p.parse_args(argv)
    data = args.data_dir.expanduser()

    chapters = select_chapters(
        _read_jsonl(data / "corpora" / "gutenberg_chapters.jsonl.gz"), args.n_chapters
    )
    gz = _gzip_bytes(_jsonl_bytes(chapters, GUTENBERG_FIELDS))
    if len(gz) > MAX_GZ_BYTES:
        raise SystemExit(
            f"gutenberg sample is {len(gz)} bytes > {MAX_GZ_BYTES}; lower --n-chapters"
        )

    stsb = data / "sts" / "stsb"
    pairs = select_sts(
        _read_jsonl(stsb / "dev.jsonl"),
        _read_jsonl(stsb / "train.jsonl"),
        _read_jsonl(stsb / "test.jsonl"),
        args.n_sts_train,
    )
    sts = _jsonl_bytes(pairs, STS_FIELDS)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "gutenberg_sample.jsonl.gz": (gz, len(chapters)),
        "sts_sample.jsonl": (sts, len(pairs)),
    }
    for name, (blob, _) in outputs.items():
        (args.out_dir / name).write_bytes(blob)

    n_books = len({r["id"].split("-ch")[0] for r in chapters})
    words = sum(r["n_words"] for r in chapters)
    print(f"gutenberg: {len(chapters)} chapters from {n_books} books, {words} words")
    by_src: dict[tuple[str, str], int] = defaultdict(int)
    for r in pairs:
        by_src[(r["split"], r["source"])] += 1
    print("sts:", len(pairs), "pairs", dict(sorted(by_src.items())))
    print("| file | rows | bytes | sha256 |")
    print("|---|---:|---:|---|")
    for name, (blob, n) in outputs.items():
        print(f"| `{name}` | {n} | {len(blob)} | `{hashlib.sha256(blob).hexdigest()}` |")


if __name__ == "__main__":
    main()
