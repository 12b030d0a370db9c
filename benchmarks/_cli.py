"""What every benchmark CLI does with a user error: one ``error:`` line on stderr, exit 2.

:func:`cli_main` wraps a benchmark's ``main(argv)``: the benchmarks' own errors
(``DataDirError``, ``GlueError``: ``SystemExit`` with status 2, which Python would end with
silently) get their message printed, and textcl's one-line errors (a model that cannot be
loaded, an unreadable data file, a bad recipe) become the same line plus status 2 instead
of a traceback. :func:`check_model` fails on a bad model spec before any work starts.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["check_model", "cli_main"]

T = TypeVar("T")


def cli_main(main: Callable[[list[str] | None], T]) -> Callable[[list[str] | None], T]:
    """Decorate a benchmark's ``main(argv)`` so user errors print one line and exit with 2.

    Called in-process (tests, notebooks) it behaves the same: the line goes to stderr and
    ``SystemExit(2)`` is raised (the benchmark's own exception, when it raised one).
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> T:
        from textcl.core.recipe import RecipeError
        from textcl.documents import DataError
        from textcl.encoders import ModelLoadError

        try:
            return main(argv)
        except SystemExit as exc:
            message = str(exc)
            if isinstance(exc.code, str) and message.startswith("error: "):
                # SystemExit("error: ...") would exit with status 1.
                print(message, file=sys.stderr)
                raise SystemExit(2) from None
            # argparse prints its own usage line and raises SystemExit(2) with no message.
            if exc.code == 2 and message.startswith("error: "):
                print(message, file=sys.stderr)
            raise
        except (ModelLoadError, DataError, RecipeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def check_model(spec: str) -> None:
    """Raise a one-line error now if the ``benchmarks.models`` spec ``spec`` names nothing
    loadable (a missing path, a directory that is not a complete model, a hub name that is
    not cached while offline) -- not after the data has loaded or other models have run."""
    from benchmarks.common import DataDirError
    from textcl.encoders import locate_model

    kind, sep, arg = spec.partition(":")
    if sep and kind == "avg-word-vectors":
        if not Path(arg).expanduser().exists():
            raise DataDirError(f"{spec}: word vectors {arg} not found — fix the path")
        return
    locate_model(arg if sep and kind == "random-init" else spec)
