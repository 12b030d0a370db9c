"""SimCLR (Chen et al., ICML 2020): two augmented views, projection MLP, NT-Xent.

NT-Xent, exactly: the 2N projections of a global batch of N images (both views) are all
queries; for query ``z_i`` the positive is the other view of the same image and the
negatives are the other 2N - 2 projections (the query itself is excluded). Loss = mean
over all 2N queries, so it is symmetric in the two views. Under data parallelism every
process's projections are all-gathered with gradient, so N is the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from textcl.core.distributed import batch_offset, gather_with_grad
from textcl.core.losses import info_nce, retrieval_top1
from textcl.vision.augment import AugmentConfig, ViewAugment
from textcl.vision.methods.common import (
    VisionConfig,
    VisionMethod,
    VisionObjective,
    projection_mlp,
)

__all__ = ["SimCLR", "SimCLRConfig", "nt_xent"]

CITATION = """@inproceedings{chen2020simclr,
  title = {A Simple Framework for Contrastive Learning of Visual Representations},
  author = {Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},
  booktitle = {Proceedings of ICML 2020},
  pages = {1597--1607},
  year = {2020}
}"""


class SimCLRObjective(VisionObjective):
    temperature: float = Field(0.5, gt=0)  # the paper's CIFAR-10 value
    projection_dim: int = Field(128, ge=1)
    projection_hidden_dim: int | None = Field(None, ge=1, description="default: the backbone's width")
    projection_layers: int = Field(2, ge=1)
    augment: AugmentConfig = AugmentConfig()


class SimCLRConfig(VisionConfig):
    objective: SimCLRObjective = SimCLRObjective()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """NT-Xent of this process's view pairs ``(B, d)`` against the gathered global batch,
    through the core ``info_nce``; returns (loss, pretext top-1)."""
    b = z1.shape[0]
    k1, k2 = gather_with_grad(z1), gather_with_grad(z2)
    n = k1.shape[0]
    keys = torch.cat([k1, k2])  # candidates: view 1 of all N images, then view 2
    queries = torch.cat([z1, z2])
    i = torch.arange(b, device=z1.device) + batch_offset(b)
    self_idx, positive = torch.cat([i, i + n]), torch.cat([i + n, i])
    exclude = torch.zeros(2 * b, 2 * n, dtype=torch.bool, device=z1.device)
    exclude[torch.arange(2 * b, device=z1.device), self_idx] = True
    loss = info_nce(queries, keys, ignore_mask=exclude, temperature=temperature, labels=positive)
    return loss, retrieval_top1(queries, keys, labels=positive, ignore_mask=exclude)


class SimCLR(VisionMethod):
    name = "simclr"
    config_class = SimCLRConfig
    citation = CITATION
    objective_name = "SimCLR (NT-Xent over two augmented views, projection MLP)"

    def __init__(self, cfg: SimCLRConfig, splits: Any, seed: int = 42):
        super().__init__(cfg, splits, seed)
        obj = cfg.objective
        dim = self.backbone.dim
        self.head = projection_mlp(dim, obj.projection_hidden_dim or dim, obj.projection_dim, obj.projection_layers)
        self.augment = ViewAugment(obj.augment)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # (2B, ...): two independent draws per image, keyed by (seed, epoch, index, view)
        views = self.augment.views(self.images(batch), 2, self.example_keys(batch))
        # One forward for both views: BatchNorm statistics over all 2B views, as SimCLR's
        # (global, with sync_bn) BN does.
        z1, z2 = self.head(self.backbone(views)).chunk(2)
        loss, acc = nt_xent(z1, z2, self.cfg.objective.temperature)
        return {"loss": loss, "top1": acc}
