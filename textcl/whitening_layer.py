"""The whitening layer: an affine map after pooling, saved as a sentence-transformers ``Dense``.

:class:`Whitening` fits ``x -> (x - mean) @ U diag(1/sqrt(lambda))`` on embeddings
(BERT-whitening, Su et al. 2021) and reads / writes the ST ``Dense`` module layout with
identity activation. It sits beside the encoder: :class:`textcl.encoders.TextEncoder`
loads it as its ``output_layer``. Fitting it on a model's embeddings of a corpus and writing
the whitened model is :mod:`textcl.whitening` (the command-line tool), which re-exports these
names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["IDENTITY", "Whitening", "check_identity_dense"]

# The name the fit's warnings always had (this class lived in textcl.whitening).
logger = logging.getLogger("textcl.whitening")

#: What sentence-transformers writes for an identity activation (``fullname(nn.Identity())``).
IDENTITY = "torch.nn.modules.linear.Identity"


class Whitening(nn.Module):
    """The affine map ``x -> (x - mean) @ W``, stored as ``linear`` (ST ``Dense`` layout)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        """An identity-initialised map of ``in_features`` -> ``out_features`` (use :meth:`fit`)."""
        super().__init__()
        if not 1 <= out_features <= in_features:
            raise ValueError(f"whitening keeps 1..{in_features} dimensions, got {out_features}")
        self.linear = nn.Linear(in_features, out_features)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(out_features, in_features))
            self.linear.bias.zero_()
        self.linear.requires_grad_(False)
        #: Fraction of the fitted embeddings' variance per kept component (set by :meth:`fit`).
        self.explained: np.ndarray | None = None

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    @classmethod
    def fit(cls, embeddings: np.ndarray | torch.Tensor, dim: int | None = None, eps: float = 1e-9) -> Whitening:
        """Fit on ``(n, d)`` embeddings; ``dim`` keeps the top components (default: all ``d``).

        In float64: ``mean``, covariance ``C`` (n - 1), ``C = U diag(lambda) U^T`` with
        eigenvalues in decreasing order, ``W = U[:, :dim] / sqrt(lambda[:dim] + eps)``.
        """
        x = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be (n, d), got shape {x.shape}")
        n, d = x.shape
        if n < 2:
            raise ValueError(f"whitening needs at least 2 embeddings to estimate a covariance, got {n}")
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("embeddings contain NaN or inf -- the encoder produced non-finite vectors")
        dim = d if dim is None else int(dim)
        if not 1 <= dim <= d:
            raise ValueError(f"dim must be in 1..{d} (the embedding width), got {dim}")
        if n <= d:
            logger.warning(
                "%d embeddings for %d dimensions: the covariance is singular and the smallest "
                "components are noise; fit on at least 10x as many sentences as dimensions", n, d
            )
        mean = x.mean(axis=0)
        centered = x - mean
        cov = centered.T @ centered / (n - 1)
        all_values, vectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(all_values)[::-1][:dim]
        values = np.clip(all_values[order], 0.0, None)
        w = vectors[:, order] / np.sqrt(values + eps)  # (d, dim)
        out = cls(d, dim)
        with torch.no_grad():
            out.linear.weight.copy_(torch.from_numpy(w.T.copy()))
            out.linear.bias.copy_(torch.from_numpy(-(mean @ w)))
        out.explained = values / max(float(np.clip(all_values, 0.0, None).sum()), 1e-300)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_features)`` -> ``(B, out_features)``."""
        return self.linear(x.to(self.linear.weight.dtype))

    # ---- the sentence-transformers Dense module layout

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` as sentence-transformers' ``Dense`` does."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": True,
            "activation_function": IDENTITY,
        }
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))

    @classmethod
    def load(cls, path: str | Path) -> Whitening:
        """Read a ``Dense`` module directory with identity activation and a bias."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a sentence-transformers Dense module")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        check_identity_dense(config, str(path))
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"{weights} not found (textcl reads safetensors only; re-save the model with "
                "sentence-transformers' safe_serialization=True)"
            )
        out = cls(int(config["in_features"]), int(config["out_features"]))
        out.load_state_dict(load_file(str(weights)))
        return out


def check_identity_dense(config: dict[str, Any], where: str) -> None:
    """Raise unless a Dense module config is an affine map (identity activation, bias, no residual)."""
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    problems = []
    if activation != IDENTITY:
        problems.append(f"activation {activation}")
    if not config.get("bias", True):
        problems.append("no bias")
    if config.get("use_residual"):
        problems.append("a residual connection")
    if problems:
        raise ValueError(
            f"{where}: Dense module with {', '.join(problems)} is not supported by TextEncoder "
            "(only affine Dense layers with identity activation, as textcl.whitening writes)"
        )
