"""Memory-bank methods: NPID / InstDisc (Wu et al., CVPR 2018) and PIRL (Misra & van der
Maaten, CVPR 2020).

NPID: every training image is its own class. Its 128-d L2-normalised feature ``v`` is
contrasted with its memory-bank entry (the positive) and ``num_negatives`` entries drawn
uniformly from the bank, shared by the global batch (every process draws the same ones,
keyed by (seed, epoch, global batch), as one process would). ``loss: nce`` is the
paper's NCE (eq. 7-8: ``P(i|v) = exp(v.m_i / t) / Z``, ``Z`` estimated once on the first batch and
then fixed, noise ``P_n = 1/N``); ``loss: infonce`` is the core ``info_nce`` over the
positive and the same negatives. After the optimizer step the bank entries of the
batch move towards the new features: ``m_i <- normalize(mu m_i + (1 - mu) v_i)``.

PIRL: the image ``I`` and its jigsaw transform ``I^t`` (3x3 patches, each encoded by the
backbone, projected, concatenated in the shuffled order and projected again) are both
contrasted with the bank entry ``m_I`` of the image:
``L = lambda * L(m_I, g(v_{I^t})) + (1 - lambda) * L(m_I, f(v_I))`` (paper eq. 5); the bank
tracks ``f(v_I)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from textcl.core.distributed import is_distributed, random_keys
from textcl.core.losses import info_nce, retrieval_top1
from textcl.core.memory_bank import MemoryBank
from textcl.vision.augment import AugmentConfig, Jigsaw, ViewAugment
from textcl.vision.methods.common import (
    VisionConfig,
    VisionMethod,
    VisionObjective,
)

__all__ = ["NPID", "PIRL", "BankObjective", "nce_loss"]

NPID_CITATION = """@inproceedings{wu2018npid,
  title = {Unsupervised Feature Learning via Non-Parametric Instance Discrimination},
  author = {Wu, Zhirong and Xiong, Yuanjun and Yu, Stella X. and Lin, Dahua},
  booktitle = {Proceedings of CVPR 2018},
  pages = {3733--3742},
  year = {2018}
}"""

PIRL_CITATION = """@inproceedings{misra2020pirl,
  title = {Self-Supervised Learning of Pretext-Invariant Representations},
  author = {Misra, Ishan and van der Maaten, Laurens},
  booktitle = {Proceedings of CVPR 2020},
  pages = {6707--6717},
  year = {2020}
}"""


class BankObjective(VisionObjective):
    feature_dim: int = Field(128, ge=1)
    temperature: float = Field(0.07, gt=0)
    num_negatives: int = Field(4096, ge=1)
    bank_momentum: float = Field(0.5, ge=0, le=1)
    loss: Literal["nce", "infonce"] = "nce"
    # "random": unit vectors (the papers); "features": one no-grad pass of the initial
    # network over the training set before step 1, so that in short runs the first epoch
    # does not pull every image towards a random positive.
    bank_init: Literal["random", "features"] = "random"
    # NPID's CIFAR views: crop scale (0.2, 1), jitter, grayscale, flip.
    augment: AugmentConfig = AugmentConfig(scale=(0.2, 1.0))


class PIRLObjective(BankObjective):
    jigsaw_weight: float = Field(0.5, ge=0, le=1, description="lambda of the paper's eq. 5")
    grid: int = Field(3, ge=2)
    patch_size: int = Field(10, ge=4, description="pixels per side of each encoded patch")
    patch_fraction: float = Field(0.8, gt=0, le=1, description="patch side / grid-cell side")


class NPIDConfig(VisionConfig):
    objective: BankObjective = BankObjective()


class PIRLConfig(VisionConfig):
    objective: PIRLObjective = PIRLObjective()


def nce_loss(pos: Tensor, neg: Tensor, log_z: Tensor, n_data: int) -> Tensor:
    """NPID's NCE. ``pos`` (B,) and ``neg`` (B, K): scores ``v.m / t``; ``log P = s - log Z``.

    ``h = P / (P + K/N) = sigmoid(log P - log(K/N))``; loss
    ``-mean_i [log h(pos_i) + sum_k log(1 - h(neg_ik))]``.
    """
    shift = log_z + math.log(neg.shape[1] / n_data)
    return -(F.logsigmoid(pos - shift) + F.logsigmoid(-(neg - shift)).sum(dim=1)).mean()


class _BankMethod(VisionMethod):
    """Shared: the 128-d head, the bank, the contrastive term and the bank update."""

    def __init__(self, cfg: Any, splits: Any, seed: int = 42):
        super().__init__(cfg, splits, seed)
        obj = cfg.objective
        self.head = nn.Linear(self.backbone.dim, obj.feature_dim)
        self.augment = ViewAugment(obj.augment)
        self.bank = MemoryBank(self.num_train, obj.feature_dim, seed=seed)
        # NCE normaliser per loss term (PIRL's jigsaw and image terms score differently),
        # estimated on the first batch.
        self.register_buffer("log_z", torch.full((2,), float("nan")))
        self.register_buffer("bank_ready", torch.tensor(obj.bank_init == "random"))  # checkpointed
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._ddp_ignore("bank.")

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)

    def contrast(self, v: Tensor, positives: Tensor, negatives: Tensor, term: int = 0) -> tuple[Tensor, Tensor]:
        """Loss of features ``v`` vs their bank entries and shared bank negatives; and top-1.
        ``term`` picks the NCE normaliser (0: NPID / PIRL image term, 1: PIRL jigsaw term)."""
        obj, b = self.cfg.objective, v.shape[0]
        labels = torch.arange(b, device=v.device)
        if obj.loss == "infonce":
            # Exactly one positive and the sampled negatives per query: the other rows'
            # bank entries are excluded, not extra negatives.
            off_diag = ~torch.eye(b, dtype=torch.bool, device=v.device)
            loss = info_nce(v, positives, ignore_mask=off_diag, temperature=obj.temperature,
                                      labels=labels, extra_negatives=negatives)
        else:
            with torch.autocast(device_type=v.device.type, enabled=False):  # fp32 scores under AMP
                pos = (v.float() * positives.float()).sum(1) / obj.temperature
                neg = v.float() @ negatives.float().T / obj.temperature
            if torch.isnan(self.log_z[term]):  # Z = N * mean exp(s/t) over the first batch (NPID)
                scores = torch.cat([pos[:, None], neg], dim=1).detach()
                mean = scores.exp().mean()
                if is_distributed():
                    torch.distributed.all_reduce(mean)
                    mean = mean / torch.distributed.get_world_size()
                self.log_z[term] = mean.log() + math.log(self.num_train)
            loss = nce_loss(pos, neg, self.log_z[term], self.num_train)
        cands = torch.cat([positives, negatives])
        return loss, retrieval_top1(v, cands, labels=labels, ignore_mask=~torch.eye(b, dtype=torch.bool, device=v.device))

    def on_train_start(self, trainer: Any) -> None:
        # After a resume the flag comes back True with the checkpointed bank: no re-init.
        if not bool(self.bank_ready):
            self.bank.bank.copy_(self.initial_features())
            self.bank_ready.fill_(True)

    @torch.no_grad()
    def initial_features(self, batch_size: int = 512) -> Tensor:
        """``embed`` of every (un-augmented) training image, BN in training mode as in the
        training forward."""
        from textcl.vision.augment import normalize, to_float

        dev, was_training = self.bank.bank.device, self.training
        self.train()
        out = []
        for start in range(0, self.num_train, batch_size):
            x = torch.from_numpy(np.array(self.train_images[start : start + batch_size])).to(dev)
            out.append(self.embed(normalize(to_float(x))))
        self.train(was_training)
        return torch.cat(out)

    def negatives(self, batch: dict[str, Tensor]) -> Tensor:
        """``num_negatives`` bank entries shared by the global batch: keyed by it
        (``batch_key``), so every process draws the ones one process would."""
        return self.bank.get(self.bank.sample(self.cfg.objective.num_negatives, key=self.batch_key(batch)))

    def after_optimizer_step(self, step: int) -> None:
        # Bank writes after the step (and after every micro-batch's forward), as NPID.
        for index, v in self._pending:
            self.bank.update(index, v, self.cfg.objective.bank_momentum)
        self._pending.clear()


class NPID(_BankMethod):
    name = "npid"
    config_class = NPIDConfig
    citation = NPID_CITATION
    objective_name = "NPID / InstDisc (non-parametric instance discrimination with a memory bank)"

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        v = self.embed(self.augment(self.images(batch), keys=self.example_keys(batch)))
        index = batch["index"]
        loss, acc = self.contrast(v, self.bank.get(index), self.negatives(batch))
        if self.training:
            self._pending.append((index, v.detach()))
        return {"loss": loss, "top1": acc}


class JigsawHead(nn.Module):
    """PIRL's g: per-patch linear map, concatenation in the (shuffled) patch order, linear map."""

    def __init__(self, in_dim: int, out_dim: int, num_patches: int):
        super().__init__()
        self.patch = nn.Linear(in_dim, out_dim)
        self.mix = nn.Linear(out_dim * num_patches, out_dim)

    def forward(self, features: Tensor) -> Tensor:  # (B, P, in_dim) -> (B, out_dim)
        return self.mix(self.patch(features).flatten(1))


class PIRL(_BankMethod):
    name = "pirl"
    config_class = PIRLConfig
    citation = PIRL_CITATION
    objective_name = "PIRL (jigsaw-invariant representations with a memory bank)"

    def __init__(self, cfg: PIRLConfig, splits: Any, seed: int = 42):
        super().__init__(cfg, splits, seed)
        obj = cfg.objective
        self.jigsaw = Jigsaw(obj.grid, obj.patch_size, obj.patch_fraction,
                             color=obj.augment.model_copy(update={"size": obj.patch_size}))
        self.jigsaw_head = JigsawHead(self.backbone.dim, obj.feature_dim, obj.grid**2)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        obj, x, index = self.cfg.objective, self.images(batch), batch["index"]
        keys = self.example_keys(batch)
        v_img = self.embed(self.augment(x, keys=random_keys(keys, 0)))
        patches, _ = self.jigsaw(x, random_keys(keys, 1))
        b, p = patches.shape[:2]
        feats = self.backbone(patches.flatten(0, 1)).view(b, p, -1)
        v_jig = F.normalize(self.jigsaw_head(feats), dim=1)
        positives, negatives = self.bank.get(index), self.negatives(batch)  # negatives shared by both terms
        loss_jig, acc = self.contrast(v_jig, positives, negatives, term=1)
        loss_img, _ = self.contrast(v_img, positives, negatives, term=0)
        loss = obj.jigsaw_weight * loss_jig + (1 - obj.jigsaw_weight) * loss_img
        if self.training:
            self._pending.append((index, v_img.detach()))  # the bank tracks f(v_I)
        return {"loss": loss, "jigsaw_loss": loss_jig.detach(), "image_loss": loss_img.detach(), "top1": acc}
