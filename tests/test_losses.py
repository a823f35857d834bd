"""Tests of tsai_ssl.losses against plain, loop-based reference implementations.

The references below are written for readability, not speed: every anchor, positive
and negative is enumerated explicitly, so that they can be checked against the
definitions in the papers (SimCLR: Chen et al. 2020; TS2Vec: Yue et al. 2022; MoCo: He et al.
2020; BYOL: Grill et al. 2020).
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tsai_ssl import losses as L
from tsai_ssl.losses import (
    HierarchicalContrastiveLoss,
    NTXentLoss,
    byol_loss,
    gather_with_grad,
    hierarchical_contrastive_loss,
    moco_info_nce,
    nt_xent,
)

DT = torch.float64


# ----------------------------------------------------------------------------- references

def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent, one anchor at a time."""
    z = torch.cat([z1, z2])
    z = z / z.pow(2).sum(1, keepdim=True).sqrt()
    two_n = z.shape[0]
    n = two_n // 2
    terms = []
    for a in range(two_n):
        p = (a + n) % two_n
        num = torch.exp(z[a] @ z[p] / temperature)
        den = sum(torch.exp(z[a] @ z[b] / temperature) for b in range(two_n) if b != a)
        terms.append(-torch.log(num / den))
    return torch.stack(terms).mean()


def _info_nce(anchor, positive, negatives):
    num = torch.exp(anchor @ positive)
    den = num + sum(torch.exp(anchor @ ng) for ng in negatives)
    return -torch.log(num / den)


def ref_moco(q, k, queue, temperature, exclude=None):
    """MoCo's InfoNCE, one query at a time: positive = its own key; negatives = the batch's other keys and the queue
    entries not excluded for it."""
    unit = lambda v: v / v.pow(2).sum().sqrt()
    terms = []
    for i in range(q.shape[0]):
        qi = unit(q[i])
        num = torch.exp(qi @ unit(k[i]) / temperature)
        den = sum(torch.exp(qi @ unit(k[j]) / temperature) for j in range(k.shape[0]))
        for m in range(0 if queue is None else queue.shape[0]):
            if exclude is None or not exclude[i, m]: den = den + torch.exp(qi @ unit(queue[m]) / temperature)
        terms.append(-torch.log(num / den))
    return torch.stack(terms).mean()


def ref_byol(p, z):
    """BYOL: squared distance of the unit vectors, row by row."""
    unit = lambda v: v / v.pow(2).sum().sqrt()
    return torch.stack([(unit(p[i]) - unit(z[i])).pow(2).sum() for i in range(p.shape[0])]).mean()


def ref_instance(z1, z2, m):
    """At each timestep: positives = same series other view; negatives = other valid series, both views."""
    B, T, _ = z1.shape
    terms = []
    for t in range(T):
        valid = [i for i in range(B) if m[i, t]]
        for i in valid:
            negs1 = [z1[j, t] for j in valid if j != i]
            negs2 = [z2[j, t] for j in valid if j != i]
            if not negs1:
                continue
            terms.append(_info_nce(z1[i, t], z2[i, t], negs1 + negs2))
            terms.append(_info_nce(z2[i, t], z1[i, t], negs1 + negs2))
    return torch.stack(terms).mean() if terms else z1.new_zeros(())


def ref_temporal(z1, z2, m):
    """Within each series: positive = same timestep other view; negatives = other valid timesteps."""
    B, T, _ = z1.shape
    terms = []
    for i in range(B):
        valid = [t for t in range(T) if m[i, t]]
        for t in valid:
            negs = [z1[i, s] for s in valid if s != t] + [z2[i, s] for s in valid if s != t]
            if not negs:
                continue
            terms.append(_info_nce(z1[i, t], z2[i, t], negs))
            terms.append(_info_nce(z2[i, t], z1[i, t], negs))
    return torch.stack(terms).mean() if terms else z1.new_zeros(())


def ref_pool(z, m):
    """Kernel-2 max pooling over the valid steps of each window (odd tail dropped)."""
    B, T, d = z.shape
    out = z.new_zeros(B, T // 2, d)
    om = torch.zeros(B, T // 2, dtype=torch.bool)
    rows = []
    for i in range(B):
        row = []
        for t in range(T // 2):
            vals = [z[i, s] for s in (2 * t, 2 * t + 1) if m[i, s]]
            if vals:
                row.append(torch.stack(vals).max(0).values)
                om[i, t] = True
            else:
                row.append(out[i, t])
        rows.append(torch.stack(row) if row else out[i])
    return torch.stack(rows), om


def ref_hierarchical(z1, z2, alpha, temporal_unit, m=None):
    if m is None:
        m = torch.ones(z1.shape[:2], dtype=torch.bool)
    loss, d = z1.new_zeros(()), 0
    while z1.shape[1] > 1:
        loss = loss + alpha * ref_instance(z1, z2, m)
        if d >= temporal_unit:
            loss = loss + (1 - alpha) * ref_temporal(z1, z2, m)
        d += 1
        (z1, m1), (z2, _) = ref_pool(z1, m), ref_pool(z2, m)
        m = m1
    if z1.shape[1] == 1:
        loss = loss + alpha * ref_instance(z1, z2, m)
        d += 1
    return loss / d


# ----------------------------------------------------------------------------- NT-Xent

@pytest.mark.parametrize("bs", [1, 2, 8])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(bs, temperature):
    g = torch.Generator().manual_seed(bs * 100 + int(temperature * 100))
    z1, z2 = torch.randn(bs, 16, generator=g, dtype=DT), torch.randn(bs, 16, generator=g, dtype=DT)
    out = nt_xent(z1, z2, temperature)
    assert out.shape == ()
    torch.testing.assert_close(out, ref_nt_xent(z1, z2, temperature))
    torch.testing.assert_close(NTXentLoss(temperature)(z1, z2), out)


@pytest.mark.parametrize("bs", [2, 5])
@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_nt_xent_gradients_match_reference(bs, temperature):
    g = torch.Generator().manual_seed(7 + bs)
    a1, a2 = torch.randn(bs, 8, generator=g, dtype=DT), torch.randn(bs, 8, generator=g, dtype=DT)
    z1, z2 = a1.clone().requires_grad_(), a2.clone().requires_grad_()
    r1, r2 = a1.clone().requires_grad_(), a2.clone().requires_grad_()
    nt_xent(z1, z2, temperature).backward()
    ref_nt_xent(r1, r2, temperature).backward()
    torch.testing.assert_close(z1.grad, r1.grad)
    torch.testing.assert_close(z2.grad, r2.grad)


def test_nt_xent_float32_and_perfect_alignment():
    z = torch.randn(6, 4)
    out = nt_xent(z, z.clone(), 0.1)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref_nt_xent(z.double(), z.double(), 0.1).float(), rtol=1e-4, atol=1e-4)


def test_nt_xent_validation():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)
    with pytest.raises(RuntimeError):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), distributed=True)  # no process group
    # Not distributed: gather is the identity.
    t = torch.randn(3, 2)
    assert gather_with_grad(t) is t


# ----------------------------------------------------------------------------- hierarchical

@pytest.mark.parametrize("bs", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temporal_unit", [0, 1])
def test_hierarchical_matches_reference(bs, alpha, temporal_unit):
    g = torch.Generator().manual_seed(bs * 10 + temporal_unit)
    z1, z2 = torch.randn(bs, 7, 4, generator=g, dtype=DT), torch.randn(bs, 7, 4, generator=g, dtype=DT)
    out = hierarchical_contrastive_loss(z1, z2, alpha, temporal_unit)
    torch.testing.assert_close(out, ref_hierarchical(z1, z2, alpha, temporal_unit))
    torch.testing.assert_close(HierarchicalContrastiveLoss(alpha, temporal_unit)(z1, z2), out)
    full = torch.ones(bs, 7, dtype=torch.bool)
    torch.testing.assert_close(hierarchical_contrastive_loss(z1, z2, alpha, temporal_unit, full), out)


@pytest.mark.parametrize("alpha", [0.3, 0.5])
@pytest.mark.parametrize("T", [1, 2, 8])
def test_hierarchical_lengths(alpha, T):
    g = torch.Generator().manual_seed(T)
    z1, z2 = torch.randn(3, T, 5, generator=g, dtype=DT), torch.randn(3, T, 5, generator=g, dtype=DT)
    torch.testing.assert_close(hierarchical_contrastive_loss(z1, z2, alpha), ref_hierarchical(z1, z2, alpha, 0))


def _overlap_mask(lengths, T):
    return torch.arange(T)[None] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("lengths", [[9, 4, 6], [9, 1, 3, 9], [2, 2]])
@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_hierarchical_masked_matches_reference(lengths, alpha):
    T = max(lengths)
    g = torch.Generator().manual_seed(sum(lengths))
    z1 = torch.randn(len(lengths), T, 3, generator=g, dtype=DT)
    z2 = torch.randn(len(lengths), T, 3, generator=g, dtype=DT)
    m = _overlap_mask(lengths, T)
    out = hierarchical_contrastive_loss(z1, z2, alpha, 0, m)
    torch.testing.assert_close(out, ref_hierarchical(z1, z2, alpha, 0, m))


def test_hierarchical_masked_non_prefix_matches_reference():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(3, 6, 2, generator=g, dtype=DT), torch.randn(3, 6, 2, generator=g, dtype=DT)
    m = torch.rand(3, 6, generator=g) > 0.3
    out = hierarchical_contrastive_loss(z1, z2, 0.5, 0, m)
    torch.testing.assert_close(out, ref_hierarchical(z1, z2, 0.5, 0, m))


def test_hierarchical_masked_positions_are_ignored():
    """Garbage in padded steps changes neither the loss nor the gradients, and gets no gradient."""
    g = torch.Generator().manual_seed(11)
    lengths, T = [8, 3, 5], 8
    m = _overlap_mask(lengths, T)
    z1, z2 = torch.randn(3, T, 4, generator=g, dtype=DT), torch.randn(3, T, 4, generator=g, dtype=DT)
    junk1 = torch.where(m[..., None], z1, 1e3 * torch.randn(3, T, 4, generator=g, dtype=DT))
    junk2 = torch.where(m[..., None], z2, -1e3)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = junk1.clone().requires_grad_(), junk2.clone().requires_grad_()
    la = hierarchical_contrastive_loss(a1, a2, 0.5, 0, m)
    lb = hierarchical_contrastive_loss(b1, b2, 0.5, 0, m)
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a1.grad, b1.grad)
    assert torch.all(b1.grad[~m] == 0) and torch.all(b2.grad[~m] == 0)
    assert torch.isfinite(a1.grad).all()


def test_hierarchical_gradients_match_reference():
    g = torch.Generator().manual_seed(5)
    a1, a2 = torch.randn(3, 5, 2, generator=g, dtype=DT), torch.randn(3, 5, 2, generator=g, dtype=DT)
    m = _overlap_mask([5, 2, 4], 5)
    z1, z2 = a1.clone().requires_grad_(), a2.clone().requires_grad_()
    r1, r2 = a1.clone().requires_grad_(), a2.clone().requires_grad_()
    hierarchical_contrastive_loss(z1, z2, 0.5, 0, m).backward()
    ref_hierarchical(r1, r2, 0.5, 0, m).backward()
    torch.testing.assert_close(z1.grad, r1.grad)
    torch.testing.assert_close(z2.grad, r2.grad)


def test_hierarchical_validation():
    with pytest.raises(ValueError):
        hierarchical_contrastive_loss(torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError):
        hierarchical_contrastive_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool))


def ref_temporal_at(z1, z2, m, anchors):
    """`ref_temporal` with only the given timesteps as anchors (every valid step stays a negative)."""
    B, T, _ = z1.shape
    terms = []
    for i in range(B):
        valid = [t for t in range(T) if m[i, t]]
        for t in anchors:
            if not m[i, t]: continue
            negs = [z1[i, s] for s in valid if s != t] + [z2[i, s] for s in valid if s != t]
            if not negs: continue
            terms.append(_info_nce(z1[i, t], z2[i, t], negs))
            terms.append(_info_nce(z2[i, t], z1[i, t], negs))
    return torch.stack(terms).mean() if terms else z1.new_zeros(())


@pytest.mark.parametrize("K", [1, 5, 16])
def test_sampled_temporal_anchors_match_reference(K):
    g = torch.Generator().manual_seed(K)
    z1, z2 = torch.randn(3, 20, 4, generator=g, dtype=DT), torch.randn(3, 20, 4, generator=g, dtype=DT)
    m = torch.ones(3, 20, dtype=torch.bool)
    m[1, 15:] = False
    m[2, :3] = False
    got = L._temporal_loss(z1, z2, m, anchors=K, generator=torch.Generator().manual_seed(7))
    t = torch.randperm(20, generator=torch.Generator().manual_seed(7))[:K].tolist()
    torch.testing.assert_close(got, ref_temporal_at(z1, z2, m, t))
    torch.testing.assert_close(L._temporal_loss(z1, z2, m, anchors=20), ref_temporal(z1, z2, m))  # all: exact


def test_sampled_anchors_estimate_the_full_loss():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 128, 8, generator=g), torch.randn(4, 128, 8, generator=g)
    full = hierarchical_contrastive_loss(z1, z2)
    est = torch.stack([hierarchical_contrastive_loss(z1, z2, anchors=16, generator=torch.Generator().manual_seed(i))
                       for i in range(300)])
    assert abs(float(est.mean() - full)) < 4 * float(est.std()) / 300 ** 0.5 + 1e-4  # unbiased within noise
    assert hierarchical_contrastive_loss(z1, z2, anchors=128).item() == pytest.approx(full.item())
    with pytest.raises(ValueError, match="anchors"): hierarchical_contrastive_loss(z1, z2, anchors=0)


# ----------------------------------------------------------------------------- MoCo

@pytest.mark.parametrize("bs", [1, 3, 8])
@pytest.mark.parametrize("K", [0, 1, 16])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_moco_matches_reference(bs, K, temperature):
    g = torch.Generator().manual_seed(bs * 100 + K)
    q, k = torch.randn(bs, 5, generator=g, dtype=DT), torch.randn(bs, 5, generator=g, dtype=DT)
    queue = torch.randn(K, 5, generator=g, dtype=DT)
    torch.testing.assert_close(moco_info_nce(q, k, queue, temperature).double(), ref_moco(q, k, queue, temperature))


def test_moco_exclusion_and_gradients_match_reference():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(4, 6, generator=g, dtype=DT, requires_grad=True)
    k, queue = torch.randn(4, 6, generator=g, dtype=DT), torch.randn(10, 6, generator=g, dtype=DT)
    exclude = torch.rand(4, 10, generator=g) < 0.4
    loss = moco_info_nce(q, k, queue, 0.2, exclude)
    (gq,) = torch.autograd.grad(loss, q)
    q2 = q.detach().clone().requires_grad_(True)
    ref = ref_moco(q2, k, queue, 0.2, exclude)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref)
    torch.testing.assert_close(gq, q2.grad)
    assert not torch.allclose(loss.double(), ref_moco(q2.detach(), k, queue, 0.2))  # the exclusion mattered


def test_moco_closed_forms_and_no_gradient_to_keys():
    q = torch.randn(1, 4)
    assert moco_info_nce(q, q.clone(), None).item() == pytest.approx(0., abs=1e-6)  # one key, the positive: log 1
    # a queue of K copies of an orthogonal vector: loss = log(1 + K exp(-1/T)) for a query equal to its key
    e0, e1 = torch.eye(2)[:1], torch.eye(2)[1:]
    K, T = 5, 0.5
    want = math.log(1 + K * math.exp(0.) / math.exp(1 / T))
    assert moco_info_nce(e0, e0, e1.repeat(K, 1), T).item() == pytest.approx(want, rel=1e-5)
    # excluding every queue entry gives the batch-only loss
    assert moco_info_nce(e0, e0, e1.repeat(K, 1), T, torch.ones(1, K, dtype=torch.bool)).item() == pytest.approx(0., abs=1e-6)
    k = torch.randn(3, 4, requires_grad=True)
    moco_info_nce(torch.randn(3, 4, requires_grad=True), k, torch.randn(2, 4)).backward()
    assert k.grad is None  # keys are the teacher's: detached


def test_moco_validation():
    with pytest.raises(ValueError, match=r"\(n, d\)"): moco_info_nce(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"): moco_info_nce(torch.randn(3, 4), torch.randn(3, 4), None, 0.)
    with pytest.raises(ValueError, match="queue must be"): moco_info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="exclude must be"):
        moco_info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4), 0.2, torch.zeros(3, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- BYOL

@pytest.mark.parametrize("bs, d", [(1, 2), (4, 8), (16, 128)])
def test_byol_matches_reference_and_is_symmetric(bs, d):
    g = torch.Generator().manual_seed(bs + d)
    p, z = torch.randn(bs, d, generator=g, dtype=DT), torch.randn(bs, d, generator=g, dtype=DT)
    torch.testing.assert_close(byol_loss(p, z).double(), ref_byol(p, z))
    torch.testing.assert_close(byol_loss(p, z), byol_loss(z, p))  # the value is symmetric (the gradient is not)
    torch.testing.assert_close(byol_loss(3 * p, 0.5 * z), byol_loss(p, z))  # scale-free


def test_byol_closed_forms_and_stop_gradient():
    e = torch.eye(3)
    assert byol_loss(e, e).item() == pytest.approx(0., abs=1e-6)
    assert byol_loss(e, -e).item() == pytest.approx(4., abs=1e-6)
    assert byol_loss(e, e.roll(1, 1)).item() == pytest.approx(2., abs=1e-6)  # orthogonal
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    with pytest.raises(ValueError, match=r"\(n, d\)"): byol_loss(torch.randn(3, 4), torch.randn(3, 5))


# ----------------------------------------------------------------------------- DDP

WORLD, N_LOCAL, D_IN, D_OUT, TAU = 2, 3, 5, 4, 0.2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_problem():
    g = torch.Generator().manual_seed(1234)
    x1 = torch.randn(WORLD * N_LOCAL, D_IN, generator=g, dtype=DT)
    x2 = x1 + 0.3 * torch.randn(WORLD * N_LOCAL, D_IN, generator=g, dtype=DT)
    enc = nn.Linear(D_IN, D_OUT).double()
    with torch.no_grad():
        enc.weight.copy_(torch.randn(D_OUT, D_IN, generator=g, dtype=DT))
        enc.bias.copy_(torch.randn(D_OUT, generator=g, dtype=DT))
    return x1, x2, enc


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo on the loopback interface
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        x1, x2, enc0 = _make_problem()
        sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        res = {}
        for gather in ("torch", "fallback"):
            if gather == "fallback":  # exercise the custom autograd Function too
                L.gather_with_grad = lambda t, group=None: L._AllGatherWithGrad.apply(t, group)
            enc = nn.Linear(D_IN, D_OUT).double()
            enc.load_state_dict(enc0.state_dict())
            ddp = nn.parallel.DistributedDataParallel(enc)
            z = ddp(torch.cat([x1[sl], x2[sl]]))
            z.retain_grad()
            z1, z2 = z[:N_LOCAL], z[N_LOCAL:]
            loss = L.nt_xent(z1, z2, TAU)  # distributed=None: auto-detected
            loss.backward()
            res[gather] = dict(loss=loss.detach(), z_grad=z.grad.clone(),
                               w_grad=enc.weight.grad.clone(), b_grad=enc.bias.grad.clone())
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gathered_negatives_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # Single process on the concatenated batch.
    x1, x2, enc = _make_problem()
    z = enc(torch.cat([x1, x2]))
    z.retain_grad()
    n = WORLD * N_LOCAL
    loss = nt_xent(z[:n], z[n:], TAU, distributed=False)
    loss.backward()
    torch.testing.assert_close(loss, ref_nt_xent(z[:n].detach(), z[n:].detach(), TAU))

    for gather in ("torch", "fallback"):
        per_rank = [r[gather] for r in res]
        # The mean of the local losses is the global loss.
        torch.testing.assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), loss.detach())
        for rank, r in enumerate(per_rank):
            # DDP averaged the parameter gradients: they equal the single-process ones.
            torch.testing.assert_close(r["w_grad"], enc.weight.grad)
            torch.testing.assert_close(r["b_grad"], enc.bias.grad)
            # The local embeddings receive the gradient of the sum of all ranks' losses, i.e.
            # WORLD x the single-process gradient; DDP's mean over ranks divides it back.
            sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
            ref = torch.cat([z.grad[:n][sl], z.grad[n:][sl]])
            torch.testing.assert_close(r["z_grad"] / WORLD, ref)
