"""Small data files shipped inside the package (see ``textcl/data/README.md``).

Recipes refer to them with ``textcl://data/NAME``, e.g.
``documents: textcl://data/gutenberg_sample.jsonl.gz``; :func:`resolve_path` turns such a
reference (or any ordinary path) into a :class:`pathlib.Path`.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["DATA_DIR", "SCHEME", "available", "data_path", "resolve_path"]

#: Folder holding the packaged data files.
DATA_DIR = pathlib.Path(__file__).resolve().parent
#: Prefix that :func:`resolve_path` maps onto :data:`DATA_DIR`.
SCHEME = "textcl://data/"

_NOT_DATA = {"README.md", "__init__.py", "make_samples.py"}


def available() -> list[str]:
    """Names of the packaged data files (relative to :data:`DATA_DIR`, sorted)."""
    names = []
    for p in DATA_DIR.rglob("*"):
        rel = p.relative_to(DATA_DIR)
        if p.is_file() and "__pycache__" not in rel.parts and str(rel) not in _NOT_DATA:
            names.append(rel.as_posix())
    return sorted(names)


def data_path(name: str) -> pathlib.Path:
    """Path of the packaged file ``name`` (e.g. ``"sts_sample.jsonl"``).

    Raises :class:`FileNotFoundError`, listing the available names, when there is no such
    file (names that would leave the data folder are never resolved).
    """
    rel = str(name).replace("\\", "/").strip("/")
    path = (DATA_DIR / rel).resolve()
    inside = path == DATA_DIR or DATA_DIR in path.parents
    if not rel or not inside or not path.is_file() or rel in _NOT_DATA:
        raise FileNotFoundError(
            f"no packaged data file {name!r} in textcl/data; available: {', '.join(available())}"
        )
    return path


def resolve_path(path: str | os.PathLike[str]) -> pathlib.Path:
    """``"textcl://data/NAME"`` -> :func:`data_path` ``(NAME)``; anything else ->
    ``Path(path).expanduser()``."""
    if isinstance(path, str) and path.startswith("textcl://"):
        if not path.startswith(SCHEME):
            raise ValueError(f"unknown textcl:// location {path!r}; expected {SCHEME}NAME")
        return data_path(path[len(SCHEME) :])
    return pathlib.Path(path).expanduser()
