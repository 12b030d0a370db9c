"""Batched image augmentations that run on the training device, in plain torch.

Every image of a batch draws its own parameters (crop box, flip, jitter factors and
their order, grayscale, blur sigma, solarize), so the two views of an image -- two rows
of one call, or two calls -- never share random parameters.

Where the draws come from: given ``keys`` (one int64 per row; the vision methods pass
``random_keys(seed, stream, epoch, dataset index)``, derived once more per view), row
``i``'s parameters are a function of ``keys[i]`` only (``textcl.core.distributed.
keyed_uniform``: counter-based, integer-exact, the same uniforms on every device) --
whatever batch or process the image is in, so N processes draw exactly what one process
draws for the same global batch, and a resumed run redraws the same views. Without
``keys`` they come from the global torch RNG.

Why plain torch and not kornia: the whole crop + flip + resize is one
``affine_grid`` + ``grid_sample`` for the batch, and colour ops are a few fused
tensor expressions; ``python -m benchmarks.vision --augment-speed`` measures it
against the same pipeline in kornia (numbers in README "Vision").

Pieces (each usable and tested alone): ``sample_crop_boxes`` / ``crop_resize``,
``color_jitter``, ``grayscale``, ``gaussian_blur``, ``solarize``; composed by
``ViewAugment`` (SimCLR / MoCo v2 / NPID views), ``MultiCrop`` (SwAV) and ``Jigsaw``
(PIRL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from textcl.core.distributed import keyed_uniform, random_keys

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "AugmentConfig",
    "Jigsaw",
    "MultiCrop",
    "ViewAugment",
    "ViewParams",
    "color_jitter",
    "crop_resize",
    "gaussian_blur",
    "grayscale",
    "normalize",
    "sample_crop_boxes",
    "solarize",
    "to_float",
    "uniforms",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def to_float(images: Tensor) -> Tensor:
    """uint8 ``(B, H, W, 3)`` (as the datasets store them) -> float ``(B, 3, H, W)`` in [0, 1]."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def normalize(x: Tensor, mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def uniforms(n: int, count: int, device: torch.device, keys: Tensor | None = None) -> Tensor:
    """``(n, count)`` uniforms in [0, 1): keyed by ``keys`` ``(n,)`` (row ``i`` a function of
    ``keys[i]`` only, see the module docstring), or from the global torch RNG."""
    if keys is None:
        return torch.rand(n, count, device=device)
    if keys.shape != (n,):
        raise ValueError(f"keys must have shape ({n},), got {tuple(keys.shape)}")
    return keyed_uniform(keys.to(device), count)


def _scaled(u: Tensor, lo: float, hi: float) -> Tensor:
    return u * (hi - lo) + lo


# ----------------------------------------------------------------------- geometry
def sample_crop_boxes(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], device: torch.device,
    u: Tensor | None = None,
) -> Tensor:
    """Random-resized-crop boxes ``(n, 4)`` = ``(x0, y0, x1, y1)`` as fractions of the image.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio), position uniform -- as
    torchvision's RandomResizedCrop, except that a side longer than the image is
    clipped instead of re-drawn (one batched draw, no rejection loop). ``u``: the
    ``(n, 4)`` uniforms to use (default: drawn from the global torch RNG).
    """
    if u is None:
        u = torch.rand(n, 4, device=device)
    area = _scaled(u[:, 0], scale[0], scale[1])
    r = torch.exp(_scaled(u[:, 1], math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    x0 = u[:, 2] * (1.0 - w)
    y0 = u[:, 3] * (1.0 - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def crop_resize(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop ``boxes`` (fractions, see ``sample_crop_boxes``) out of ``x`` ``(B, C, H, W)``
    and resize to ``size`` x ``size`` (bilinear), mirrored where ``flip`` -- one
    ``grid_sample`` for the whole batch. The full box at the input size is the identity."""
    x0, y0, x1, y1 = boxes.to(x.dtype).unbind(1)
    sx, sy = x1 - x0, y1 - y0
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    # affine_grid maps output coords u in [-1, 1] to input coords: x_in = sx * u + tx.
    theta = torch.stack(
        [torch.stack([sx, zero, x0 + x1 - 1.0], 1), torch.stack([zero, sy, y0 + y1 - 1.0], 1)], 1
    )
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------- colour
def _gray(x: Tensor) -> Tensor:
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """Replace the rows where ``apply`` by their luma, kept as 3 channels."""
    return torch.where(apply.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    dc = delta.clamp(min=1e-12)
    h = torch.where(
        maxc == r, (g - b) / dc, torch.where(maxc == g, 2.0 + (b - r) / dc, 4.0 + (r - g) / dc)
    )
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    # Branch-free form: channel k = v - v*s*clamp(min(t, 4-t), 0, 1), t = (k + 6h) mod 6.
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    t = (k + h.unsqueeze(1) * 6.0) % 6.0
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * torch.clamp(torch.minimum(t, 4.0 - t), 0.0, 1.0)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * f.view(-1, 1, 1, 1) + mean).clamp(0.0, 1.0)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    g = _gray(x)
    return ((x - g) * f.view(-1, 1, 1, 1) + g).clamp(0.0, 1.0)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb((h + shift.view(-1, 1, 1)) % 1.0, s, v)


_COLOR_OPS = (_brightness, _contrast, _saturation, _hue)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """torchvision-style ColorJitter with per-image parameters.

    ``factors`` ``(B, 4)``: brightness, contrast, saturation multipliers and the hue
    shift (fraction of a turn); ``order`` ``(B, 4)``: each image's permutation of the
    four ops (torchvision draws one order per call; here each image has its own).
    """
    out = x.clone()
    for slot in range(4):
        for op_id, op in enumerate(_COLOR_OPS):
            sel = (order[:, slot] == op_id).nonzero(as_tuple=True)[0]
            if sel.numel():
                out[sel] = op(out[sel], factors[sel, op_id])
    return out


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur, one ``sigma`` per image (grouped convolution)."""
    b, c, h, w = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1).to(x.dtype) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (b*c, ks)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def solarize(x: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels >= ``threshold`` in the rows where ``apply``."""
    sol = torch.where(x >= threshold, 1.0 - x, x)
    return torch.where(apply.view(-1, 1, 1, 1), sol, x)


# ----------------------------------------------------------------------- composed views
class AugmentConfig(BaseModel):
    """One view's augmentation (recipe ``objective.augment``). Defaults: SimCLR's
    CIFAR-10 set (no blur on 32x32 images); MoCo v2 adds ``blur_p: 0.5``."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(32, ge=4)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.4, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    jitter_p: float = Field(0.8, ge=0, le=1)
    gray_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = Field(0.1, gt=0, description="kernel = odd(fraction * size), >= 3")
    solarize_p: float = Field(0.0, ge=0, le=1)


@dataclass
class ViewParams:
    """The random parameters one call drew, one row per image (for tests, debugging)."""

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor


class ViewAugment:
    """float ``(B, 3, H, W)`` in [0, 1] -> one augmented, normalised view per image."""

    #: Uniforms per image: crop box 4, jitter factors 4, jitter order 4, flip, jitter,
    #: grayscale, blur, blur sigma, solarize.
    DRAWS = 18

    def __init__(self, cfg: AugmentConfig | None = None, mean=CIFAR_MEAN, std=CIFAR_STD):
        self.cfg = cfg or AugmentConfig()
        self.mean, self.std = mean, std

    def sample(self, n: int, device: torch.device, keys: Tensor | None = None) -> ViewParams:
        """Parameters of ``n`` views; row ``i`` from ``keys[i]`` alone when ``keys`` is given."""
        c = self.cfg
        u = uniforms(n, self.DRAWS, device, keys)
        lo = torch.tensor([max(0.0, 1 - c.brightness), max(0.0, 1 - c.contrast), max(0.0, 1 - c.saturation), -c.hue],
                          device=u.device)
        hi = torch.tensor([1 + c.brightness, 1 + c.contrast, 1 + c.saturation, c.hue], device=u.device)
        return ViewParams(
            boxes=sample_crop_boxes(n, c.scale, c.ratio, device, u[:, 0:4]),
            factors=u[:, 4:8] * (hi - lo) + lo,
            order=u[:, 8:12].argsort(dim=1, stable=True),
            flip=u[:, 12] < c.flip_p,
            jitter=u[:, 13] < c.jitter_p,
            gray=u[:, 14] < c.gray_p,
            blur=u[:, 15] < c.blur_p,
            sigma=_scaled(u[:, 16], c.blur_sigma[0], c.blur_sigma[1]),
            solarize=u[:, 17] < c.solarize_p,
        )

    def apply(self, x: Tensor, p: ViewParams) -> Tensor:
        c = self.cfg
        x = crop_resize(x, p.boxes, c.size, p.flip)
        x = self.color(x, p)
        if c.blur_p > 0 and bool(p.blur.any()):
            ks = max(3, int(c.blur_kernel_fraction * c.size) // 2 * 2 + 1)
            x = torch.where(p.blur.view(-1, 1, 1, 1), gaussian_blur(x, p.sigma, ks), x)
        if c.solarize_p > 0:
            x = solarize(x, p.solarize)
        return normalize(x, self.mean, self.std)

    def color(self, x: Tensor, p: ViewParams) -> Tensor:
        """Colour jitter (where ``p.jitter``) then grayscale (where ``p.gray``)."""
        sel = p.jitter.nonzero(as_tuple=True)[0]
        if sel.numel():
            x = x.clone()
            x[sel] = color_jitter(x[sel], p.factors[sel], p.order[sel])
        return grayscale(x, p.gray)

    def __call__(self, x: Tensor, return_params: bool = False, *,
                 keys: Tensor | None = None) -> Tensor | tuple[Tensor, ViewParams]:
        p = self.sample(x.shape[0], x.device, keys)
        out = self.apply(x, p)
        return (out, p) if return_params else out

    def views(self, x: Tensor, n: int = 2, keys: Tensor | None = None) -> Tensor:
        """``n`` independent views of every image, stacked view-major: ``(n * B, ...)``;
        view ``v`` of image ``i`` keyed by ``random_keys(keys[i], v)`` when ``keys`` is given."""
        view_keys = None if keys is None else torch.cat([random_keys(keys, v) for v in range(n)])
        return self(x.repeat(n, 1, 1, 1), keys=view_keys)  # type: ignore[return-value]


class MultiCrop:
    """SwAV multi-crop: ``n_global`` large views and ``n_local`` small low-area views.

    Returns ``(globals, locals)``: ``(n_global * B, 3, S, S)`` and
    ``(n_local * B, 3, s, s)`` (view-major), so each resolution is one forward pass.
    """

    def __init__(self, global_cfg: AugmentConfig, local_cfg: AugmentConfig, n_global: int = 2, n_local: int = 4):
        self.global_aug, self.local_aug = ViewAugment(global_cfg), ViewAugment(local_cfg)
        self.n_global, self.n_local = n_global, n_local

    def __call__(self, x: Tensor, keys: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``keys`` ``(B,)``: per-image keys (see ``ViewAugment.views``), else the global RNG."""
        gk, lk = (None, None) if keys is None else (random_keys(keys, 0), random_keys(keys, 1))
        g = self.global_aug.views(x, self.n_global, gk)
        loc = self.local_aug.views(x, self.n_local, lk) if self.n_local > 0 else None
        return g, loc


class Jigsaw:
    """PIRL's jigsaw transform: a random crop of the image cut into ``grid x grid`` cells;
    from each cell a randomly placed patch (``patch_fraction`` of the cell side), colour-
    augmented on its own; patches shuffled by a random permutation per image.

    Returns ``(patches, perm)``: ``(B, grid**2, 3, patch_size, patch_size)`` and ``(B, grid**2)``
    where ``patches[b, j]`` is cell ``perm[b, j]`` (cells in row-major order).
    """

    def __init__(self, grid: int = 3, patch_size: int = 10, patch_fraction: float = 0.8,
                 crop_scale: tuple[float, float] = (0.6, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 color: AugmentConfig | None = None):
        self.grid, self.patch_size, self.patch_fraction = grid, patch_size, patch_fraction
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.color = ViewAugment(color or AugmentConfig(size=patch_size))

    def __call__(self, x: Tensor, keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``keys`` ``(B,)``: per-image keys -- image ``i``'s crop and permutation from
        ``keys[i]``, its patch ``c``'s placement, flip and colour from
        ``random_keys(keys[i], c)`` -- else the global RNG."""
        b, dev, g = x.shape[0], x.device, self.grid
        n = b * g * g
        cell = torch.arange(g * g, device=dev).repeat(b)
        per_image = uniforms(b, 4 + g * g, dev, keys)
        patch_keys = None if keys is None else random_keys(keys.to(dev).repeat_interleave(g * g), cell)
        per_patch = uniforms(n, 3, dev, patch_keys)
        base = sample_crop_boxes(b, self.crop_scale, self.crop_ratio, dev, per_image[:, :4])
        base = base.repeat_interleave(g * g, 0)
        row, col = (cell // g).to(x.dtype), (cell % g).to(x.dtype)
        bw, bh = (base[:, 2] - base[:, 0]) / g, (base[:, 3] - base[:, 1]) / g  # cell size
        pw, ph = bw * self.patch_fraction, bh * self.patch_fraction
        x0 = base[:, 0] + col * bw + per_patch[:, 0] * (bw - pw)
        y0 = base[:, 1] + row * bh + per_patch[:, 1] * (bh - ph)
        flip = per_patch[:, 2] < self.color.cfg.flip_p
        patches = crop_resize(x.repeat_interleave(g * g, 0), torch.stack([x0, y0, x0 + pw, y0 + ph], 1),
                              self.patch_size, flip)
        p = self.color.sample(n, dev, None if patch_keys is None else random_keys(patch_keys, 0))
        patches = normalize(self.color.color(patches, p), self.color.mean, self.color.std)
        patches = patches.view(b, g * g, *patches.shape[1:])
        perm = per_image[:, 4:].argsort(dim=1, stable=True)
        return patches[torch.arange(b, device=dev)[:, None], perm], perm
