"""Crash-safe file output: write to a temporary name, then rename into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_json", "atomic_write_text", "install_dir_contents", "replace_dir"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` so a reader sees either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written directory ``tmp`` to ``final`` (replacing it)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def install_dir_contents(src: Path, dest: Path, last: str = "modules.json") -> None:
    """Move every entry of the fully written ``src`` into ``dest`` by rename.

    Used when ``dest`` is also home to other files (the run's output directory is a
    sentence-transformers model directory *and* holds checkpoints and logs). The
    marker ``last`` (what makes the directory loadable) is removed first and moved in
    last, so an interrupted install never looks like a complete model.
    """
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / last
    if marker.exists():
        marker.unlink()
    entries = sorted(src.iterdir(), key=lambda p: p.name == last)
    for entry in entries:
        target = dest / entry.name
        if entry.is_dir():
            replace_dir(entry, target)
        else:
            os.replace(entry, target)
    shutil.rmtree(src, ignore_errors=True)
