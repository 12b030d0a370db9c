"""Crash-safe file output: write to a temporary name, then rename into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_MARKER",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "install_dir_contents",
    "replace_dir",
]

#: Present in a directory while :func:`install_dir_contents` moves a model into it; left
#: behind by an interrupted install.
INSTALL_MARKER = ".textcl-install-incomplete"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read into one 64 KiB buffer."""
    h, buffer = hashlib.sha256(), bytearray(1 << 16)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


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


def install_dir_contents(src: Path, dest: Path, last: str | Sequence[str] = ("config.json", "modules.json")) -> None:
    """Move every entry of the fully written ``src`` into ``dest`` by rename.

    Used when ``dest`` is also home to other files (the run's output directory is a
    sentence-transformers model directory *and* holds checkpoints, logs and its lock), so
    the directory itself cannot be renamed into place. Instead:

    1. :data:`INSTALL_MARKER` is written into ``dest`` first: textcl's loaders refuse a
       directory holding it without ``modules.json`` (an install cut short);
    2. the ``last`` files (what makes the directory loadable: ``config.json`` for
       transformers, ``modules.json`` for sentence-transformers) of a previous model are
       removed, so no loader mixes old and new files;
    3. the other entries are renamed in, then the ``last`` files in their order;
    4. the marker is removed.
    """
    lasts = [last] if isinstance(last, str) else list(last)
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / INSTALL_MARKER
    atomic_write_text(
        marker,
        "A model install into this directory was interrupted: its files may mix two models.\n"
        "Rerun the training with --resume (or --overwrite) to install the model again.\n",
    )
    for name in reversed(lasts):  # modules.json first: the ST layout disappears at once
        (dest / name).unlink(missing_ok=True)
    order = {name: i + 1 for i, name in enumerate(lasts)}
    for entry in sorted(src.iterdir(), key=lambda p: order.get(p.name, 0)):
        target = dest / entry.name
        if entry.is_dir():
            replace_dir(entry, target)
        else:
            os.replace(entry, target)
    marker.unlink()
    shutil.rmtree(src, ignore_errors=True)
