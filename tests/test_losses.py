import math

import pytest
import torch
import torch.nn.functional as F

from textcl.core.losses import info_nce
from textcl.core.optim import LARS, lr_lambda


def naive_info_nce(q, k, tau, positives, extra=None):
    """Row-by-row InfoNCE with Python loops -- the reference implementation."""
    cands = k if extra is None else torch.cat([k, extra])
    q, cands = F.normalize(q, dim=-1), F.normalize(cands, dim=-1)
    total = 0.0
    for i in range(q.shape[0]):
        logits = torch.stack([q[i] @ c / tau for c in cands])
        denom = torch.logsumexp(logits, 0)
        total = total + sum(-(logits[p] - denom) for p in positives[i]) / len(positives[i])
    return total / q.shape[0]


def test_hand_computed_3x3():
    q = torch.eye(3)
    k = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])
    s2 = math.sqrt(2)
    # cos(q_i, k_j): row0 [1, 1/sqrt2, 0], row1 [0, 1/sqrt2, 0], row2 [0, 0, 1]; tau 0.5 doubles
    l0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(s2) + 1))
    l1 = -math.log(math.exp(s2) / (1 + math.exp(s2) + 1))
    l2 = -math.log(math.exp(2) / (1 + 1 + math.exp(2)))
    got = info_nce(q, k, temperature=0.5)
    assert got.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)
    per_row = info_nce(q, k, temperature=0.5, reduction="none")
    assert per_row.tolist() == pytest.approx([l0, l1, l2], abs=1e-6)


def test_identity_closed_form():
    # q = k = I, tau = 1: every row is -log(e / (e + 2))
    got = info_nce(torch.eye(3), torch.eye(3), temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


def test_gradients_match_naive():
    torch.manual_seed(0)
    q = torch.randn(5, 8, requires_grad=True)
    k = torch.randn(5, 8, requires_grad=True)
    info_nce(q, k, temperature=0.1).backward()
    gq, gk = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    naive_info_nce(q, k, 0.1, [[i] for i in range(5)]).backward()
    assert torch.allclose(gq, q.grad, atol=1e-5)
    assert torch.allclose(gk, k.grad, atol=1e-5)


def test_extra_negatives_and_labels():
    torch.manual_seed(1)
    q, k, extra = torch.randn(4, 6), torch.randn(8, 6), torch.randn(10, 6)
    labels = torch.tensor([4, 5, 6, 7])  # as under rank 1 of 2 with local batch 4
    got = info_nce(q, k, temperature=0.2, labels=labels, extra_negatives=extra)
    want = naive_info_nce(q, k, 0.2, [[4], [5], [6], [7]], extra=extra)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)


def test_multi_positive():
    torch.manual_seed(2)
    q, k = torch.randn(3, 4), torch.randn(6, 4)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    positives = [[0, 1], [2, 3], [4, 5]]
    for i, ps in enumerate(positives):
        mask[i, ps] = True
    got = info_nce(q, k, temperature=0.3, positive_mask=mask)
    assert got.item() == pytest.approx(naive_info_nce(q, k, 0.3, positives).item(), abs=1e-5)
    with pytest.raises(ValueError, match="at least one positive"):
        info_nce(q, k, positive_mask=torch.zeros(3, 6, dtype=torch.bool))


def test_symmetric_is_mean_of_both_directions():
    torch.manual_seed(3)
    q, k = torch.randn(4, 5), torch.randn(4, 5)
    pos = [[i] for i in range(4)]
    want = (naive_info_nce(q, k, 0.1, pos) + naive_info_nce(k, q, 0.1, pos)) / 2
    assert info_nce(q, k, temperature=0.1, symmetric=True).item() == pytest.approx(want.item(), abs=1e-5)


def test_unnormalized_is_dot_product():
    q = torch.tensor([[2.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    want = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert info_nce(q, k, temperature=1.0, normalize=False).item() == pytest.approx(want, abs=1e-6)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="width"):
        info_nce(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(2, 3), torch.randn(2, 3), temperature=0)
    with pytest.raises(ValueError, match="len\\(keys\\) >= len\\(query\\)"):
        info_nce(torch.randn(3, 3), torch.randn(2, 3))


def test_bf16_inputs_computed_in_fp32():
    torch.manual_seed(4)
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    got = info_nce(q.bfloat16(), k.bfloat16(), temperature=0.05)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(info_nce(q.bfloat16().float(), k.bfloat16().float(), temperature=0.05).item())


def test_lr_schedules():
    f = lr_lambda("linear", total_steps=10, warmup_steps=2)
    assert [round(f(s), 4) for s in range(4)] == [0.5, 1.0, 1.0, 0.875]
    assert f(10) == 0.0
    c = lr_lambda("cosine", total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    assert c(2) == pytest.approx(1.0)
    assert c(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert c(12) == pytest.approx(0.1)


def test_lars_step_exact():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS(
        [{"params": [w]}, {"params": [b], "lars_exclude": True}],
        lr=0.1, momentum=0.9, weight_decay=0.0, trust_coefficient=0.01,
    )
    w.grad = torch.tensor([0.0, 2.0])  # ||g|| = 2 -> trust = 0.01 * 5 / 2 = 0.025
    b.grad = torch.tensor([2.0])
    opt.step()
    assert w.detach().tolist() == pytest.approx([3.0, 4.0 - 0.1 * 0.025 * 2.0])
    assert b.item() == pytest.approx(1.0 - 0.1 * 2.0)  # excluded: plain SGD


def test_info_nce_is_float32_under_autocast():
    torch.manual_seed(0)
    q = torch.randn(6, 16, requires_grad=True)
    k = torch.randn(6, 16)
    reference = info_nce(q, k, temperature=0.05)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = info_nce(q, k, temperature=0.05)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)


def test_info_nce_ignore_mask_equals_dropping_the_candidates():
    """Ignoring a candidate equals computing the loss without it (hand-built reference)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g)
    ignore = torch.zeros(3, 4, dtype=torch.bool)
    ignore[0, 2] = True
    ignore[2, 0] = True
    got = info_nce(q, k, temperature=0.1, ignore_mask=ignore, reduction="none")
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    for i in range(3):
        keep = [j for j in range(4) if not ignore[i, j]]
        s = qn[i] @ kn[keep].T / 0.1
        want = -(s[keep.index(i)] - torch.logsumexp(s, 0))
        assert torch.allclose(got[i], want, atol=1e-6)
    # multi-positive path: no NaN from the -inf of ignored candidates
    mask = torch.eye(3, 4, dtype=torch.bool)
    mask[1, 3] = True
    multi = info_nce(q, k, positive_mask=mask, ignore_mask=ignore, temperature=0.1)
    assert torch.isfinite(multi)
    with pytest.raises(ValueError, match="positive"):
        info_nce(q, k, ignore_mask=torch.eye(3, 4, dtype=torch.bool))


def test_retrieval_top1_labels_mask_and_ignore():
    from textcl.core.losses import retrieval_top1

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    k = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0], [1.0, 0.9]])
    # nearest keys: 0, 1, 3 -> with labels (0, 1, 2) two of three are right
    assert retrieval_top1(q, k).item() == pytest.approx(2 / 3)
    ignore = torch.zeros(3, 2, dtype=torch.bool)
    ignore[0, 0] = True  # query 0 then picks key 3
    assert retrieval_top1(q, k, labels=torch.tensor([3, 1, 3]), ignore_mask=ignore).item() == 1.0
    pos = torch.tensor([[True, False], [False, False], [False, False]])
    assert retrieval_top1(q, k, positive_mask=pos).item() == pytest.approx(1 / 3)
