"""Tests of tsai_ssl.tasks.contrastive (NT-Xent) and tsai_ssl.tasks.two_view: views, fits, Learner restoration,
saved weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import poisson_series
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl.augment import RandomCrop, Scaling
from tsai_ssl.backbone import split_backbone
from tsai_ssl.data import get_ssl_dls
from tsai_ssl.embed import get_embeddings
from tsai_ssl.padding import PaddingAware, clean_input
from tsai_ssl.tasks.base import PretextModel
from tsai_ssl.tasks.contrastive import ContrastivePretrain, ProjectionHead
from tsai_ssl.tasks.ts2vec import TS2VecPretrain
from tsai_ssl.tasks.two_view import contrastive_correct, stack_views


def _series(n=24, lo=16, hi=48, seed=0):
    return poisson_series(n, lo, hi, seed)


def _padded(X):
    L = max(x.shape[-1] for x in X)
    x = torch.zeros(len(X), X[0].shape[0], L)
    for i, s in enumerate(X): x[i, :, :s.shape[-1]] = torch.from_numpy(s)
    return x, torch.arange(L)[None] < torch.tensor([s.shape[-1] for s in X])[:, None]


class UserNet(nn.Module):
    "The user story's model: encoder Conv1d(1, 64, 1) -> conv body -> x.mean(-1) -> Linear."

    def __init__(self, c_out=2):
        super().__init__()
        self.encoder = nn.Conv1d(1, 64, 1)
        self.body = nn.Sequential(nn.Conv1d(64, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
                                  nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Linear(32, c_out)

    def forward(self, x): return self.fc(self.body(self.encoder(x)).mean(-1))


# ----------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------
def test_make_batch_two_views_one_forward():
    X = _series(6)
    x, mask = _padded(X)
    x = x.masked_fill(~mask[:, None], float('nan'))  # garbage (NaN) at padded steps must not reach the model
    task = ContrastivePretrain()
    g = torch.Generator().manual_seed(0)
    xc, mc = clean_input(x, mask)  # what the base task's before_batch hands to make_batch
    (xb, mb, hm), (tgt,) = task.make_batch(xc, mc, x, g)
    assert xb.shape[0] == 12 and mb.shape == (12, xb.shape[-1]) and mb.dtype == torch.bool and hm is mb
    assert not torch.isnan(xb).any()
    assert (xb.masked_select(~mb[:, None]) == 0).all()
    lens = mb.sum(1)
    full = mask.sum(1)
    full = torch.cat([full, full])
    assert (lens <= full).all() and (lens >= (full * 0.5).floor()).all() and (lens < full).any()
    assert tgt.tolist() == list(range(6, 12)) + list(range(6))  # the metric reads the positives' rows
    # tsai-style NaN padding without a mask: the mask comes from the NaN
    xc2, mc2 = clean_input(x, None)
    (xb2, mb2, _), _ = task.make_batch(xc2, mc2, x, torch.Generator().manual_seed(0))
    assert not torch.isnan(xb2).any() and torch.equal(mb2, mb)


def test_metric_reads_the_targets():
    "contrast_acc scores each anchor against the row its target names (the targets are not decoration)."
    z = torch.eye(6)[:3] * 5
    pred = torch.cat([z, z])
    task = ContrastivePretrain()
    right = torch.tensor([3, 4, 5, 0, 1, 2])
    assert task._correct(pred, right)[0].item() == 6
    assert task._correct(pred, right.roll(1))[0].item() == 0


def test_default_views_are_halves():
    "Two random halves of each series: the stacked views of an unpadded batch cost one batch, and carry no padding."
    x = torch.from_numpy(np.stack(poisson_series(4, 40, 41))).float()
    task = ContrastivePretrain()
    (xb, mb, _), _ = task.make_batch(x, None, x, torch.Generator().manual_seed(0))
    assert xb.shape == (8, 1, 20) and mb.all()
    assert not torch.equal(xb[0], xb[4])  # the two views of a series differ
    # with padding, each view is half of its own series
    X = _series(6)
    xp, mask = _padded(X)
    (_, mb2, _), _ = ContrastivePretrain().make_batch(xp, mask, xp, torch.Generator().manual_seed(0))
    half = torch.maximum(torch.round(mask.sum(1) * 0.5), mask.sum(1).clamp(max=8)).long()
    assert torch.equal(mb2.sum(1), torch.cat([half, half]))


@pytest.mark.parametrize('Task', [ContrastivePretrain, TS2VecPretrain])
def test_window_cuts_long_series(Task):
    X = _series(6, lo=10, hi=60)
    x, mask = _padded(X)
    task = Task(window=12, augs=[])
    (xb, mb, _), _ = task.make_batch(x, mask, x, torch.Generator().manual_seed(0))
    assert xb.shape[-1] <= 12 and (mb.sum(1) <= torch.cat([mask.sum(1)] * 2)).all()
    # a window of the series: its values are a contiguous run of the original ones
    s, m = X[0][0], int(mb[0].sum())
    assert any(np.array_equal(s[i:i + m], xb[0, 0, :m].numpy()) for i in range(len(s) - m + 1))


def test_stack_views_pads_to_longer():
    a, b = torch.ones(2, 1, 5), torch.ones(2, 1, 7)
    xb, mb = stack_views(a, None, b, torch.tensor([[True] * 7, [True] * 3 + [False] * 4]))
    assert xb.shape == (4, 1, 7) and mb.sum(1).tolist() == [5, 5, 7, 3]
    assert (xb[:2, :, 5:] == 0).all()


def test_contrastive_correct():
    z = torch.eye(6)[:3] * 5
    assert contrastive_correct(torch.cat([z, z]))[0].item() == 6
    assert contrastive_correct(torch.cat([z, z.roll(1, 0)]))[0].item() == 0


def test_single_series_batch_warns():
    task = ContrastivePretrain()
    with pytest.warns(UserWarning, match='single series'):
        assert task.loss(torch.randn(2, 4), torch.tensor([1, 0])).item() == 0


# ----------------------------------------------------------------------------------------------------
# fits
# ----------------------------------------------------------------------------------------------------
def _dls(X, bs=8):
    n = len(X)
    return get_ssl_dls(X, bs=bs, splits=(list(range(n - 8)), list(range(n - 8, n))))


def _check_fit_and_restore(learn, cb):
    model, loss_func, metrics, opt_len = learn.model, learn.loss_func, list(learn.metrics), None
    learn.create_opt()
    opt_len = len(learn.opt.param_lists[-1])
    nf = split_backbone(model).nf
    cb.pretext_head = cb.make_head(nf, 1)  # built now (instead of in before_fit) to compare its weights afterwards
    head0 = [p.detach().clone() for p in cb.pretext_head.parameters()]
    bb0 = {k: v.clone() for k, v in split_backbone(model).state_dict().items()}
    learn.fit(1, 1e-3)
    assert learn.model is model and learn.loss_func is loss_func
    assert len(learn.metrics) == len(metrics) and all(a is b for a, b in zip(learn.metrics, metrics))
    assert len(learn.opt.param_lists[-1]) == opt_len  # the projection head left the optimizer
    assert not any(isinstance(m, (ProjectionHead,)) for m in learn.model.modules())
    assert any(not torch.equal(a, b) for a, b in zip(head0, cb.pretext_head.parameters()))  # the head trained
    bb1 = split_backbone(model).state_dict()
    assert any(not torch.equal(bb0[k], bb1[k]) for k in bb0 if bb0[k].is_floating_point())  # the backbone trained
    names = list(learn.recorder.metric_names)
    assert 'contrast_acc' in names
    vals = learn.recorder.values[-1]
    assert all(np.isfinite(v) for v in vals[:names.index('contrast_acc')])
    # no hooks or patched layers are left on the classifier
    assert not any(m._forward_pre_hooks or 'forward' in m.__dict__ for m in learn.model.modules())


def test_ntxent_fit_resnetplus_restores_and_saves(tmp_path):
    X = _series()
    cb = ContrastivePretrain(save_as='ssl_resnet', temperature=0.2, proj_dim=16)
    learn = ts_learner(_dls(X), ResNetPlus, nf=8, cbs=cb, path=tmp_path)
    _check_fit_and_restore(learn, cb)
    path = tmp_path / 'models' / 'ssl_resnet.pth'
    assert path.exists() and cb.saved_paths == [path]
    saved = torch.load(path, weights_only=True)
    # load into a fresh classifier with another class count (the head is new, the backbone pretrained)
    y = np.arange(len(X)) % 3
    clf = ts_learner(get_ssl_dls(X, y, bs=8), ResNetPlus, nf=8, path=tmp_path)
    assert clf.model.head[-1].out_features == 3
    clf.load('ssl_resnet', strict=False)
    state = clf.model.state_dict()
    assert saved and all(torch.equal(state[k].cpu(), v) for k, v in saved.items())
    assert set(saved) == set(split_backbone(clf.model).state_dict())
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in saved.items())


def test_ntxent_fit_user_module_and_padding_invariant_projection(tmp_path):
    X = _series(seed=2)
    torch.manual_seed(0)
    cb = ContrastivePretrain(proj_dim=16)
    learn = Learner(_dls(X), UserNet(), loss_func=CrossEntropyLossFlat(), cbs=cb, path=tmp_path)
    _check_fit_and_restore(learn, cb)
    # the representation the task contrasts is the same for a series alone and padded in a batch (eval mode)
    bb = split_backbone(learn.model)
    x, mask = _padded(X[:6])
    with torch.no_grad(), PaddingAware(bb) as pa:
        pm = PretextModel(bb, cb.pretext_head, pa).eval()
        batched = pm(x, mask, mask)
        alone = torch.cat([pm(torch.from_numpy(s)[None], None, None) for s in X[:6]])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    emb = get_embeddings(learn.model, X[:6], progress=False)  # get_embeddings pools the same features
    torch.testing.assert_close(cb.pretext_head.eval()(torch.from_numpy(emb)[..., None]), alone, atol=1e-5, rtol=1e-5)


def _easy_series(n, L=32, seed=0):
    "Each series a distinct sinusoid (frequency and phase) plus a little noise: easy to tell apart."
    rng = np.random.default_rng(seed)
    t = np.arange(L)
    return [(np.sin(t * rng.uniform(0.2, 1.5) + rng.uniform(0, 6)) * 2 + rng.normal(0, .1, L))[None].astype(np.float32)
            for _ in range(n)]


@pytest.mark.parametrize('Task', [TS2VecPretrain, ContrastivePretrain])
def test_loss_decreases_on_easy_case(Task):
    torch.manual_seed(0)
    X = _easy_series(8)
    augs = [Scaling(0.1)] if Task is TS2VecPretrain else [RandomCrop(0.6, 1.0, min_len=8), Scaling(0.1)]
    cb = Task(augs=augs, proj_dim=16)
    idx = list(range(8))  # validate on the training series: fixed views, comparable across epochs
    learn = ts_learner(get_ssl_dls(X, bs=8, splits=(idx, idx)), ResNetPlus, nf=8, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(6, 1e-2)
    valid = [v[1] for v in learn.recorder.values]
    assert np.isfinite(valid).all()
    assert valid[-1] < valid[0] - 0.02, valid
