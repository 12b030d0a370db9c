"""2 gloo processes x batch B == 1 process x batch 2B for the cross-process parts of the
vision methods: NT-Xent (loss and gradients), shuffle-BN key encoding, queue enqueue,
memory-bank update and Sinkhorn-Knopp."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from textcl.core.memory_bank import MemoryBank
from textcl.core.queue import FeatureQueue
from textcl.vision.methods.moco import shuffle_bn_forward
from textcl.vision.methods.simclr import nt_xent
from textcl.vision.methods.swav import sinkhorn

B, D = 4, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(5, D)


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2 * B, 5, generator=g), torch.randn(2 * B, 5, generator=g),
            torch.randn(2 * B, D, generator=g), torch.randperm(10, generator=g)[: 2 * B])


def _single(x1, x2, scores, index):
    """Everything the workers compute, on one process with the union batch."""
    model = _model()
    loss, _ = nt_xent(model(x1), model(x2), 0.5)
    loss.backward()
    queue = FeatureQueue(12, D, init="empty")
    queue.enqueue(scores, gather=False)
    bank = MemoryBank(10, D, seed=0)
    bank.update(index, scores, 0.5, gather=False)
    return {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()], "queue": queue.ordered(),
            "bank": bank.bank, "codes": sinkhorn(scores @ torch.eye(D)[:, :3])}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x1, x2, scores, index = (t[rank * B : (rank + 1) * B] for t in _data())
        model = _model()
        loss, _ = nt_xent(model(x1), model(x2), 0.5)
        loss.backward()
        grads = []
        for p in model.parameters():
            dist.all_reduce(p.grad)
            grads.append(p.grad / world)  # DDP's average
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        queue = FeatureQueue(12, D, init="empty")
        queue.enqueue(scores, gather=True)
        bank = MemoryBank(10, D, seed=0)
        bank.update(index, scores, 0.5, gather=True)
        codes = sinkhorn(scores @ torch.eye(D)[:, :3])
        lin = torch.nn.Linear(5, 3)
        torch.manual_seed(5)
        enc = shuffle_bn_forward(lin, x1, seed=3, splits=2)
        torch.save({"loss": mean / world, "grads": grads, "queue": queue.ordered(), "bank": bank.bank,
                    "codes": codes, "shuffled": enc, "direct": lin(x1).detach()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = _single(*_data())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], one["loss"], atol=1e-6)
        for a, b in zip(got["grads"], one["grads"]):
            assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
        assert torch.equal(got["queue"], one["queue"])  # keys of every rank, in rank order
        assert torch.allclose(got["bank"], one["bank"], atol=1e-7)  # identical banks on every rank
        assert torch.allclose(got["codes"], one["codes"][rank * B : (rank + 1) * B], atol=1e-6)
        assert torch.allclose(got["shuffled"], got["direct"], atol=1e-6)  # un-shuffled to the right rows


def test_shuffle_bn_forward_one_process_changes_batch_statistics():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))

    def centre(t):  # batch-dependent, like BatchNorm in training mode
        return t - t.mean(0)

    ghost = shuffle_bn_forward(centre, x, seed=1, splits=2)
    assert not torch.allclose(ghost, centre(x))  # statistics of random halves, not of the batch
    assert torch.allclose(shuffle_bn_forward(lambda t: 2 * t, x, seed=1, splits=2), 2 * x)
    assert torch.allclose(F.normalize(shuffle_bn_forward(centre, x, seed=1, splits=1), dim=1),
                          F.normalize(centre(x), dim=1), atol=1e-6)
