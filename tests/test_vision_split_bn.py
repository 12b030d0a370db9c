"""MoCo's ghost BN on one process: ``SplitBatchNorm`` in *both* encoders.

In training mode a split BatchNorm equals plain BatchNorm run on each chunk (outputs,
gradients, and the running statistics averaged over the chunks); in evaluation mode it
is plain BatchNorm. MoCo's loss with ``shuffle_bn_splits: 2`` equals a hand computation
with plain-BN copies (queries normalised per chunk, keys per chunk of the shuffled
batch); ``shuffle_bn_splits: 1`` is plain BatchNorm, as before. Under DDP the query
encoder keeps per-process BN. A checkpoint of a split-BN MoCo resumes exactly.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textcl.core.recipe import TrainConfig
from textcl.core.trainer import Trainer
from textcl.vision.backbones import build_backbone
from textcl.vision.data import load_splits
from textcl.vision.methods import moco as moco_module
from textcl.vision.methods.moco import MoCo, MoCoConfig, SplitBatchNorm1d, SplitBatchNorm2d

TINY_MODEL = {"arch": "resnet_small", "width": 0.125, "channels_last": True}
TINY_DATA = {"source": "synthetic", "image_size": 16, "synthetic_train": 64, "synthetic_test": 32, "knn_k": 10}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _plain(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every split BatchNorm turned back into torch's own."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_children()):
        if isinstance(child, (SplitBatchNorm1d, SplitBatchNorm2d)):
            cls = nn.BatchNorm1d if isinstance(child, SplitBatchNorm1d) else nn.BatchNorm2d
            plain = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            setattr(module, name, plain)
        else:
            setattr(module, name, _plain(child))
    return module


def _per_chunk(module: nn.Module, x: torch.Tensor, splits: int):
    """Plain BN on each chunk, each from the same starting state: outputs concatenated,
    and the state dict with every floating buffer averaged over the chunks."""
    outs, states = [], []
    for chunk in torch.tensor_split(x, splits):
        twin = _plain(module)
        outs.append(twin(chunk))
        states.append(twin.state_dict())
    state = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
             for k, v in states[0].items()}
    return torch.cat(outs), state


def _assert_state_close(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert list(got) == list(want)
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), atol=atol), (k, (got[k] - want[k]).abs().max())


# --------------------------------------------------------------------------- the module
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(("kind", "shape", "splits"),
                         [("2d", (8, 3, 5, 5), 2), ("2d", (10, 3, 4, 4), 3), ("1d", (12, 6), 4), ("1d", (9, 6), 2)])
def test_split_bn_training_equals_plain_bn_per_chunk(kind, shape, splits, momentum):
    g = torch.Generator().manual_seed(0)
    plain = (nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d)(shape[1], momentum=momentum)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        plain.weight.uniform_(0.5, 1.5, generator=g)
        plain.bias.normal_(generator=g)
        plain.running_mean.normal_(generator=g)
        plain.running_var.uniform_(0.5, 2.0, generator=g)
        plain.num_batches_tracked.fill_(3)
    split = moco_module.split_batch_norm(copy.deepcopy(plain), splits)
    assert isinstance(split, SplitBatchNorm2d if kind == "2d" else SplitBatchNorm1d)
    assert list(split.state_dict()) == list(plain.state_dict())  # the same keys
    x = torch.randn(*shape, generator=g) * 3 + 1
    if kind == "2d":
        x = x.contiguous(memory_format=torch.channels_last)
    x_split, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = split(x_split)
    want, state = _per_chunk(plain, x_plain, splits)
    assert torch.allclose(out, want, atol=1e-6)
    _assert_state_close(split.state_dict(), state)
    assert int(split.num_batches_tracked) == 4  # one call, one count (as a plain BN call)
    w = torch.randn(want.shape, generator=g)
    (out * w).sum().backward()
    (want * w).sum().backward()
    assert torch.allclose(x_split.grad, x_plain.grad, atol=1e-5)


def test_split_bn_eval_mode_is_plain_bn_with_the_running_statistics():
    g = torch.Generator().manual_seed(1)
    split = SplitBatchNorm2d(4, num_splits=4)
    split.train()
    for _ in range(3):
        split(torch.randn(8, 4, 3, 3, generator=g) * 2 + 1)  # running statistics move
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(split.state_dict())
    split.eval()
    plain.eval()
    x = torch.randn(6, 4, 3, 3, generator=g)
    assert torch.equal(split(x), plain(x))
    assert torch.equal(split.running_mean, plain.running_mean)  # eval leaves them alone


def test_split_bn_with_one_split_is_plain_bn():
    g = torch.Generator().manual_seed(2)
    plain = nn.BatchNorm1d(5)
    split = moco_module.split_batch_norm(copy.deepcopy(plain), 1)
    x = torch.randn(8, 5, generator=g)
    assert torch.equal(split(x), plain(x))
    for k, v in plain.state_dict().items():
        assert torch.equal(split.state_dict()[k], v), k


def test_split_batch_norm_keeps_the_tensors_and_their_order():
    backbone = build_backbone(TINY_MODEL)
    before = list(backbone.state_dict().items())
    params = [id(p) for p in backbone.parameters()]
    moco_module.split_batch_norm(backbone, 2)
    assert [id(p) for p in backbone.parameters()] == params  # the same Parameter objects
    after = list(backbone.state_dict().items())
    assert [k for k, _ in after] == [k for k, _ in before]
    assert all(a is b or torch.equal(a, b) for (_, a), (_, b) in zip(after, before))
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in backbone.modules())


# --------------------------------------------------------------------------- MoCo
def _moco(splits: int = 2, shuffle_bn: bool = True, momentum: float = 0.99) -> MoCo:
    cfg = MoCoConfig.model_validate({
        "model": TINY_MODEL, "data": TINY_DATA,
        "objective": {"queue_size": 48, "augment": {"size": 16}, "shuffle_bn_splits": splits,
                      "shuffle_bn": shuffle_bn, "momentum": momentum},
    })
    torch.manual_seed(0)
    return MoCo(cfg, load_splits(cfg.data, seed=0), seed=0)


def _fixed_views(method: MoCo, batch_size: int = 16):
    """A batch, and ``method.augment`` replaced by two fixed, different views of it."""
    ds = method.train_dataset()
    batch = method.collate([ds[i] for i in range(batch_size)])
    x = method.images(batch)
    g = torch.Generator().manual_seed(3)
    views = [x, (x.flip(-1) + 0.1 * torch.rand(x.shape, generator=g)).clamp(0, 1)]
    calls = iter(views)
    method.augment = lambda _, keys=None: next(calls)
    return batch, views


def _manual_loss(method: MoCo, x_q, x_k, query_splits: int, key_splits: int) -> torch.Tensor:
    """MoCo's loss by hand with plain-BN copies: the query batch normalised per chunk, the
    keys per chunk of the shuffled batch (the permutation of ``shuffle_bn_forward``)."""
    obj = method.cfg.objective
    q = torch.cat([F.normalize(_plain(method.head)(_plain(method.backbone)(c)), dim=1)
                   for c in torch.tensor_split(x_q, query_splits)])
    with torch.no_grad():
        seed = method.seed * 1_000_003 + int(method.key_steps)
        perm = torch.randperm(x_k.shape[0], generator=torch.Generator().manual_seed(seed))
        shuffled = torch.cat([_plain(method.key_head)(_plain(method.key_backbone)(c))
                              for c in torch.tensor_split(x_k[perm], key_splits)])
        k = torch.empty_like(shuffled)
        k[perm] = shuffled
        k = F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ method.queue.features().T], dim=1) / obj.temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def test_moco_loss_with_two_splits_normalises_each_query_chunk_on_its_own():
    method = _moco(splits=2)
    method.train()
    batch, (x_q, x_k) = _fixed_views(method)
    want = _manual_loss(method, x_q, x_k, query_splits=2, key_splits=2)
    whole_query = _manual_loss(method, x_q, x_k, query_splits=1, key_splits=2)  # the old query path
    got = method(batch)["loss"]
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    assert abs(got.item() - whole_query.item()) > 1e-3  # the split matters here
    # Both encoders' BN modules are split; the query's running statistics moved as the
    # per-chunk average.
    assert all(m.num_splits == 2 for m in method.modules() if isinstance(m, (SplitBatchNorm1d, SplitBatchNorm2d)))


def test_moco_query_encoder_running_statistics_are_the_per_chunk_average():
    method = _moco(splits=2)
    method.train()
    batch, (x_q, _) = _fixed_views(method)
    backbone0 = copy.deepcopy(method.backbone)
    features, state = _per_chunk(backbone0, x_q, 2)
    method(batch)
    _assert_state_close(method.backbone.state_dict(), state)
    method.eval()  # evaluation mode: plain BN with those statistics
    plain = _plain(method.backbone).eval()
    assert torch.equal(method.backbone(x_q), plain(x_q))


def test_moco_with_one_split_is_plain_batch_norm_as_before():
    method = _moco(splits=1)
    method.train()
    batch, (x_q, x_k) = _fixed_views(method)
    backbone0 = _plain(method.backbone)
    want = _manual_loss(method, x_q, x_k, query_splits=1, key_splits=1)
    got = method(batch)["loss"]
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    backbone0(x_q)  # whole-batch plain BN: the same running statistics, bit for bit
    for k, v in backbone0.state_dict().items():
        assert torch.equal(method.backbone.state_dict()[k], v), k
    # State-dict keys are those of the plain-BN modules (checkpoints and exports unchanged).
    assert list(method.backbone.state_dict()) == list(build_backbone(TINY_MODEL).state_dict())


def test_moco_without_shuffle_bn_splits_nothing():
    method = _moco(splits=4, shuffle_bn=False)
    method.train()
    batch, (x_q, x_k) = _fixed_views(method)
    want = _manual_loss(method, x_q, x_k, query_splits=1, key_splits=1)
    assert method(batch)["loss"].item() == pytest.approx(want.item(), abs=1e-6)


def test_moco_under_ddp_keeps_per_process_query_bn(monkeypatch):
    method = _moco(splits=2)
    assert method.query_splits() == 2
    monkeypatch.setattr(moco_module, "world_size", lambda: 2)
    assert method.query_splits() == 1 and method.ghost_splits == 2  # keys: still split per process


def test_moco_momentum_update_pairs_split_bn_one_to_one():
    method = _moco(splits=2, momentum=0.5)
    method.train()
    batch, _ = _fixed_views(method)
    key_names = [n for n, _ in method.key_backbone.named_parameters()] + [
        n for n, _ in method.key_head.named_parameters()]
    assert key_names == [n for n, _ in method.backbone.named_parameters()] + [
        n for n, _ in method.head.named_parameters()]
    assert [n for n, _ in method.key_backbone.named_buffers()] == [n for n, _ in method.backbone.named_buffers()]
    out = method(batch)
    out["loss"].backward()
    with torch.no_grad():
        for p in method.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    key0 = [p.clone() for p in method.key_head.parameters()]
    method.after_optimizer_step(1)
    for k0, q, k in zip(key0, method.head.parameters(), method.key_head.parameters()):
        assert torch.equal(k, k0 * 0.5 + q * 0.5)


class _Interrupt(Exception):
    pass


class _KillAt:
    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, trainer):
        if trainer.state.step == self.n:
            raise _Interrupt


def test_moco_split_bn_checkpoint_resumes_exactly(tmp_path):
    cfg = TrainConfig(batch_size=16, max_steps=4, optimizer="sgd", lr=0.05, log_every_n_steps=1,
                      save_every_n_steps=2)
    full = _moco(splits=2)
    Trainer(full, cfg, tmp_path / "full", seed=0).fit()
    with pytest.raises(_Interrupt):
        Trainer(_moco(splits=2), cfg, tmp_path / "run", seed=0, callbacks=[_KillAt(3)]).fit()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) <= set(full.state_dict())
        assert any(k.startswith("key_backbone.") and k.endswith("running_mean") for k in f.keys())
    resumed = _moco(splits=2)
    Trainer(resumed, cfg, tmp_path / "run", seed=0).fit(resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("full", "run")]
    assert [r["loss"] for r in logs[0] if "loss" in r] == [r["loss"] for r in logs[1] if "loss" in r]
