"""Every public name's docstring example runs as written (the API reference shows them).

The examples use the names a reader has at hand: series `X` with labels `y`, loaders `dls_u` (unlabeled) and `dls`
(labeled), a classifier `model`, a batch `x` with its `pad_mask`, a Learner `learn` and a classifier Learner `clf`,
pretrained weights 'ssl'. They are provided here on tiny data, and every fit is cut to one epoch, so the test checks
that the code is right, not what it learns.
"""
from __future__ import annotations

import inspect
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from tsai.data.preprocessing import TSStandardize
from tsai.learner import ts_learner
from tsai.models.ResNet import ResNet
from tsai.models.ResNetPlus import ResNetPlus

import tsai_ssl
from tsai_ssl.experiment import compare
from tsai_ssl.tasks import registry


def _example(name: str) -> str:
    doc = inspect.getdoc(getattr(tsai_ssl, name)) or ''
    section = re.search(r'^Example:\n((?:    .*\n?|\n)+)', doc, re.M).group(1)
    return re.search(r'```python\n(.*?)```', inspect.cleandoc(section), re.S).group(1)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "The names the examples use, on tiny data, in a folder of their own (they write models/, corpus files)."
    folder = tmp_path_factory.mktemp('examples')
    old = os.getcwd()
    os.chdir(folder)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    X = [rng.integers(0, 41, (1, n)).astype(np.uint8) for n in rng.integers(64, 160, 40)]
    y = np.arange(40) % 2
    splits = (list(range(32)), list(range(32, 40)))
    ns = {k: getattr(tsai_ssl, k) for k in tsai_ssl.__all__}
    ns.update(np=np, torch=torch, nn=nn, Callback=Callback, accuracy=accuracy, TSStandardize=TSStandardize,
              ts_learner=ts_learner, ResNet=ResNet, ResNetPlus=ResNetPlus, compare=compare,
              X=X, y=y, splits=splits, series=X, X_new=X[:6], X_unlabeled=X, X_few=X[:12], y_few=y[:12],
              X_tr=X[:20], y_tr=y[:20], X_te=X[20:], y_te=y[20:], X_test=X[20:], y_test=y[20:])
    ns['dls_u'] = tsai_ssl.get_ssl_dls(X, splits=splits, bs=8, batch_tfms=[TSStandardize()])
    ns['dls'] = tsai_ssl.get_ssl_dls(X, y, bs=8, batch_tfms=[TSStandardize()])
    pre = ts_learner(ns['dls_u'], ResNetPlus, cbs=tsai_ssl.MaskedValuePretrain(save_as='ssl', save='last'))
    pre.fit(1)
    ns['learn'] = ts_learner(ns['dls'], ResNetPlus, metrics=accuracy)
    ns['clf'] = ts_learner(ns['dls'], ResNetPlus, metrics=accuracy)
    model = ResNetPlus(1, 2)
    ns.update(model=model, backbone=tsai_ssl.split_backbone(model), loss_func=CrossEntropyLossFlat(),
              xb=torch.randn(4, 1, 96), yb=torch.tensor([0, 1, 0, 1]), fill=-1.)
    L = 96
    ns['x'] = torch.randn(4, 1, L)
    ns['pad_mask'] = torch.arange(L)[None] < torch.tensor([96, 80, 50, 20])[:, None]
    yield folder, ns
    os.chdir(old)


@pytest.mark.parametrize('name', tsai_ssl.__all__)
def test_docstring_example_runs(name, env, monkeypatch):
    folder, ns = env
    monkeypatch.chdir(folder)  # conftest puts every test in its own folder: the examples share the fixture's
    fit_one_cycle = Learner.fit_one_cycle

    def one_epoch(self, n_epoch, *args, **kwargs): return fit_one_cycle(self, min(n_epoch, 1), *args, **kwargs)

    monkeypatch.setattr(Learner, 'fit_one_cycle', one_epoch)
    monkeypatch.setattr(registry, '_TASKS', dict(registry._TASKS))  # an example may define (and register) a task
    monkeypatch.setattr(registry, '_ALIASES', dict(registry._ALIASES))
    exec(compile(_example(name), f'{name} example', 'exec'), dict(ns))
