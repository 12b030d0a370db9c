"""Modality-free parts with exact values: momentum update, feature queue, memory bank."""

import pytest
import torch
import torch.nn.functional as F

from textcl.core.memory_bank import MemoryBank
from textcl.core.momentum import cosine_momentum, momentum_copy, update_momentum
from textcl.core.queue import FeatureQueue


def test_momentum_update_is_the_ema_formula_exactly():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    for a, b in zip(online.parameters(), target.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    update_momentum(online, target, 0.9)
    for q, k0, k in zip(online.parameters(), before, target.parameters()):
        assert torch.equal(k, k0 * 0.9 + q * (1 - 0.9))
    update_momentum(online, target, 0.0)  # m = 0 copies, m = 1 keeps
    for q, k in zip(online.parameters(), target.parameters()):
        assert torch.equal(q, k)
    with pytest.raises(ValueError):
        update_momentum(online, target, 1.5)


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)


def test_queue_fifo_and_wrap_around():
    q = FeatureQueue(5, 2, init="empty")
    assert q.features().shape == (0, 2) and not q.is_full
    rows = torch.arange(16.0).view(8, 2)
    q.enqueue(rows[:3], gather=False)
    assert torch.equal(q.features(), rows[:3]) and int(q.ptr) == 3
    q.enqueue(rows[3:7], gather=False)  # 3 + 4 > 5: wraps, the two oldest leave
    assert q.is_full and int(q.ptr) == 2
    assert torch.equal(q.queue, torch.stack([rows[5], rows[6], rows[2], rows[3], rows[4]]))
    assert torch.equal(q.ordered(), rows[2:7])
    q.enqueue(rows, gather=False)  # more than K: the last K stay
    assert torch.equal(q.ordered(), rows[3:8])


def test_queue_keys_carry_no_gradient_and_random_start_counts_as_full():
    q = FeatureQueue(4, 3, init="random")
    assert q.is_full and torch.allclose(q.features().norm(dim=1), torch.ones(4))
    w = torch.randn(2, 3, requires_grad=True)
    keys = w * 2
    q.enqueue(keys, gather=False)
    assert not q.queue.requires_grad and not q.features().requires_grad
    assert q.features().grad_fn is None
    assert set(dict(q.named_buffers())) == {"queue", "ptr", "filled"}  # checkpointed with the model


def test_memory_bank_update_is_the_formula_and_renormalises():
    bank = MemoryBank(6, 4, seed=3)
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(6))
    assert torch.equal(bank.bank, MemoryBank(6, 4, seed=3).bank)  # same seed, same bank on every rank
    old = bank.bank.clone()
    idx = torch.tensor([4, 1])
    f = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, -1.0]])
    bank.update(idx, f, momentum=0.5, gather=False)
    expected = F.normalize(0.5 * old[idx] + 0.5 * f, dim=1)
    assert torch.allclose(bank.bank[idx], expected, atol=1e-7)
    untouched = [0, 2, 3, 5]
    assert torch.equal(bank.bank[untouched], old[untouched])
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(6))
    assert not bank.get(idx).requires_grad
    s = bank.sample(1000, torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 5 and len(s.unique()) == 6
