"""Pieces every benchmark shares: data directory, environment record, atomic JSON reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "DataDirError",
    "add_data_dir_argument",
    "cpu_model",
    "environment",
    "resolve_data_dir",
    "write_report",
]

DATA_ENV = "TEXTCL_DATA"


class DataDirError(SystemExit):
    """A missing or incomplete data directory (or another user error): exit status 2.

    ``SystemExit`` prints nothing for an integer code, so the message is printed where the
    exception is raised uncaught: see :func:`benchmarks._cli.cli_main` (every benchmark's
    ``main``) and :func:`exit_on_error`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = f"error: {message}"

    def __str__(self) -> str:
        return self.message


def exit_on_error(error: DataDirError) -> None:
    """Print ``error``'s message to stderr and exit with its status (2)."""
    import sys

    print(error, file=sys.stderr)
    raise SystemExit(error.code)


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` defaulting to ``$TEXTCL_DATA`` (the layout of ``../shared/data``)."""
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_ENV),
        help=f"data directory in the shared layout (default: ${DATA_ENV})",
    )


def resolve_data_dir(data_dir: str | Path | None, *required: str) -> Path:
    """The data directory as a Path; clear error if unset, missing, or lacking ``required`` paths."""
    if not data_dir:
        raise DataDirError(
            f"no data directory: pass --data-dir or set {DATA_ENV} (e.g. export {DATA_ENV}=../shared/data; "
            "with a network, `python -m benchmarks.download DIR` builds one)"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataDirError(
            f"data directory {root} does not exist — pass --data-dir DIR or set {DATA_ENV} "
            f"(e.g. export {DATA_ENV}=../shared/data)"
        )
    missing = [r for r in required if not (root / r).exists()]
    if missing:
        raise DataDirError(f"{root} lacks {', '.join(missing)} (see the layout in ../shared/data/README.md)")
    return root


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions, CPU, threads and git state: what a reader needs to compare numbers."""
    import torch

    try:
        git = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
        commit = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    names = ("textcl", "torch", "transformers", "sentence-transformers", "tokenizers", "numpy") + tuple(packages)
    return {
        "versions": {p: _version(p) for p in dict.fromkeys(names)} | {"python": platform.python_version()},
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "git": commit,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def finite_json(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so reports are strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON via a temp file + rename (never a half-written file)."""
    from textcl.core.io import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report)
    return path
