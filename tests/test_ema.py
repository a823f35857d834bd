"""Tests of tsai_ssl.ema, the EMA teacher MoCo and BYOL share: the update is exact, the copy is clean, the schedule is
BYOL's, and the teacher ignores padding like the student."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import poisson_series
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl.backbone import split_backbone
from tsai_ssl.ema import EMATeacher, momentum_at
from tsai_ssl.padding import PaddingAware
from tsai_ssl.tasks.contrastive import ProjectionHead


def _student():
    torch.manual_seed(0)
    bb = split_backbone(ResNetPlus(1, 3, nf=8))
    return bb, ProjectionHead(bb.nf, out_dim=6)


@pytest.mark.parametrize('m', [0., 0.5, 0.99, 1.])
def test_update_is_exact_on_parameters_and_leaves_buffers(m):
    bb, head = _student()
    t = EMATeacher(bb, head)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with torch.no_grad():
        for p in [*bb.parameters(), *head.parameters()]: p.add_(torch.randn_like(p))
        for b in bb.buffers(): b.add_(1)  # BatchNorm's running statistics: the teacher keeps its own
    t.update([bb, head], m)
    names = [n for n, _ in t.named_parameters()]
    for n, s in zip(names, [*bb.parameters(), *head.parameters()]):
        torch.testing.assert_close(t.state_dict()[n], m * before[n] + (1 - m) * s.detach(), rtol=0, atol=1e-6)
    for n, v in t.state_dict().items():
        if n not in names: assert torch.equal(v, before[n])
    assert not any(p.requires_grad for p in t.parameters())
    assert all(p.data_ptr() != s.data_ptr() for p, s in zip(t.parameters(), [*bb.parameters(), *head.parameters()]))


def test_update_refuses_other_modules():
    bb, head = _student()
    t = EMATeacher(bb, head)
    with pytest.raises(ValueError, match='same modules, in the same order'): t.update(bb, 0.9)
    with pytest.raises(ValueError, match='same modules'): t.update([head, bb], 0.9)


@pytest.mark.parametrize('base, pct, want', [(0.99, 0., 0.99), (0.99, 1., 1.), (0.99, 0.5, 0.995), (0.9, 0.25, None)])
def test_momentum_schedules(base, pct, want):
    if want is None: want = 1 - (1 - base) * (math.cos(math.pi * pct) + 1) / 2
    assert momentum_at(base, pct, 'cosine') == pytest.approx(want)
    assert momentum_at(base, pct, 'constant') == base
    assert momentum_at(base, 2., 'cosine') == pytest.approx(1.)  # progress is clipped to [0, 1]


def test_momentum_arguments_are_checked():
    with pytest.raises(ValueError, match=r'\[0, 1\]'): momentum_at(1.5, 0.)
    with pytest.raises(ValueError, match="'constant' or 'cosine'"): momentum_at(0.9, 0., 'linear')


def test_copy_leaves_the_students_hooks_behind():
    "Copied while the student is padding-aware, the teacher has no hooks or patched forwards; the student keeps its."
    bb, head = _student()
    with PaddingAware(bb) as pa:
        n_hooks = sum(len(m._forward_pre_hooks) for m in bb.modules())
        patched = sum('forward' in m.__dict__ for m in bb.modules())
        assert n_hooks and patched
        t = EMATeacher(bb, head)
        assert not any(m._forward_pre_hooks or m._forward_hooks or 'forward' in m.__dict__ for m in t.modules())
        assert sum(len(m._forward_pre_hooks) for m in bb.modules()) == n_hooks
        assert sum('forward' in m.__dict__ for m in bb.modules()) == patched
        assert pa.pad_mask is None


def test_teacher_ignores_padding():
    "A series' teacher output is the same alone as in a padded batch (eval mode: no batch statistics)."
    bb, head = _student()
    t = EMATeacher(bb, head).eval()
    X = poisson_series(5, 20, 60)
    L = max(s.shape[-1] for s in X)
    x = torch.zeros(len(X), 1, L)
    for i, s in enumerate(X): x[i, :, :s.shape[-1]] = torch.from_numpy(s)
    mask = torch.arange(L)[None] < torch.tensor([s.shape[-1] for s in X])[:, None]
    batched = t(x, mask, mask)
    alone = torch.cat([t(torch.from_numpy(s)[None], None, None) for s in X])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert not batched.requires_grad
    assert not any(m._forward_pre_hooks for m in t.modules())  # the forward's PaddingAware is gone again


def test_copy_keeps_other_hooks_weight_norm_in_tcn():
    "tsai's TCN uses weight norm (a forward pre-hook): the copy keeps it, after a forward with gradients too."
    from tsai.models.TCN import TCN
    torch.manual_seed(0)
    model = TCN(1, 2, layers=[8, 8])
    model(torch.randn(2, 1, 30)).sum().backward()  # leaves each conv's `weight` with a gradient history
    bb = split_backbone(model)
    t = EMATeacher(bb, None)
    wn = [m for m in t.modules() if hasattr(m, 'weight_g')]
    assert wn and all(len(m._forward_pre_hooks) == 1 for m in wn)
    assert all(len(m._forward_pre_hooks) == 1 for m in bb.modules() if hasattr(m, 'weight_g'))  # the student's kept
    x = torch.randn(3, 1, 30)
    torch.testing.assert_close(t.eval()(x), bb.eval()(x).detach())  # the same function as the student
    with torch.no_grad():
        for p in bb.parameters(): p.mul_(1.5)
    t.update(bb, 0.)  # momentum 0: the teacher becomes the student, through weight_g / weight_v
    torch.testing.assert_close(t(x), bb(x).detach())
