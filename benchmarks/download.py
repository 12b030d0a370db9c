"""Build a data directory in the ``../shared/data`` layout from Hugging Face hub datasets.

    python -m benchmarks.download DIR [--only sts,glue]

Needs a network (it cannot run on the offline development machines). Each entry maps one
hub dataset split to one JSONL file of the layout, renaming fields to the layout's names;
files already present are kept, so an interrupted download resumes. Word-similarity files,
SentEval transfer sets and corpora have no canonical hub copies: take them from the
sources listed in ``../shared/data/README.md``. The hub STS12-16 copies carry no
``domain`` field, so the harness reports their "all" aggregation only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# (group, target file, hub dataset, config, split, {hub field: layout field})
SOURCES: list[tuple[str, str, str, str | None, str, dict[str, str]]] = [
    ("sts", "sts/stsb/test.jsonl", "sentence-transformers/stsb", None, "test", {}),
    ("sts", "sts/stsb/dev.jsonl", "sentence-transformers/stsb", None, "validation", {}),
    ("sts", "sts/stsb/train.jsonl", "sentence-transformers/stsb", None, "train", {}),
    ("sts", "sts/sick/test.jsonl", "mteb/sickr-sts", None, "test", {}),
    *[("sts", f"sts/sts{y}/test.jsonl", f"mteb/sts{y}-sts", None, "test", {}) for y in (12, 13, 14, 15, 16)],
    *[
        ("glue", f"glue/{task}/{name}.jsonl", "nyu-mll/glue", task, split, {})
        for task in ("cola", "sst2", "mrpc", "stsb", "rte", "wnli", "qnli", "qqp")
        for name, split in (("train", "train"), ("dev", "validation"))
    ],
]


_NLI_LABELS = ("entailment", "not_entailment")


def _to_layout(row: dict, dataset: str, config: str | None) -> dict:
    """Hub row -> layout row: STS ``score`` on 0-5 (sentence-transformers/stsb stores 0-1);
    RTE/QNLI labels as the layout's strings (the hub stores 0 = entailment)."""
    if dataset == "sentence-transformers/stsb":
        row["score"] = float(row["score"]) * 5.0
    if config in ("rte", "qnli"):
        row["label"] = _NLI_LABELS[int(row["label"])]
    return row


def download(root: Path, groups: set[str]) -> None:
    """Fetch every source of ``groups`` into ``root`` (temp file + rename per file)."""
    from datasets import load_dataset

    for group, target, dataset, config, split, rename in SOURCES:
        path = root / target
        if group not in groups or path.exists():
            continue
        rows = load_dataset(dataset, config, split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                row = {rename.get(k, k): v for k, v in row.items()}
                fh.write(json.dumps(_to_layout(row, dataset, config), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        print(f"{target}: {len(rows)} rows from {dataset}{'/' + config if config else ''} [{split}]")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.download", description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="data directory to create or complete")
    p.add_argument("--only", default="sts,glue", help="comma-separated groups (sts, glue)")
    args = p.parse_args(argv)
    download(args.root, {g.strip() for g in args.only.split(",") if g.strip()})


if __name__ == "__main__":
    main()
