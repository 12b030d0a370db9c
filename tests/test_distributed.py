"""2 processes x batch B == 1 process x batch 2B, for the loss and every gradient.

Runs real gloo process groups on CPU (torch.multiprocessing). Gradients from the
2-process run are averaged over ranks, as DDP does, before comparing.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from textcl.core.distributed import batch_offset, gather_no_grad, gather_with_grad
from textcl.core.losses import info_nce

B, D_IN, D = 4, 10, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 16), torch.nn.Tanh(), torch.nn.Linear(16, D))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * B, D_IN, generator=g), torch.randn(2 * B, D_IN, generator=g)


def _loss(model, x, y, symmetric_keys=False):
    q, k = model(x), model(y)
    keys = gather_with_grad(k)
    labels = torch.arange(q.shape[0]) + batch_offset(q.shape[0])
    loss = info_nce(q, keys, labels=labels, temperature=0.1)
    if symmetric_keys:  # the key side also queries the gathered queries
        loss = (loss + info_nce(k, gather_with_grad(q), labels=labels, temperature=0.1)) / 2
    return loss


def _worker(rank: int, world: int, port: int, out_dir: str, symmetric: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model()
        x, y = _data()
        sl = slice(rank * B, (rank + 1) * B)
        loss = _loss(model, x[sl], y[sl], symmetric)
        loss.backward()
        grads = []
        for p in model.parameters():
            dist.all_reduce(p.grad)  # DDP: average over ranks
            grads.append(p.grad / world)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        gathered = gather_no_grad(torch.full((2,), float(rank)))
        torch.save(
            {"loss": mean_loss / world, "grads": grads, "gathered": gathered},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("symmetric", [False, True])
def test_two_processes_equal_one_process_double_batch(tmp_path, symmetric):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), symmetric), nprocs=2, join=True)
    model = _model()
    x, y = _data()
    loss = _loss(model, x, y, symmetric)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
        for g_dist, p in zip(got["grads"], model.parameters()):
            assert torch.allclose(g_dist, p.grad, atol=1e-6), (g_dist - p.grad).abs().max()
        assert got["gathered"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_single_process_gather_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert batch_offset(3) == 0
