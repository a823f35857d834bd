"""Tests of tsai_ssl.tasks.byol: what the teacher copies, BYOL's momentum schedule during a fit, and no collapse on a
toy set. (The EMA update itself is tested once, in test_ema; resuming, determinism, autocast and MemorySaver for
every task in their own files.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_restored, fit_quiet, learner_state
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import BYOLPretrain, get_ssl_dls
from tsai_ssl.augment import RandomCrop, Scaling
from tsai_ssl.ema import EMATeacher
from tsai_ssl.tasks.byol import BYOLHead
from tsai_ssl.tasks.contrastive import ProjectionHead


def _easy_series(n, L=48, seed=0):
    "Each series a distinct sinusoid (frequency and phase) plus a little noise."
    rng = np.random.default_rng(seed)
    t = np.arange(L)
    return [(np.sin(t * rng.uniform(0.2, 1.5) + rng.uniform(0, 6)) * 2 + rng.normal(0, .1, L))[None].astype(np.float32)
            for _ in range(n)]


def test_teacher_copies_backbone_and_projector_and_follows_the_cosine(monkeypatch):
    momenta = []
    orig = EMATeacher.update
    def spy(self, student, momentum):
        momenta.append(momentum); return orig(self, student, momentum)
    monkeypatch.setattr(EMATeacher, 'update', spy)
    X = _easy_series(24)
    task = BYOLPretrain(proj_dim=8, pred_hidden=16, momentum=0.9)
    learn = ts_learner(get_ssl_dls(X, splits=(range(16), range(16, 24)), bs=8, drop_last=True), ResNetPlus, nf=8,
                       cbs=task)
    state = learner_state(learn)
    fit_quiet(learn, 3)
    assert_restored(learn, state)
    assert isinstance(task.pretext_head, BYOLHead) and type(task.teacher.head) is ProjectionHead  # no predictor
    assert len(momenta) == 3 * 2  # one update per optimizer step
    assert momenta[0] == pytest.approx(0.9, abs=0.01) and momenta[-1] > 0.99 and momenta == sorted(momenta)
    assert 'embed_std' in learn.recorder.metric_names


def test_no_collapse_on_a_toy_set():
    "Trained on distinct sinusoids, the normalised projections spread out across series (collapse would give 0)."
    torch.manual_seed(0)
    X = _easy_series(32)
    d = 16
    task = BYOLPretrain(augs=[RandomCrop(0.6, 1.0, min_len=8), Scaling(0.1)], proj_dim=d, pred_hidden=32)
    learn = ts_learner(get_ssl_dls(X, splits=(range(32), range(32)), bs=16, drop_last=True), ResNetPlus, nf=16,
                       cbs=task)
    fit_quiet(learn, 10, lr=3e-3)
    names = list(learn.recorder.metric_names[1:-1])
    vals = np.array([row for row in learn.recorder.values], dtype=float)
    std = vals[:, names.index('embed_std')]
    loss = vals[:, names.index('valid_loss')]
    # spread-out unit vectors have a std of about 1/sqrt(d) per dimension, a collapsed (constant) output 0; at the
    # start the untrained teacher's projections are close together, and training spreads them
    assert std[-1] > 0.2 / np.sqrt(d) and std[-1] > 2 * std[0], std
    assert loss[-1] < loss[0]
