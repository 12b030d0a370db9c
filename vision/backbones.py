"""Image backbones from ``transformers`` configs (no torchvision): ResNet-18/50, a small
ResNet for CPU runs, ViT-tiny. Each maps images ``(B, 3, H, W)`` to global-pooled
features ``(B, dim)``.

CIFAR stem (``cifar_stem: true``): the 7x7 stride-2 convolution and the max-pool of
the ImageNet stem throw away 3/4 of a 32x32 image's resolution, so, as in the SimCLR /
MoCo CIFAR experiments, the stem becomes one 3x3 stride-1 convolution and no pooling
(ResNet-18: 512x4x4 before pooling at 32x32).

On disk (``save_backbone``): ``model.safetensors`` (the HF model's state dict),
``config.json`` (the HF config) and ``textcl_backbone.json`` (this module's options,
which ``load_backbone`` needs to rebuild the stem). No pickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

__all__ = ["Backbone", "BackboneConfig", "build_backbone", "load_backbone", "save_backbone"]

BACKBONE_FILE = "textcl_backbone.json"


class BackboneConfig(BaseModel):
    """Recipe section ``model`` (backbone part)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    arch: Literal["resnet18", "resnet50", "resnet_small", "vit_tiny"] = "resnet18"
    width: float = Field(1.0, gt=0, description="multiplies every ResNet channel count")
    depths: list[int] | None = Field(None, description="ResNet blocks per stage (overrides the arch)")
    cifar_stem: bool = True
    channels_last: bool = False
    image_size: int = Field(32, ge=8, description="ViT position-embedding grid (ViT only)")
    patch_size: int = Field(4, ge=1, description="ViT patch size")


_RESNETS = {
    # layer type, blocks per stage, stage widths (before `width`)
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    # ResNet-10 at quarter width (with the default width 0.25 in the CPU recipes):
    # one basic block per stage; ~10x fewer FLOPs than ResNet-18 at width 1 / 4.
    "resnet_small": ("basic", [1, 1, 1, 1], [64, 128, 256, 512]),
}


def _hf_config(cfg: BackboneConfig):  # -> transformers.PretrainedConfig
    if cfg.arch == "vit_tiny":
        from transformers import ViTConfig

        # DeiT-Ti: 12 layers, 192-d, 3 heads (Touvron et al. 2021).
        return ViTConfig(
            image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=192,
            num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
        )
    from transformers import ResNetConfig

    layer_type, depths, widths = _RESNETS[cfg.arch]
    return ResNetConfig(
        layer_type=layer_type,
        depths=list(cfg.depths or depths),
        hidden_sizes=[max(1, int(round(w * cfg.width))) for w in widths],
        embedding_size=max(1, int(round(64 * cfg.width))),
    )


class Backbone(nn.Module):
    """A transformers ``ResNetModel`` / ``ViTModel`` returning pooled features."""

    def __init__(self, cfg: BackboneConfig, model: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        hf = _hf_config(cfg)
        self.is_vit = cfg.arch == "vit_tiny"
        if model is None:
            if self.is_vit:
                from transformers import ViTModel

                model = ViTModel(hf, add_pooling_layer=False)
            else:
                from transformers import ResNetModel

                model = ResNetModel(hf)
                if cfg.cifar_stem:
                    _cifar_stem(model, hf.embedding_size)
        self.model = model
        self.dim: int = hf.hidden_size if self.is_vit else hf.hidden_sizes[-1]
        if cfg.channels_last and not self.is_vit:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        if self.is_vit:
            # Smaller crops (multi-crop, jigsaw patches) interpolate the position grid.
            interp = images.shape[-1] != self.cfg.image_size or images.shape[-2] != self.cfg.image_size
            out = self.model(pixel_values=images, interpolate_pos_encoding=interp)
            return out.last_hidden_state[:, 0]  # CLS token after the final LayerNorm
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(pixel_values=images).pooler_output.flatten(1)


def _cifar_stem(model: nn.Module, channels: int) -> None:
    """3x3 stride-1 convolution, no max-pool (see the module docstring)."""
    conv = nn.Conv2d(3, channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as HF ResNet init
    model.embedder.embedder.convolution = conv
    model.embedder.pooler = nn.Identity()


def build_backbone(cfg: BackboneConfig | dict | None = None) -> Backbone:
    if not isinstance(cfg, BackboneConfig):
        cfg = BackboneConfig.model_validate(cfg or {})
    return Backbone(cfg)


def save_backbone(backbone: Backbone, path: str | Path) -> None:
    """Weights (safetensors) + HF config + textcl options; see the module docstring."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    backbone.model.config.to_json_file(str(path / "config.json"))
    info = {"backbone": backbone.cfg.model_dump(mode="json"), "dim": backbone.dim}
    (path / BACKBONE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> Backbone:
    """Rebuild a backbone written by ``save_backbone`` (strict weight loading)."""
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads((path / BACKBONE_FILE).read_text(encoding="utf-8"))
    backbone = Backbone(BackboneConfig.model_validate(info["backbone"]))
    state = load_file(str(path / "model.safetensors"), device=str(map_location))
    backbone.model.load_state_dict(state, strict=True)
    return backbone.eval()
