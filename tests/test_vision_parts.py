"""Vision building blocks, each alone and with exact values: augmentations, losses,
Sinkhorn, kNN / linear probe, backbones, data."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from textcl.core.losses import info_nce
from textcl.vision.augment import (
    AugmentConfig,
    Jigsaw,
    MultiCrop,
    ViewAugment,
    color_jitter,
    crop_resize,
    gaussian_blur,
    grayscale,
    normalize,
    solarize,
    to_float,
)
from textcl.vision.backbones import build_backbone, load_backbone, save_backbone
from textcl.vision.data import ImageDataset, load_cifar10_npz, load_image_folder, make_synthetic
from textcl.vision.evaluate import knn_accuracy, knn_predict, linear_probe_accuracy
from textcl.vision.methods.memory_bank import nce_loss
from textcl.vision.methods.simclr import nt_xent
from textcl.vision.methods.swav import sinkhorn, swapped_prediction


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: on shared cores, OpenMP threads spin-wait each other (10-100x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(b=4, size=8, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------- augmentations
def test_two_views_never_share_parameters_and_keep_shapes():
    torch.manual_seed(0)
    x = _images(6, 16)
    aug = ViewAugment(AugmentConfig(size=12, blur_p=0.5, solarize_p=0.2))
    out, p = aug(x.repeat(2, 1, 1, 1), return_params=True)
    assert out.shape == (12, 3, 12, 12) and out.dtype == torch.float32
    a, b = slice(0, 6), slice(6, 12)  # view 1 and view 2 of the same six images
    assert (p.boxes[a] != p.boxes[b]).any(dim=1).all()
    assert (p.factors[a] != p.factors[b]).any(dim=1).all()
    assert not torch.equal(p.sigma[a], p.sigma[b])
    assert all(sorted(row.tolist()) == [0, 1, 2, 3] for row in p.order)  # a permutation per image
    assert not torch.equal(out[a], out[b])
    views = aug.views(x, 2)
    assert views.shape == (12, 3, 12, 12)


def test_to_float_and_normalize():
    u8 = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8)
    x = to_float(u8)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32
    assert torch.equal(x, u8.permute(0, 3, 1, 2).float() / 255)
    n = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(n, (x - 0.5) / 0.25)


def test_crop_resize_exact_cases():
    x = _images(3, 4)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(3, 1)
    assert torch.equal(crop_resize(x, full, 4), x)  # identity
    assert torch.equal(crop_resize(x, full, 4, torch.ones(3, dtype=torch.bool)), x.flip(-1))
    quarter = torch.tensor([[0.0, 0.0, 0.5, 0.5]]).repeat(3, 1)
    assert torch.allclose(crop_resize(x, quarter, 2), x[:, :, :2, :2], atol=1e-6)  # top-left 2x2
    corner = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(3, 1)
    assert torch.allclose(crop_resize(x, corner, 2), x[:, :, 2:, 2:], atol=1e-6)  # bottom-right 2x2


def test_color_ops_exact_values():
    x = _images(2, 4)
    ident = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    assert torch.allclose(color_jitter(x, ident, order), x, atol=1e-5)  # (HSV round trip)
    bright = torch.tensor([[1.5, 1.0, 1.0, 0.0]] * 2)
    assert torch.allclose(color_jitter(x, bright, order), (x * 1.5).clamp(0, 1), atol=1e-5)
    sat0 = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)  # saturation 0 = grayscale
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(color_jitter(x, sat0, order), luma.expand_as(x), atol=1e-5)
    g = grayscale(x, torch.tensor([True, False]))
    assert torch.allclose(g[0], luma[0].expand(3, 4, 4)) and torch.equal(g[1], x[1])
    s = solarize(x, torch.tensor([True, False]))
    assert torch.equal(s[0], torch.where(x[0] >= 0.5, 1 - x[0], x[0])) and torch.equal(s[1], x[1])


def test_gaussian_blur_keeps_constants_and_mass():
    flat = torch.full((2, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0]), 5), flat, atol=1e-6)
    x = _images(2, 9)
    y = gaussian_blur(x, torch.tensor([1e-3, 1.0]), 5)
    assert torch.allclose(y[0], x[0], atol=1e-6)  # sigma -> 0: identity
    assert y[1].std() < x[1].std()  # blurs


def test_multicrop_and_jigsaw_shapes():
    torch.manual_seed(0)
    x = _images(3, 16)
    mc = MultiCrop(AugmentConfig(size=16), AugmentConfig(size=8, scale=(0.05, 0.14)), 2, 3)
    g, loc = mc(x)
    assert g.shape == (6, 3, 16, 16) and loc.shape == (9, 3, 8, 8)
    patches, perm = Jigsaw(grid=3, patch_size=5)(x)
    assert patches.shape == (3, 9, 3, 5, 5)
    assert all(sorted(p.tolist()) == list(range(9)) for p in perm)


def test_jigsaw_cuts_cells_and_permutes_them():
    torch.manual_seed(1)
    x = _images(2, 12)
    still = AugmentConfig(size=4, flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    jig = Jigsaw(grid=3, patch_size=4, patch_fraction=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                 color=still)
    patches, perm = jig(x)
    cells = normalize(x).unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 3, 3, 4, 4)
    cells = cells.permute(0, 2, 3, 1, 4, 5).reshape(2, 9, 3, 4, 4)
    for b in range(2):
        assert torch.allclose(patches[b], cells[b, perm[b]], atol=1e-5)


# ----------------------------------------------------------------------- losses
def _naive_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        den = sum(torch.exp(z[i] @ z[j] / t) for j in range(2 * n) if j != i)  # 2N - 1 terms
        total = total - torch.log(torch.exp(z[i] @ z[pos] / t) / den)
    return total / (2 * n)


def test_nt_xent_through_info_nce_equals_naive_loss_and_gradient():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 4, generator=g, requires_grad=True)
    z2 = torch.randn(5, 4, generator=g, requires_grad=True)
    loss, _ = nt_xent(z1, z2, 0.5)
    naive = _naive_nt_xent(z1, z2, 0.5)
    assert loss.item() == pytest.approx(naive.item(), abs=1e-6)
    for a, b in zip(torch.autograd.grad(loss, [z1, z2]), torch.autograd.grad(naive, [z1, z2])):
        assert torch.allclose(a, b, atol=1e-6)


def test_info_nce_ignore_mask_equals_moco_logits_and_plain_info_nce():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    labels = torch.arange(4)
    # Nothing excluded: exactly the core info_nce.
    none = torch.zeros(4, 4, dtype=torch.bool)
    assert info_nce(q, k, ignore_mask=none, temperature=0.2, labels=labels, extra_negatives=queue).item() == \
        pytest.approx(info_nce(q, k, temperature=0.2, extra_negatives=queue).item(), abs=1e-6)
    # Other keys excluded: MoCo builder.py logits [l_pos, l_neg] with target 0.
    qn, kn, un = (F.normalize(t, dim=1) for t in (q, k, queue))
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ un.T], dim=1) / 0.2
    moco = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    others = ~torch.eye(4, dtype=torch.bool)
    ours = info_nce(q, k, ignore_mask=others, temperature=0.2, labels=labels, extra_negatives=queue)
    assert ours.item() == pytest.approx(moco.item(), abs=1e-6)


def test_info_nce_ignore_mask_stays_float32_under_autocast():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    others = ~torch.eye(6, dtype=torch.bool)
    ref = info_nce(q, k, ignore_mask=others, temperature=0.1, extra_negatives=k.flip(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = info_nce(q, k, ignore_mask=others, temperature=0.1, extra_negatives=k.flip(0))
    assert amp.dtype == torch.float32 and amp.item() == pytest.approx(ref.item(), abs=1e-6)


def test_nce_loss_equals_npid_formula():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(3, generator=g), torch.randn(3, 5, generator=g)
    log_z, n = torch.tensor(2.0), 100
    p_pos, p_neg = pos.exp() / log_z.exp(), neg.exp() / log_z.exp()
    pn = 5 / n  # K * P_n
    naive = -(torch.log(p_pos / (p_pos + pn)) + torch.log(1 - p_neg / (p_neg + pn)).sum(1)).mean()
    assert nce_loss(pos, neg, log_z, n).item() == pytest.approx(naive.item(), rel=1e-6)


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(3)
    scores = F.normalize(torch.randn(12, 8, generator=g), dim=1) @ F.normalize(torch.randn(4, 8, generator=g), dim=1).T
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert q.shape == (12, 4) and (q >= 0).all()
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-5)  # each sample's code sums to 1
    q_long = sinkhorn(scores, epsilon=0.05, iterations=200)
    assert torch.allclose(q_long.sum(0), torch.full((4,), 3.0), atol=1e-3)  # B/P per prototype
    uneven = (q.sum(0) - 3.0).abs().max()
    assert uneven < (torch.softmax(scores / 0.05, 1).sum(0) - 3.0).abs().max()  # 3 iterations already equalise


def test_swapped_prediction_by_hand():
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    s = [torch.tensor([[0.2, 0.1]]), torch.tensor([[0.0, 0.3]]), torch.tensor([[0.5, -0.5]])]
    ls = [F.log_softmax(t / 0.1, dim=1) for t in s]
    # code 0 predicted by crops 1, 2; code 1 by crops 0, 2
    expected = -(ls[1][0, 0] + ls[2][0, 0] + ls[0][0, 1] + ls[2][0, 1]) / 4
    assert swapped_prediction([q1, q2], s, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------- evaluation
def test_knn_weighted_vote_exact_and_planted_toy():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.1]])
    scores = knn_predict(q, bank, labels, 2, k=2, temperature=0.1)
    sims = F.normalize(q, dim=1) @ bank.T
    assert torch.allclose(scores, torch.tensor([[torch.exp(sims[0, 0] / 0.1), torch.exp(sims[0, 1] / 0.1)]]))
    # planted: 3 tight clusters in 16-d, labels = cluster
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 5
    yb, yq = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (60,), generator=g)
    xb, xq = centers[yb] + torch.randn(300, 16, generator=g), centers[yq] + torch.randn(60, 16, generator=g)
    assert knn_accuracy(xq, yq, xb, yb, k=20) == 1.0
    assert knn_accuracy(xq, yq, xb, yb[torch.randperm(300, generator=g)], k=20) < 0.7  # shuffled labels


def test_linear_probe_separable_problem():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, generator=g)
    x = torch.randn(400, 8, generator=g)
    y = (x @ w).argmax(1)
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) > 0.9


# ----------------------------------------------------------------------- backbones and data
def test_backbones_shapes_cifar_stem_and_vit():
    r18 = build_backbone({"arch": "resnet18"})
    assert r18.dim == 512 and isinstance(r18.model.embedder.pooler, torch.nn.Identity)
    assert r18.model.embedder.embedder.convolution.kernel_size == (3, 3)
    with torch.no_grad():
        hidden = r18.model(torch.zeros(1, 3, 32, 32)).last_hidden_state
    assert hidden.shape == (1, 512, 4, 4)  # the models README's CIFAR shape
    assert build_backbone({"arch": "resnet50", "width": 0.25}).dim == 512
    vit = build_backbone({"arch": "vit_tiny", "image_size": 16, "patch_size": 4}).eval()
    with torch.no_grad():
        assert vit(torch.zeros(2, 3, 16, 16)).shape == (2, 192)
        assert vit(torch.zeros(2, 3, 8, 8)).shape == (2, 192)  # small crops interpolate positions


def test_backbone_save_load_roundtrip_without_pickles(tmp_path):
    torch.manual_seed(0)
    bb = build_backbone({"arch": "resnet_small", "width": 0.125, "channels_last": True}).eval()
    save_backbone(bb, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "textcl_backbone.json"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "resnet"
    loaded = load_backbone(tmp_path)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(bb(x), loaded(x))


def test_dataset_returns_indices_and_stratified_subsets():
    s = make_synthetic(64, 32, 8, 4, seed=0)
    assert s.x_train.dtype == np.uint8 and s.x_train.shape == (64, 8, 8, 3)
    item = ImageDataset(s.x_train)[5]
    assert item["index"] == 5 and item["image"].shape == (8, 8, 3) and item["image"].dtype == torch.uint8
    sub = s.subset(20, 8, seed=1)
    assert len(sub.y_train) == 20 and len(sub.y_test) == 8
    assert np.bincount(sub.y_train).min() == 5  # balanced


def test_cifar_npz_loader_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), "y_train": np.arange(6) % 2,
              "x_test": rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8), "y_test": np.array([0, 1]),
              "classes": np.array(["a", "b"])}
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    first, second = load_cifar10_npz(tmp_path / "c.npz"), load_cifar10_npz(tmp_path / "c.npz")
    assert list((tmp_path / "cache" / "textcl" / "vision").iterdir())  # the uncompressed copy
    for s in (first, second):
        assert np.array_equal(s.x_train, arrays["x_train"]) and np.array_equal(s.y_test, arrays["y_test"])
        assert s.classes == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="TEXTCL_DATA"):
        load_cifar10_npz(tmp_path / "missing.npz")


def test_image_folder_loader(tmp_path):
    from PIL import Image

    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (20, 12), colour).save(tmp_path / cls / f"{i}.png")
    s = load_image_folder(tmp_path, size=8, test_fraction=0.2)
    assert s.classes == ["cat", "dog"] and s.x_train.shape == (8, 8, 8, 3) and len(s.y_test) == 2
    assert (s.x_train[s.y_train == 0][..., 0] == 255).all()
