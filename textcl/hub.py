"""Upload a finished training run's model to the Hugging Face Hub.

    python -m textcl.hub OUTPUT_DIR REPO_ID [--private] [--commit-message MSG]

Or in a recipe, uploaded at the end of a successful run (main process only)::

    hub: {repo_id: user-or-org/name, private: false}

What is uploaded: the model files and its card (``README.md``), ``recipe.yaml`` and
``metrics.json`` -- everything in OUTPUT_DIR except :data:`UPLOAD_IGNORE_PATTERNS`
(``checkpoints/``, ``log.jsonl``, ``initial_metrics.json``, the trackers' ``tracking/``,
lock files and other hidden files); :func:`files_to_upload` lists it. The upload is
huggingface_hub's own ``HfApi.create_repo`` + ``HfApi.upload_folder``. The token is
``HF_TOKEN`` or the one stored by ``hf auth login`` (``token=`` overrides it).

Every problem (not a finished model, offline, no token, the hub unreachable or refusing)
raises :class:`HubError` with one line; the CLI prints it as ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from textcl.core.recipe import RecipeError

__all__ = [
    "UPLOAD_IGNORE_PATTERNS",
    "HubError",
    "check_finished_model",
    "connect",
    "files_to_upload",
    "main",
    "push_to_hub",
]

#: Paths in an output_dir that are never uploaded (huggingface_hub ``ignore_patterns``,
#: fnmatch on paths relative to it; a ``*`` also matches ``/``).
UPLOAD_IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoints/*",  # resumable training state: optimizer, RNG, per-rank files
    "tracking/*",  # train.report_to's local tracker files (textcl.core.trainer.TRACKING_DIR)
    "log.jsonl",
    "initial_metrics.json",  # also in metrics.json as initial/<name>
    ".*",  # .textcl.lock, .final-model.tmp/, the interrupted-install marker
    "*/.*",
    "*.lock",
)

# A model's weights, whatever the method: safetensors (text, vision) or word vectors (SGNS).
_WEIGHT_PATTERNS = ("*.safetensors", "vectors.bin", "vectors.txt")


class HubError(RecipeError):
    """A hub upload that cannot happen, phrased for the user (one line)."""


def _cause(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for a one-line error."""
    from textcl.model_location import _first_line

    text = _first_line(exc)
    return text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


def check_finished_model(output_dir: str | Path) -> Path:
    """``output_dir`` if it holds a finished run's model (weights, ``README.md`` card and
    ``metrics.json``, written last by ``textcl.train``); else :class:`HubError`."""
    from textcl.core.io import INSTALL_MARKER

    out = Path(output_dir)
    if not out.is_dir():
        what = "not a directory" if out.exists() else "no such directory"
        raise HubError(f"{out}: {what} — give the output_dir of a finished training run")
    if (out / INSTALL_MARKER).exists():
        raise HubError(
            f"{out}: the model install was interrupted (a half-written model) — rerun the training "
            "with --overwrite, then upload"
        )
    missing = [name for name in ("README.md", "metrics.json") if not (out / name).is_file()]
    if not any(next(out.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        missing.insert(0, "model weights")
    if missing:
        raise HubError(
            f"{out}: not a finished textcl model (no {', '.join(missing)}) — give the output_dir of a "
            "finished run, or finish this one (python -m textcl.train RECIPE --resume)"
        )
    return out


def files_to_upload(output_dir: str | Path) -> list[str]:
    """The files :func:`push_to_hub` uploads, as POSIX paths relative to ``output_dir``, sorted:
    huggingface_hub's own filter with :data:`UPLOAD_IGNORE_PATTERNS` and its defaults."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(output_dir)
    paths = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file())
    ignore = [*UPLOAD_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]
    return list(filter_repo_objects(paths, ignore_patterns=ignore))


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when the network fails: OSError (requests' errors,
    huggingface_hub's OfflineModeIsEnabled and HTTP errors) plus the transport errors of the
    httpx flavour huggingface_hub 1.x/2.x uses, which are not OSErrors."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _hub_problem(repo_id: str, exc: BaseException) -> HubError:
    """One line for a failed hub call, with the fix that fits its cause."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{repo_id}: huggingface_hub is in offline mode — unset HF_HUB_OFFLINE to upload")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            return HubError(
                f"{repo_id}: the hub refused the token ({_cause(exc)}) — use a token with write "
                "access to this namespace (HF_TOKEN or hf auth login)"
            )
        return HubError(f"{repo_id}: the hub refused the upload ({_cause(exc)}) — check the repo id and the token")
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
        return HubError(f"{repo_id}: upload failed ({_cause(exc)}) — check that the model files are readable")
    return HubError(
        f"{repo_id}: cannot reach the Hugging Face Hub ({_cause(exc)}) — check the network "
        "(or HF_ENDPOINT) and try again"
    )


def connect(repo_id: str, *, private: bool = False, token: str | None = None) -> Any:
    """Create the model repo ``repo_id`` (or find it), after checking that an upload can
    happen at all: not offline, a token, the hub reachable. Returns its ``RepoUrl`` (a str
    with ``.repo_id``). Run before training too, so these fail before hours of work."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from textcl.model_location import _hub_reachable, _offline_env

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"{repo_id}: not a valid repo id — use 'user-or-org/name': letters, digits, '-', '_', '.', "
            "at most 96 characters"
        ) from None
    if _offline_env():
        raise HubError(
            f"{repo_id}: offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) — unset it on a "
            "machine with network to upload"
        )
    if token is None and get_token() is None:
        raise HubError(f"{repo_id}: no Hugging Face token — run hf auth login or export HF_TOKEN")
    # One bounded probe first: without network the client's own calls may wait and retry.
    if not _hub_reachable():
        from huggingface_hub import constants

        raise HubError(
            f"{repo_id}: cannot reach the Hugging Face Hub at {constants.ENDPOINT} — check the network "
            "(or HF_ENDPOINT) and try again"
        )
    try:
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except _network_errors() as exc:
        raise _hub_problem(repo_id, exc) from None


def push_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a finished run's model and card (:func:`files_to_upload`) to the model repo
    ``repo_id``, creating it if needed; returns the repo's URL.

    ``private`` applies when the repo is created; ``token`` defaults to ``HF_TOKEN`` / the
    stored login. Raises :class:`HubError` (one line) for a directory that is not a finished
    model, offline mode, no token, or a hub that cannot be reached or refuses.
    """
    from huggingface_hub import HfApi

    out = check_finished_model(output_dir)
    url = connect(repo_id, private=private, token=token)
    try:
        HfApi(token=token).upload_folder(
            repo_id=url.repo_id,
            folder_path=str(out),
            repo_type="model",
            commit_message=commit_message or "Upload model trained with textcl",
            # A fresh list: upload_folder appends its defaults to the one it is given.
            ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),
        )
    except _network_errors() as exc:
        raise _hub_problem(repo_id, exc) from None
    return str(url)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m textcl.hub",
        description="Upload a finished training run's model and model card to the Hugging Face Hub.",
    )
    p.add_argument("output_dir", help="the output_dir of a finished python -m textcl.train run")
    p.add_argument("repo_id", help="model repo, 'user-or-org/name' (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, upload nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 uploaded, 2 with one ``error:`` line on stderr."""
    args = _parser().parse_args(argv)
    from textcl.core.lock import DirLock

    try:
        out = check_finished_model(args.output_dir)
        if args.dry_run:
            print("\n".join(files_to_upload(out)))
            return 0
        # A run writing into the directory now would change it mid-upload. A read-only
        # directory (someone else's run, a mounted copy) cannot take the lock, nor be written.
        writable = os.access(out, os.W_OK)
        with DirLock(out, str(out)) if writable else contextlib.nullcontext():
            url = push_to_hub(out, args.repo_id, private=args.private, commit_message=args.commit_message)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"uploaded {out} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
