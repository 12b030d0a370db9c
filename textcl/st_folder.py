"""Reading and writing the sentence-transformers (ST) model directory layout.

:func:`_read_st_layout` parses ``modules.json`` and the module configs of a local or hub
model (:class:`_Location`); :func:`write_st_folder` writes the files of a model that
``SentenceTransformer(path)`` loads. :class:`textcl.encoders.TextEncoder` uses both (its
``from_pretrained`` and ``save``), and :mod:`textcl.encoders` re-exports these names.
``huggingface_hub`` is imported inside the hub branches only, for speed (local models never
need it).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from textcl.model_location import ModelLoadError, _first_line
from textcl.pooling import POOLING_MODES
from textcl.whitening_layer import check_identity_dense

logger = logging.getLogger("textcl")

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
    context_weight: float = 1.0  # its weight of the contextual part (0: a bag of input embeddings)
    start_bag_subfolder: str | None = None  # a StartBag module (frozen start table) after them
    start_bag_weight: float = 0.0
    token_weights_subfolder: str | None = None  # the module whose model.safetensors holds token_weights


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
    bow_weight, context_weight = 0.0, 1.0
    start_dir, start_weight = None, 0.0
    weights_dir = None
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = module.get("path", "")
        elif kind == "Pooling":
            cfg = loc.json(f"{module['path']}/config.json") or {}
            pooling = _pooling_from_config(cfg, f"{loc.ref}/{module['path']}")
        elif kind == "Normalize":
            normalize = True
        elif kind == "BagOfWordsResidual" and pooling is not None and start_dir is None and dense_dir is None \
                and not normalize:
            cfg = loc.json(f"{module['path']}/config.json") or {}
            bow_weight, context_weight = float(cfg.get("weight", 1.0)), float(cfg.get("context_weight", 1.0))
            if cfg.get("token_weighted"):
                weights_dir = module["path"]
        elif kind == "StartBag" and pooling is not None and start_dir is None and dense_dir is None and not normalize:
            cfg = loc.json(f"{module['path']}/config.json") or {}
            start_dir, start_weight = module["path"], float(cfg.get("weight", 1.0))
            if cfg.get("token_weighted") and weights_dir is None:
                weights_dir = module["path"]
        elif kind == "Dense" and pooling is not None and dense_dir is None and not normalize:
            cfg = loc.json(f"{module['path']}/config.json") or {}
            check_identity_dense(cfg, f"{loc.ref}/{module['path']}")
            dense_dir = module["path"]
        else:
            # A Dense/LayerNorm/... module we would silently drop changes the vectors.
            raise ValueError(
                f"{loc.ref}: sentence-transformers module {module['type']} is not supported by "
                "TextEncoder (supported: Transformer, Pooling, BagOfWordsResidual, StartBag, one affine Dense, Normalize)"
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
    return _STLayout(transformer_dir, max_seq_length, pooling, normalize, dense_dir, bow_weight, context_weight,
                     start_dir, start_weight, weights_dir)


def read_start_table(loc: _Location, layout: _STLayout | None) -> torch.Tensor | None:
    """The frozen start table of a saved StartBag module (``None`` without one)."""
    if layout is None or layout.start_bag_subfolder is None:
        return None
    from safetensors.torch import load_file

    return load_file(str(_module_dir(loc, layout.start_bag_subfolder) / "model.safetensors"))["table.weight"]


def read_token_weights(loc: _Location, layout: _STLayout | None) -> torch.Tensor | None:
    """The per-token weights of a saved model's bag paths (``None`` without them)."""
    if layout is None or layout.token_weights_subfolder is None:
        return None
    from safetensors.torch import load_file

    return load_file(str(_module_dir(loc, layout.token_weights_subfolder) / "model.safetensors"))["token_weights"]


def _module_dir(loc: _Location, subfolder: str) -> Path:
    """Local directory of an ST module (downloaded from the hub if the model is not local)."""
    if loc.local:
        return Path(loc.ref) / subfolder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(loc.ref, allow_patterns=[f"{subfolder}/*"])) / subfolder



def write_st_folder(
    path: str | Path,
    *,
    transformer: nn.Module,
    tokenizer: Any,
    max_seq_length: int,
    pooling: str,
    dim: int,
    normalize: bool,
    bow_weight: float = 0.0,
    context_weight: float = 1.0,
    output_layer: nn.Module | None = None,
    model_card: str | None = None,
    start_bag: tuple[float, torch.Tensor] | None = None,
    token_weights: torch.Tensor | None = None,
) -> None:
    """Write a sentence-transformers model directory into ``path`` (created if needed); see
    :meth:`textcl.encoders.TextEncoder.save`, which calls it with its own settings.

    ``dim`` is the pooled width; ``output_layer`` (a :class:`~textcl.whitening_layer.Whitening`)
    is written as a ``Dense`` module and ``bow_weight`` > 0 as a
    :class:`textcl.st_modules.BagOfWordsResidual` module (with ``context_weight``, the weight
    of the contextual part, when it is not 1). ``start_bag`` = ``(weight, frozen table)`` is
    written as a :class:`textcl.st_modules.StartBag` module (its own ``model.safetensors``).
    ``token_weights`` (per-token weights of the bag paths) go into each bag module's
    ``model.safetensors``, flagged by ``token_weighted`` in its config.
    """
    weighted = token_weights is not None
    if weighted and not bow_weight and start_bag is None:
        raise ValueError("token_weights need a bag path (bow_weight or start_bag)")
    weights = {"token_weights": token_weights.detach().float().contiguous().cpu()} if weighted else {}
    # We write ST's files ourselves rather than building ST modules and calling ST's save:
    # building an ST Transformer module means reloading the weights from disk (slow, twice
    # the memory) and importing sentence-transformers (seconds). We write the classic
    # layout (``sentence_transformers.models.*`` names, ``max_seq_length`` in
    # sentence_bert_config.json, boolean pooling keys), which is what most hub models
    # use: ST 2.x-5.x load it natively and ST 6 maps it (checked with 6.2 in the tests).
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # transformers >= 4.35 writes safetensors by default and 5.x only can; no pickles.
    transformer.save_pretrained(str(path))
    previous = tokenizer.model_max_length
    try:
        # ST 6 takes max_seq_length from here; older ST from sentence_bert_config.json.
        tokenizer.model_max_length = max_seq_length
        tokenizer.save_pretrained(str(path))
    finally:
        tokenizer.model_max_length = previous
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if bow_weight:
        n = len(modules)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_BagOfWordsResidual",
             "type": "textcl.st_modules.BagOfWordsResidual"}
        )
        bow_config: dict[str, Any] = {"weight": bow_weight}
        if context_weight != 1.0:
            bow_config["context_weight"] = context_weight
        if weighted:
            bow_config.update(token_weighted=True, vocab_size=int(token_weights.shape[0]))
        _write_json(path / f"{n}_BagOfWordsResidual" / "config.json", bow_config)
        if weighted:
            save_file(weights, str(path / f"{n}_BagOfWordsResidual" / "model.safetensors"))
    if start_bag is not None:
        n = len(modules)
        modules.append({"idx": n, "name": str(n), "path": f"{n}_StartBag", "type": "textcl.st_modules.StartBag"})
        weight, table = start_bag
        start_config: dict[str, Any] = {"weight": weight, "vocab_size": int(table.shape[0]), "dim": int(table.shape[1]),
                                        "pooled_dim": dim}
        if weighted:
            start_config["token_weighted"] = True
        _write_json(path / f"{n}_StartBag" / "config.json", start_config)
        save_file({"table.weight": table.detach().contiguous().cpu(), **weights},
                  str(path / f"{n}_StartBag" / "model.safetensors"))
    if output_layer is not None:
        n = len(modules)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Dense", "type": "sentence_transformers.models.Dense"}
        )
        output_layer.save(path / f"{n}_Dense")
    if normalize:
        # No files: ST's Normalize has no parameters and loads without a config.
        n = len(modules)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    _write_json(path / "modules.json", modules)
    _write_json(
        path / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}
    )
    pooling_config = {"word_embedding_dimension": dim}
    pooling_config.update({key: mode == pooling for key, mode in _LEGACY_POOLING_KEYS.items()})
    pooling_config["include_prompt"] = True
    _write_json(path / "1_Pooling" / "config.json", pooling_config)
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


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_json(file: Path, data: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
