"""What every vision method shares: recipe sections, data plumbing, kNN evaluation,
output, and the MLP projection head. (InfoNCE with excluded candidates is the core
``textcl.core.losses.info_nce``.)

A vision ``Method`` receives batches ``{"images": uint8 (B, H, W, 3), "index": (B,)}``
(uint8 moves to the device 4x cheaper than float) and augments them there, in
``forward``, with the batched ops of ``textcl.vision.augment``, keyed per image by
``example_keys`` = (seed, epoch, dataset index): an image's views do not depend on the
batch, the process or the number of processes it is trained in (the randomness contract
in ``textcl.core.distributed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from textcl.core.distributed import gather_no_grad, random_keys
from textcl.core.method import Method, MethodConfig
from textcl.vision.backbones import BackboneConfig, build_backbone, save_backbone
from textcl.vision.data import DataConfig, ImageDataset, ImageSplits, load_splits
from textcl.vision.evaluate import extract_features, knn_accuracy

__all__ = ["VisionConfig", "VisionMethod", "VisionObjective", "projection_mlp"]

#: Streams of ``random_keys`` under the seed: per-image augmentation, per-batch draws.
AUGMENT_STREAM, BATCH_STREAM = 0, 1


class VisionObjective(MethodConfig):
    """Fields every vision objective has."""

    sync_bn: bool = Field(False, description="SyncBatchNorm across processes (SimCLR's global BN)")


class VisionConfig(MethodConfig):
    model: BackboneConfig = BackboneConfig()
    data: DataConfig = DataConfig()
    objective: VisionObjective = VisionObjective()


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    """``num_layers`` linear layers with BatchNorm + ReLU between them (the last one has a
    bias, the others none as BatchNorm follows): SimCLR's and SwAV's projection head
    (SimCLR v2 uses 3 layers). MoCo uses it too, with BatchNorm -- MoCo v2's own head is
    Linear-ReLU-Linear without BatchNorm."""
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=last))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class VisionMethod(Method):
    """Backbone + data + kNN evaluation + output; subclasses add heads, views and loss."""

    config_class: ClassVar[type[MethodConfig]] = VisionConfig
    #: Human-readable objective for the model card.
    objective_name: ClassVar[str] = ""

    def __init__(self, cfg: Any, splits: ImageSplits, seed: int = 42):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        d = cfg.data
        self.train_images = splits.subset(d.train_subset, None, seed).x_train
        knn = splits.subset(d.knn_bank, d.knn_queries, seed + 7)
        self.knn_data = knn
        self.num_train = len(self.train_images)
        self.data_desc = (
            f"{self.num_train} training images ({d.source}"
            f"{': `' + str(d.path) + '`' if d.path else ''}), {len(knn.y_train)}-image kNN bank, "
            f"{len(knn.y_test)} kNN test queries"
        )
        self.backbone = build_backbone(cfg.model)
        self.epoch = 0  # keys the augmentation; set by the trainer (on_epoch_start)

    @classmethod
    def from_recipe(cls, recipe: Any) -> VisionMethod:
        from textcl.documents import DataError

        try:
            splits = load_splits(recipe.config.data, seed=recipe.seed)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{recipe.path}: data: {exc}") from None
        method = cls(recipe.config, splits, seed=recipe.seed)
        if recipe.config.objective.sync_bn:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        return method

    def _ddp_ignore(self, *prefixes: str) -> None:
        """Keep DDP from broadcasting these buffers every step: the method keeps them
        identical on every rank itself (gathered updates), and a memory bank is big."""
        names = [n for n, _ in self.named_buffers() if n.startswith(prefixes)]
        self._ddp_params_and_buffers_to_ignore = names

    # ---- randomness (keyed, see textcl.core.distributed)
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def example_keys(self, batch: dict[str, Tensor]) -> Tensor:
        """One int64 key per image, from (seed, epoch, dataset index): the same on whichever
        process and in whichever batch the image is; ``textcl.vision.augment`` draws from it."""
        return random_keys(self.seed, AUGMENT_STREAM, self.epoch, batch["index"])

    def batch_key(self, batch: dict[str, Tensor], draw: int = 0) -> Tensor:
        """One int64 key for the *global* batch, the same on every process: from (seed,
        epoch, the global batch's first dataset index -- the trainer's batches of an epoch
        are disjoint slices of one permutation, rank-major, so it names the batch), for
        draws shared by the batch (memory-bank negatives). One all-gather of a scalar."""
        first = gather_no_grad(batch["index"][:1])[0]
        return random_keys(self.seed, BATCH_STREAM, self.epoch, first, draw)

    # ---- data
    def train_dataset(self) -> torch.utils.data.Dataset:
        return ImageDataset(self.train_images)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {
            "images": torch.stack([e["image"] for e in examples]),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

    def examples_in(self, batch: dict[str, Tensor]) -> int:
        return int(batch["images"].shape[0])

    def images(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch as float ``(B, 3, H, W)`` in [0, 1] on the device."""
        from textcl.vision.augment import to_float

        return to_float(batch["images"])

    # ---- evaluation and output
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Weighted kNN top-1 (k, temperature from ``data``) of the backbone's features."""
        d, knn = self.cfg.data, self.knn_data
        if len(knn.y_train) == 0 or len(knn.y_test) == 0:
            return {}
        dev = next(self.parameters()).device
        bank = extract_features(self.backbone, knn.x_train, d.eval_batch_size, dev)
        queries = extract_features(self.backbone, knn.x_test, d.eval_batch_size, dev)
        acc = knn_accuracy(queries, torch.as_tensor(knn.y_test), bank, torch.as_tensor(knn.y_train),
                           k=d.knn_k, temperature=d.knn_temperature)
        return {"knn_top1": acc}

    def card_info(self) -> dict[str, Any]:
        m = self.cfg.model
        return {
            "objective": self.objective_name or self.name,
            "objective_citation": self.citation,
            "backbone": f"{m.arch} (width {m.width}{', CIFAR stem' if m.cifar_stem and m.arch != 'vit_tiny' else ''})",
            "dim": self.backbone.dim,
            "data": self.data_desc,
        }

    def save_model(self, path: Path, card_info: dict[str, Any]) -> None:
        """The backbone only (heads, prototypes, banks and momentum encoders are training
        machinery): safetensors + config, and a model card."""
        save_backbone(self.backbone, path)
        (Path(path) / "README.md").write_text(render_vision_card(card_info), encoding="utf-8")


def render_vision_card(info: dict[str, Any]) -> str:
    """Markdown model card for an image backbone; local paths (the npz file or image folder,
    the recipe's) written portably (:func:`textcl.card.portable_card_info`), never absolute."""
    from textcl.card import portable_card_info, portable_text

    info = portable_card_info(info)
    out = ["---", "library_name: textcl", "tags:", "- image-feature-extraction", "- contrastive-learning",
           "---", "", "# Image backbone trained with textcl", ""]
    out += [f"- **Objective:** {info.get('objective', '')}", f"- **Backbone:** {info.get('backbone', '')}",
            f"- **Feature dimension:** {info.get('dim', '')}", ""]
    if info.get("data"):
        out += ["## Training data", "", str(info["data"]), ""]
    if info.get("recipe_yaml"):
        out += ["## Training recipe", "", "```yaml", str(info["recipe_yaml"]).rstrip("\n"), "```", ""]
    metrics = info.get("metrics") or {}
    if metrics:
        out += ["## Metrics", "", "kNN: weighted k-nearest neighbours on frozen features (InstDisc protocol).",
                "", "| Metric | Value |", "|---|---|"]
        out += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        out.append("")
    out += ["## Usage", "", "```python", "from textcl.vision.backbones import load_backbone",
            "from textcl.vision.augment import normalize, to_float", "",
            'backbone = load_backbone("path/to/this/model")',
            "features = backbone(normalize(to_float(uint8_images)))  # (N, H, W, 3) uint8 -> (N, dim)",
            "```", ""]
    if info.get("objective_citation"):
        out += ["## Citation", "", "```bibtex", str(info["objective_citation"]).strip(), "```", ""]
    return portable_text("\n".join(out))
