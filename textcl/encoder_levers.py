"""The training levers of :class:`textcl.encoders.TextEncoder` that keep the start's lexical
signal: per-token weights of the bag paths, an lr multiplier and an L2-SP anchor for the input
embeddings, and a whitening layer trained through. A mixin: it reads the encoder's
``transformer``, ``bow_weight``, ``start_bag``, ``output_layer`` and ``projection``.

Below :mod:`textcl.encoders` in the text stack; it imports nothing of textcl.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["EncoderLevers"]


class EncoderLevers:
    """Optimizer and pooling options of a :class:`~textcl.encoders.TextEncoder` (all off by default)."""

    transformer: Any
    dim: int
    bow_weight: float
    start_bag: Any
    output_layer: Any
    projection: Any
    token_weights: torch.Tensor | None
    embedding_lr_scale: float
    output_layer_lr_scale: float
    anchor_weight: float
    train_output_layer: bool
    _anchor: torch.Tensor | None

    def set_token_weights(self, weights: torch.Tensor | None) -> None:
        """Weight each token of the bag paths (``bow_weight``, ``start_bag_weight``) by
        ``weights[id]`` (one per vocabulary id; ``None``: the plain mean). The contextual mean is unweighted."""
        if weights is None:
            self.token_weights = None
            return
        vocab = self.transformer.get_input_embeddings().num_embeddings
        if weights.dim() != 1 or weights.shape[0] != vocab:
            raise ValueError(f"token_weights must hold one weight per vocabulary id ({vocab}), got {tuple(weights.shape)}")
        if not self.bow_weight and self.start_bag is None:
            raise ValueError("token_weights weight the bag paths: set bow_weight or start_bag_weight > 0")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("token_weights must be finite and >= 0")
        device = self.transformer.get_input_embeddings().weight.device
        self.token_weights = weights.detach().float().to(device)

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
