"""Per-rank randomness, with the N-process == 1-process equivalence kept where it is defined
(the contract in ``textcl.core.distributed``):

* keyed draws (``random_keys`` / ``keyed_uniform``: splitmix64 on int64 tensors) are exact
  against a pure-Python splitmix64, and an image's augmentation is a function of (seed,
  epoch, dataset index, view) only -- not of the batch it sits in;
* 2 gloo processes through the real Trainer: the ranks draw different dropout masks, and a
  run with dropout killed after step 2 and resumed ends bit-identical to an uninterrupted one;
* 2 gloo processes x batch B == 1 process x batch 2B for SimCLR and NPID *with*
  augmentation (keyed views, batch-keyed memory-bank negatives; a BatchNorm-free encoder,
  since per-process BatchNorm is by design not the 1-process BatchNorm), while the two
  ranks' augmentation parameters differ.

Process groups meet through a FileStore, as in ``test_multiprocess_objectives.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from textcl.core.distributed import keyed_randint, keyed_uniform, random_keys, rank_seed
from textcl.core.memory_bank import MemoryBank
from textcl.vision.augment import AugmentConfig, Jigsaw, MultiCrop, ViewAugment

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
WORLD = 2
_M = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


# --------------------------------------------------------------------------- keyed draws
def _mix_ref(z: int) -> int:
    z &= _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


def _keys_ref(*parts: int) -> int:
    h = 0
    for p in parts:
        h = _mix_ref(h ^ _mix_ref(p + _GOLDEN))
    return h


def test_keyed_draws_are_splitmix64_exactly():
    parts = [(0,), (42, 0, 3, 17), (-5, 2**62 + 7, 1), (2**40, 9)]
    for p in parts:
        assert int(random_keys(*p)) & _M == _keys_ref(*p)
    keys = random_keys(7, 0, 2, torch.arange(6))
    u = keyed_uniform(keys, 5)
    for i in range(6):
        for j in range(5):
            word = _mix_ref(_keys_ref(7, 0, 2, i) + (j + 1) * _GOLDEN)
            assert u[i, j].item() == (word >> 40) / 2**24
    assert torch.equal(keyed_uniform(keys[2:4], 5), u[2:4])  # a row does not see the others
    ints = keyed_randint(keys, 1000, 7)
    assert ints.min() == 0 and ints.max() == 6
    big = keyed_uniform(random_keys(3, torch.arange(100_000)), 2)
    assert 0.0 <= big.min() and big.max() < 1.0
    assert abs(big.mean().item() - 0.5) < 0.005 and abs(big.var().item() - 1 / 12) < 0.002
    assert abs(torch.corrcoef(big.T)[0, 1].item()) < 0.01


def test_rank_seed_keeps_rank_zero_and_separates_ranks():
    assert rank_seed(42, 0) == 42
    seeds = {rank_seed(42, r) for r in range(1, 64)} | {42}
    assert len(seeds) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert rank_seed(42, 1) != rank_seed(43, 1)


def _keys(index: list[int], epoch: int = 0) -> torch.Tensor:
    return random_keys(5, 0, epoch, torch.tensor(index))


def test_keyed_augmentation_of_an_image_does_not_depend_on_its_batch():
    imgs = torch.rand(50, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    aug = ViewAugment(AugmentConfig(size=12, blur_p=0.5, solarize_p=0.3))
    a_idx, b_idx = [3, 17], [17, 40, 41]
    out_a, pa = aug(imgs[a_idx], return_params=True, keys=_keys(a_idx))
    out_b, pb = aug(imgs[b_idx], return_params=True, keys=_keys(b_idx))
    for name in pa.__dataclass_fields__:
        assert torch.equal(getattr(pa, name)[1], getattr(pb, name)[0]), name
    assert torch.allclose(out_a[1], out_b[0], atol=1e-6)
    assert not torch.equal(pa.boxes[0], pa.boxes[1])  # images 3 and 17: their own draws
    _, p_next = aug(imgs[a_idx], return_params=True, keys=_keys(a_idx, epoch=1))
    assert not torch.equal(p_next.boxes[1], pa.boxes[1])  # a new epoch, new views
    # two views, multi-crop and jigsaw: the same rule, view by view and patch by patch
    va, vb = aug.views(imgs[a_idx], 2, _keys(a_idx)), aug.views(imgs[b_idx], 2, _keys(b_idx))
    assert torch.allclose(va[[1, 3]], vb[[0, 3]], atol=1e-6) and not torch.allclose(va[1], va[3])
    mc = MultiCrop(AugmentConfig(size=16), AugmentConfig(size=8, scale=(0.05, 0.3)), 2, 2)
    (ga, la), (gb, lb) = mc(imgs[a_idx], _keys(a_idx)), mc(imgs[b_idx], _keys(b_idx))
    assert torch.allclose(ga[[1, 3]], gb[[0, 3]], atol=1e-6) and torch.allclose(la[[1, 3]], lb[[0, 3]], atol=1e-6)
    jig = Jigsaw(grid=3, patch_size=5)
    (pa_, perm_a), (pb_, perm_b) = jig(imgs[a_idx], _keys(a_idx)), jig(imgs[b_idx], _keys(b_idx))
    assert torch.equal(perm_a[1], perm_b[0]) and torch.allclose(pa_[1], pb_[0], atol=1e-6)
    assert all(sorted(p.tolist()) == list(range(9)) for p in perm_a)


def test_keyed_memory_bank_sample():
    bank = MemoryBank(1000, 4, seed=0)
    key = random_keys(1, 2, 3)
    a = bank.sample(64, key=key)
    assert torch.equal(a, bank.sample(64, key=key)) and a.shape == (64,) and a.dtype == torch.int64
    assert 0 <= a.min() and a.max() < 1000
    assert not torch.equal(a, bank.sample(64, key=random_keys(1, 2, 4)))
    state = torch.get_rng_state()
    bank.sample(64, key=key)
    assert torch.equal(state, torch.get_rng_state())  # keyed: the global RNG is untouched


# --------------------------------------------------------------------------- processes
def _init(rank: int, store: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _toy(dropout: float):
    from _toy import Toy, ToyConfig, ToyModel

    torch.manual_seed(0)  # the same initial weights on every rank
    return Toy(ToyConfig(model=ToyModel(dropout=dropout)))


def _toy_cfg(**kw):
    from textcl.core.recipe import TrainConfig

    return TrainConfig(**{"batch_size": 4, "max_steps": 4, "lr": 0.05, "scheduler": "cosine", "cpu": True,
                          "log_every_n_steps": 1, "save_every_n_steps": 2, **kw})


class _KillAt:
    """A kill right after step ``n`` (its checkpoint written), on every rank."""

    class Killed(Exception):
        pass

    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.n:
            raise self.Killed


def _dropout_worker(rank: int, store: str, out: str) -> None:
    from textcl.core.trainer import Trainer

    _init(rank, store)
    try:
        method = _toy(0.5)
        masks: list[torch.Tensor] = []
        method.net[1].register_forward_hook(lambda mod, inp, o: masks.append((o != 0).clone()))
        Trainer(method, _toy_cfg(), os.path.join(out, "full"), seed=3).fit()
        full = {k: v.clone() for k, v in method.state_dict().items()}
        # killed after step 2 (its checkpoint written), then resumed by a fresh method and trainer
        try:
            Trainer(_toy(0.5), _toy_cfg(), os.path.join(out, "resumed"), seed=3, callbacks=[_KillAt(2)]).fit()
        except _KillAt.Killed:
            pass
        resumed_method = _toy(0.5)
        Trainer(resumed_method, _toy_cfg(), os.path.join(out, "resumed"), seed=3).fit(resume=True)
        torch.save({"mask": masks[0], "full": full, "resumed": resumed_method.state_dict()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_draw_different_dropout_masks_and_resume_stays_exact(tmp_path):
    mp.spawn(_dropout_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert got[0]["mask"].shape == got[1]["mask"].shape == (4, 8)
    assert not torch.equal(got[0]["mask"], got[1]["mask"])  # per-rank dropout
    for r in range(WORLD):
        for key, value in got[r]["full"].items():
            assert torch.equal(value, got[r]["resumed"][key]), (r, key)  # bit-identical resume
            assert torch.equal(value, got[0]["full"][key]), (r, key)  # DDP keeps ranks in sync


class _FlatEncoder(nn.Module):
    """A BatchNorm-free stand-in backbone: flatten + linear (``dim`` as the method expects)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.dim = dim
        self.lin = nn.Linear(3 * size * size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


_OBJECTIVES = {"simclr": {"augment": {"size": 16}},
               "npid": {"num_negatives": 32, "augment": {"size": 16}, "loss": "nce"}}


def _vision(tmp_path: Path, name: str, batch_size: int, out: str, tag: str = ""):
    """The method with its backbone (and SimCLR's BatchNorm head) made BatchNorm-free, a
    recorder of every augmentation / negatives draw, and its recipe. ``tag`` names the recipe
    file per rank: two ranks writing one file let one read it half-written (a CI failure)."""
    from accelerate.utils import set_seed

    from textcl.core.method import get_method_class
    from textcl.core.recipe import load_recipe

    path = tmp_path / f"{name}-{batch_size}{tag}.yaml"
    path.write_text(yaml.safe_dump({
        "method": name, "output_dir": out, "seed": 0, "model": {"arch": "resnet_small", "width": 0.125},
        "data": {"source": "synthetic", "image_size": 16, "synthetic_train": 64, "synthetic_test": 16,
                 "knn_bank": 16, "knn_queries": 16, "knn_k": 5},
        "objective": _OBJECTIVES[name],
        "train": {"batch_size": batch_size, "max_steps": 5, "optimizer": "sgd", "lr": 0.05,
                  "scheduler": "constant", "log_every_n_steps": 1, "cpu": True},
    }))
    recipe = load_recipe(str(path), [])
    set_seed(recipe.seed)
    method = get_method_class(name).from_recipe(recipe)
    torch.manual_seed(1)
    method.backbone = _FlatEncoder(16, method.backbone.dim)
    if name == "simclr":
        method.head = nn.Identity()
    draws: dict[str, list[torch.Tensor]] = {"boxes": [], "negatives": []}
    sample = method.augment.sample

    def recording_sample(*args, **kwargs):
        p = sample(*args, **kwargs)
        draws["boxes"].append(p.boxes.clone())
        return p

    method.augment.sample = recording_sample
    if name == "npid":
        bank_sample = method.bank.sample

        def recording_bank_sample(*args, **kwargs):
            draws["negatives"].append(bank_sample(*args, **kwargs))
            return draws["negatives"][-1]

        method.bank.sample = recording_bank_sample
    return recipe, method, draws


def _vision_worker(rank: int, store: str, tmp: str) -> None:
    from textcl.core.trainer import Trainer

    _init(rank, store)
    try:
        for name in _OBJECTIVES:
            recipe, method, draws = _vision(Path(tmp), name, 4, os.path.join(tmp, f"{name}-ddp"), f"-rank{rank}")
            Trainer(method, recipe.train, recipe.output_dir, seed=recipe.seed).fit()
            torch.save({"state": method.state_dict(), **draws}, os.path.join(tmp, f"{name}{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_with_augmentation(tmp_path):
    from textcl.core.trainer import Trainer

    mp.spawn(_vision_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    for name, views in (("simclr", 2), ("npid", 1)):
        recipe, single, draws = _vision(tmp_path, name, 8, str(tmp_path / f"{name}-single"))
        Trainer(single, recipe.train, recipe.output_dir, seed=recipe.seed).fit()
        ranks = [torch.load(tmp_path / f"{name}{r}.pt", weights_only=True) for r in range(WORLD)]
        b = 4
        assert len(draws["boxes"]) == 5  # 5 steps, one augmentation call each (steps 5: epoch 1)
        for step, one in enumerate(draws["boxes"]):
            mine = [ranks[r]["boxes"][step] for r in range(WORLD)]
            assert not torch.equal(mine[0], mine[1])  # the ranks' views differ
            for r in range(WORLD):
                for v in range(views):  # rank r's view v of its slice == the 1-process rows
                    assert torch.equal(mine[r][v * b : (v + 1) * b],
                                       one[v * 2 * b + r * b : v * 2 * b + (r + 1) * b]), (name, step, r, v)
        for step, neg in enumerate(draws["negatives"]):  # shared by the global batch
            assert torch.equal(ranks[0]["negatives"][step], neg) and torch.equal(ranks[1]["negatives"][step], neg)
        assert len(draws["negatives"]) == (5 if name == "npid" else 0)
        for key, value in single.state_dict().items():
            for r in range(WORLD):
                assert torch.allclose(ranks[r]["state"][key].float(), value.float(), atol=1e-5,
                                      equal_nan=True), (name, key, r)
