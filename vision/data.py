"""Image data: CIFAR-10 from the shared ``cifar10.npz``, the ``datasets`` hub, an image
folder, or a synthetic set with planted classes (tests, smoke runs).

Everything becomes ``ImageSplits``: uint8 ``(N, H, W, 3)`` arrays and int64 labels.
Training datasets return ``{"image", "index"}`` -- the dataset index is what NPID and
PIRL address their memory bank with, and (with the seed and epoch) what keys each
image's augmentation; labels never reach a training batch.

``cifar10.npz`` members are LZMA-compressed (a full read costs ~15 s of CPU), so the
first load writes an uncompressed ``.npy`` copy to the cache directory (keyed by the
file's size and mtime) and later loads memory-map it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DataConfig",
    "ImageDataset",
    "ImageSplits",
    "load_cifar10_npz",
    "load_hub_cifar10",
    "load_image_folder",
    "load_splits",
    "make_synthetic",
]

DATA_ENV = "TEXTCL_DATA"


@dataclass
class ImageSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] = field(default_factory=list)

    def subset(self, n_train: int | None, n_test: int | None, seed: int) -> ImageSplits:
        """Class-stratified random subsets (``None`` keeps a split whole)."""
        return ImageSplits(
            *_stratified(self.x_train, self.y_train, n_train, seed),
            *_stratified(self.x_test, self.y_test, n_test, seed + 1),
            classes=self.classes,
        )


def _stratified(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(y):
        return np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    # Round-robin over classes keeps the subset balanced whatever n is.
    order = [idx[i] for i in range(max(map(len, per))) for idx in per if i < len(idx)]
    keep = np.sort(np.asarray(order[:n]))
    return np.ascontiguousarray(x[keep]), y[keep]


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images ``(N, H, W, 3)``; item ``i`` = ``{"image": (H, W, 3) uint8, "index": i}``."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": torch.from_numpy(np.array(self.images[index])), "index": index}


# ----------------------------------------------------------------------- sources
def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "textcl" / "vision"


def load_cifar10_npz(path: str | Path, cache: bool = True) -> ImageSplits:
    """``cifar10.npz`` in the shared-data layout (x_train, y_train, x_test, y_test, classes)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found -- set {DATA_ENV} to the data directory (../shared/data layout) or "
            "use data.source: hub"
        )
    keys = ("x_train", "y_train", "x_test", "y_test", "classes")
    if cache:
        st = path.stat()
        tag = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        cdir = _cache_dir() / f"cifar10-{tag}"
        if not all((cdir / f"{k}.npy").exists() for k in keys):
            with np.load(path) as data:
                arrays = {k: data[k] for k in keys}
            try:
                cdir.mkdir(parents=True, exist_ok=True)
                for k, v in arrays.items():
                    tmp = cdir / f".{k}.{os.getpid()}.npy"
                    np.save(tmp, v)
                    os.replace(tmp, cdir / f"{k}.npy")  # readers never see a partial file
            except OSError:
                pass  # read-only home: run from the compressed file
            return ImageSplits(*(arrays[k] for k in keys[:4]), classes=[str(c) for c in arrays["classes"]])
        arrays = {k: np.load(cdir / f"{k}.npy", mmap_mode="r" if k.startswith("x") else None) for k in keys}
        return ImageSplits(*(arrays[k] for k in keys[:4]), classes=[str(c) for c in arrays["classes"]])
    with np.load(path) as data:
        return ImageSplits(*(data[k] for k in keys[:4]), classes=[str(c) for c in data["classes"]])


def load_hub_cifar10(name: str = "cifar10") -> ImageSplits:
    """CIFAR-10 from the Hugging Face hub (``uoft-cs/cifar10``; needs the network)."""
    from datasets import load_dataset

    ds = load_dataset(name)

    def arrays(split: Any) -> tuple[np.ndarray, np.ndarray]:
        img_col = "img" if "img" in split.column_names else "image"
        x = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in split[img_col]])
        return x, np.asarray(split["label"], dtype=np.int64)

    x_train, y_train = arrays(ds["train"])
    x_test, y_test = arrays(ds["test"])
    names = ds["train"].features["label"].names
    return ImageSplits(x_train, y_train, x_test, y_test, classes=list(names))


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _read_folder(root: Path, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            with Image.open(f) as im:
                im = im.convert("RGB")
                side = min(im.size)  # centre square, then resize: keeps the aspect ratio
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
                xs.append(np.asarray(im, dtype=np.uint8))
            ys.append(label)
    if not xs:
        raise FileNotFoundError(f"{root}: no images found in class sub-folders")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_image_folder(root: str | Path, size: int = 32, test_fraction: float = 0.1, seed: int = 0) -> ImageSplits:
    """``root/<class>/*.png`` (ImageFolder layout), resized to ``size``. ``root/train`` and
    ``root/val`` (or ``test``) sub-folders are used as the splits when present; otherwise
    ``test_fraction`` of each class is held out."""
    root = Path(root).expanduser()
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        x_tr, y_tr = _read_folder(root / "train", classes, size)
        x_te, y_te = _read_folder(test_dir, classes, size)
        return ImageSplits(x_tr, y_tr, x_te, y_te, classes)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    x, y = _read_folder(root, classes, size)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return ImageSplits(x[~test], y[~test], x[test], y[test], classes)


def make_synthetic(n_train: int = 512, n_test: int = 256, size: int = 16, num_classes: int = 4,
                   seed: int = 0, contrast: float = 0.3) -> ImageSplits:
    """Planted classes for tests: learnable by augmentation invariance, blurred by a nuisance.

    Class = a texture (horizontal stripes, vertical stripes, checkerboard, diagonal
    waves; past 4 classes the cycle repeats at double frequency) with random frequency
    and phase, of amplitude ``contrast``; nuisance = a random flat background colour,
    which random-init features partly cluster by (kNN ~0.63 at 4 classes, 16 px).
    Flips and crops keep the class; colour jitter and grayscale teach a network to
    ignore the background (a 40-step SimCLR run reaches ~0.88).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def texture(c: int, freq: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        f = freq[:, None, None] * (1 + c // 4)
        sx, sy = np.sin(f * xx + px[:, None, None]), np.sin(f * yy + py[:, None, None])
        kind = c % 4
        return [sy, sx, np.sign(sx * sy), np.sin(f * (xx + yy) / 1.4 + px[:, None, None])][kind]

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, n)
        freq = rng.uniform(1.2, 1.8, n)
        px, py = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
        pattern = np.zeros((n, size, size), np.float32)
        for c in range(num_classes):
            m = y == c
            pattern[m] = texture(c, freq[m], px[m], py[m])
        background = rng.uniform(0.15, 0.85, (n, 1, 1, 3))
        img = background + contrast * pattern[..., None] + rng.normal(0, 0.02, (n, size, size, 3))
        return (np.clip(img, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return ImageSplits(x_tr, y_tr, x_te, y_te, [f"texture{c}" for c in range(num_classes)])


# ----------------------------------------------------------------------- recipe section
class DataConfig(BaseModel):
    """Recipe section ``data`` of every vision method."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["npz", "hub", "folder", "synthetic"] = "npz"
    path: str | None = Field(
        None, description=f"npz file or image folder; npz default ${{{DATA_ENV}}}/vision/cifar10.npz"
    )
    hub_name: str = "uoft-cs/cifar10"
    image_size: int = Field(32, ge=4, description="folder images are resized to this; synthetic size")
    train_subset: int | None = Field(None, ge=1, description="class-stratified training subset")
    # kNN evaluation: bank = features of `knn_bank` training images, queries = `knn_queries`
    # test images (stratified subsets; null = the whole split).
    knn_bank: int | None = Field(None, ge=1)
    knn_queries: int | None = Field(None, ge=1)
    knn_k: int = Field(200, ge=1)
    knn_temperature: float = Field(0.1, gt=0)
    eval_batch_size: int = Field(512, ge=1)
    synthetic_classes: int = Field(4, ge=2)
    synthetic_train: int = Field(512, ge=1)
    synthetic_test: int = Field(256, ge=1)


def load_splits(cfg: DataConfig, seed: int = 0) -> ImageSplits:
    """The full splits named by a ``data`` section (no subsetting)."""
    if cfg.source == "synthetic":
        return make_synthetic(cfg.synthetic_train, cfg.synthetic_test, cfg.image_size, cfg.synthetic_classes, seed)
    if cfg.source == "hub":
        return load_hub_cifar10(cfg.hub_name)
    if cfg.source == "folder":
        if not cfg.path:
            raise FileNotFoundError("data.path: an image folder is required with data.source: folder")
        return load_image_folder(cfg.path, cfg.image_size, seed=seed)
    path = cfg.path
    if path is None:
        root = os.environ.get(DATA_ENV)
        if not root:
            raise FileNotFoundError(f"data.path is unset and so is {DATA_ENV}; set one of them")
        path = str(Path(root) / "vision" / "cifar10.npz")
    return load_cifar10_npz(path)
