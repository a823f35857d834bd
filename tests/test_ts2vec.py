"""Tests of tsai_ssl.tasks.ts2vec: overlapping crops aligned on the overlap, layout-preserving augmentations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import poisson_series
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl.augment import RandomCrop, gather_segments
from tsai_ssl.data import get_ssl_dls
from tsai_ssl.tasks.ts2vec import TS2VecPretrain


def _padded(X):
    L = max(x.shape[-1] for x in X)
    x = torch.zeros(len(X), X[0].shape[0], L)
    for i, s in enumerate(X): x[i, :, :s.shape[-1]] = torch.from_numpy(s)
    return x, torch.arange(L)[None] < torch.tensor([s.shape[-1] for s in X])[:, None]


def _series(n=24, lo=16, hi=48, seed=0):
    return poisson_series(n, lo, hi, seed)


def test_ts2vec_views_align_on_overlap():
    X = _series(8)
    x, mask = _padded(X)
    task = TS2VecPretrain(augs=[])
    (xb, mb, _), (ov,) = task.make_batch(x, mask, x, torch.Generator().manual_seed(1))
    n = len(X)
    # the overlapping parts of the two crops, aligned with gather_segments, are the same original steps
    o1, om = gather_segments(xb[:n], ov[:, 0], ov[:, 2])
    o2, _ = gather_segments(xb[n:], ov[:, 1], ov[:, 2])
    assert torch.equal(o1, o2) and (om.sum(1) == ov[:, 2]).all() and (ov[:, 2] >= 2).all()
    with pytest.raises(ValueError, match='layout'): TS2VecPretrain(augs=[RandomCrop()])



def test_ts2vec_fit_restores_and_reports_contrast_acc(tmp_path):
    X = _series()
    cb = TS2VecPretrain(proj_dim=16, save_as='ts2vec')
    learn = ts_learner(get_ssl_dls(X, bs=8, splits=(list(range(16)), list(range(16, 24)))), ResNetPlus, nf=8, cbs=cb)
    model = learn.model
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert learn.model is model and (tmp_path / 'models' / 'ts2vec.pth').exists()
    names = list(learn.recorder.metric_names)
    assert 'contrast_acc' in names and np.isfinite(learn.recorder.values[-1]).all()
