"""Turn a model spec (or any encoder-like object) into one encoder interface for benchmarks.

Every encoder returned by :func:`load_model` has a ``name`` and
``encode(texts, batch_size=64, normalize=True, show_progress=None) -> float32 (n, d)``.

Specs:

* ``avg-word-vectors:PATH`` -- ``benchmarks.baselines.AvgWordVectors.load(PATH)``
* ``random-init:NAME_OR_PATH`` -- ``benchmarks.baselines.random_init_embedder(NAME_OR_PATH)``
* anything else -- ``textcl.Embedder.load(spec)`` (a textcl output dir, a sentence-transformers
  dir, or a Hugging Face encoder name/path)

Objects: anything with an ``encode`` method (a textcl ``Embedder``, a ``SentenceTransformer``,
...) or a plain callable ``f(list[str]) -> array``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["CallableEncoder", "Encoder", "ObjectEncoder", "load_model"]


@runtime_checkable
class Encoder(Protocol):
    """What the benchmarks need from a model."""

    name: str

    def encode(
        self,
        texts: list[str],
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray: ...


def _as_matrix(out: Any, n: int, normalize: bool, source: str) -> np.ndarray:
    """Model output -> float32 ``(n, d)``; unit rows if ``normalize`` (idempotent)."""
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().float().cpu().numpy()
    mat = np.asarray(out, dtype=np.float32)
    if mat.ndim != 2 or mat.shape[0] != n:
        raise ValueError(f"{source} returned shape {mat.shape} for {n} texts, expected ({n}, dim)")
    if normalize:
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        mat = mat / np.maximum(norms, 1e-12)
    return mat


class ObjectEncoder:
    """Adapts any object with an ``encode`` method, passing only the keywords it accepts.

    ``normalize`` maps to ``normalize`` or ``normalize_embeddings``, ``show_progress`` to
    ``show_progress`` or ``show_progress_bar`` (the sentence-transformers names); the vectors
    are normalized here as well, so a model without such a keyword still gives unit vectors.
    """

    def __init__(self, model: Any, name: str | None = None) -> None:
        """Wrap ``model``; ``name`` defaults to its own ``name`` or its class name."""
        if not callable(getattr(model, "encode", None)):
            raise TypeError(f"{type(model).__name__} has no encode method")
        self.model = model
        self.name = name or str(getattr(model, "name", None) or type(model).__name__)
        try:
            params = inspect.signature(model.encode).parameters
        except (TypeError, ValueError):  # builtins / C extensions: pass nothing extra
            params = {}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._accepts = lambda key: var_kw or key in params
        self._params = params

    def _keyword(self, *names: str) -> str | None:
        # Prefer an explicit parameter over **kwargs so ST gets its own names.
        for key in names:
            if key in self._params:
                return key
        return names[0] if self._accepts(names[0]) else None

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 ``(n, d)``."""
        texts = list(texts)
        kwargs: dict[str, Any] = {}
        if self._accepts("batch_size"):
            kwargs["batch_size"] = batch_size
        key = self._keyword("normalize", "normalize_embeddings")
        if key:
            kwargs[key] = normalize
        key = self._keyword("show_progress", "show_progress_bar")
        if key and show_progress is not None:
            kwargs[key] = show_progress
        if "convert_to_numpy" in self._params:
            kwargs["convert_to_numpy"] = True
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return _as_matrix(self.model.encode(texts, **kwargs), len(texts), normalize, self.name)


class CallableEncoder:
    """Adapts ``f(list[str]) -> array`` to the encoder interface, calling it batch by batch."""

    def __init__(self, fn: Callable[[list[str]], Any], name: str | None = None) -> None:
        """Wrap ``fn``; ``name`` defaults to its ``__name__``."""
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 ``(n, d)``, ``batch_size`` texts per call of ``fn``."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if show_progress is None:
            show_progress = len(texts) >= 8 * batch_size
        parts = []
        for start in tqdm(
            range(0, len(texts), batch_size), disable=not show_progress, desc="Encoding", unit="batch"
        ):
            batch = texts[start : start + batch_size]
            parts.append(_as_matrix(self.fn(batch), len(batch), normalize, self.name))
        return np.concatenate(parts)


def load_model(spec: str | Any) -> Encoder:
    """A spec string, an object with ``encode``, or a callable -> an encoder with ``.name``."""
    if not isinstance(spec, str):
        if callable(getattr(spec, "encode", None)):
            return ObjectEncoder(spec)
        if callable(spec):
            return CallableEncoder(spec)
        raise TypeError(
            f"expected a model spec string, an object with encode(), or a callable; got {type(spec).__name__}"
        )
    kind, sep, arg = spec.partition(":")
    # Imported lazily: benchmarks.baselines pulls in its own dependencies.
    if sep and kind == "avg-word-vectors":
        from benchmarks.baselines import AvgWordVectors

        return ObjectEncoder(AvgWordVectors.load(arg), name=spec)
    if sep and kind == "random-init":
        from benchmarks.baselines import random_init_embedder

        return ObjectEncoder(random_init_embedder(arg), name=spec)
    from textcl.embed import Embedder

    return ObjectEncoder(Embedder.load(spec), name=spec)
