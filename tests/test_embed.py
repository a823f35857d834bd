"""Tests of tsai_ssl.embed: padding-aware embeddings, the linear probe and the LinearProbe callback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import poisson_series
from tsai.data.preprocessing import TSStandardize
from tsai.learner import ts_learner
from tsai.models.layers import Conv1d as TsaiConv1d
from tsai.models.layers import Pad1d
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl.data import get_ssl_dls
from tsai_ssl.embed import LinearProbe, get_embeddings, linear_probe
from tsai_ssl.padding import padding_aware


def _series(n=20, lo=10, hi=70, seed=0):
    return poisson_series(n, lo, hi, seed)


def _randomize_bn(model):
    "Non-trivial BatchNorm statistics and shifts, so padded steps hold non-zero activations in eval mode."
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


class UserNet(nn.Module):
    "encoder -> conv body (odd/even kernels, explicit padding layer, max pooling) -> mean over time -> linear"

    def __init__(self, c_out=3):
        super().__init__()
        self.encoder = nn.Conv1d(1, 16, 1)
        self.body = nn.Sequential(nn.Conv1d(16, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                                  nn.MaxPool1d(3, 1, 1), nn.Conv1d(16, 16, 4, padding='same'), nn.ReLU(),
                                  nn.ConstantPad1d((1, 1), 0.), nn.Conv1d(16, 16, 3), nn.BatchNorm1d(16))
        self.fc = nn.Linear(16, c_out)

    def forward(self, x): return self.fc(self.body(self.encoder(x)).mean(-1))


def tsai_sequential():
    "tsai's even-kernel 'same' convolution (SameConv1d pads inside its forward) and Pad1d in an nn.Sequential."
    return nn.Sequential(TsaiConv1d(1, 8, 4), nn.BatchNorm1d(8), nn.ReLU(), TsaiConv1d(8, 8, 6), nn.BatchNorm1d(8),
                         Pad1d((2, 1), 1.), nn.Conv1d(8, 8, 4), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3))


@torch.no_grad()
@pytest.mark.parametrize('make', [lambda: ResNetPlus(1, 3, nf=8), UserNet, tsai_sequential],
                         ids=['ResNetPlus', 'user_module', 'tsai_sequential'])
@pytest.mark.parametrize('pool', ['mean', 'meanmax'])
def test_padding_invariance(make, pool):
    torch.manual_seed(0)
    model = _randomize_bn(make())
    X = _series()
    alone = np.stack([get_embeddings(model, [x], pool=pool, progress=False)[0] for x in X])
    batched = get_embeddings(model, X, bs=7, pool=pool, progress=False)  # bucketed, padded, back in input order
    assert batched.shape == (len(X), alone.shape[1])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=1e-5)
    # the test means something: without padding awareness the short series' embeddings change
    leaky = get_embeddings(model, X, bs=7, pool=pool, progress=False, pad_aware=False)
    assert np.abs(leaky - alone).max() > 1e-3
    assert not model.training


def test_masked_batchnorm_ignores_padding_in_training():
    torch.manual_seed(0)
    model = UserNet()
    x = torch.randn(3, 1, 30)
    mask = torch.arange(30)[None] < torch.tensor([[30], [12], [20]])
    garbage = x.masked_fill(~mask[:, None], 100.)
    outs, stats = [], []
    for inp in (x.masked_fill(~mask[:, None], 0.), garbage):
        m = UserNet(); m.load_state_dict(model.state_dict()); m.train()
        with padding_aware(m) as pa:
            pa.pad_mask = mask
            outs.append(m.body(m.encoder(inp)))
        stats.append(m.body[1].running_mean.clone())
    keep = mask[:, None].expand_as(outs[0])
    torch.testing.assert_close(outs[0][keep], outs[1][keep])
    torch.testing.assert_close(stats[0], stats[1])
    # and the layers are restored on exit: the forward is the model's own again
    assert 'forward' not in m.body[1].__dict__ and not m.body[0]._forward_pre_hooks


def test_inputs_learner_dataloader_nan_padded():
    X = _series(12, seed=1)
    dls = get_ssl_dls(X, bs=4, batch_tfms=TSStandardize(mean=2., std=4.), max_len=16)
    learn = ts_learner(dls, ResNetPlus, nf=8)
    _randomize_bn(learn.model)
    direct = get_embeddings(learn.model, [(x - 2.) / 4. for x in X], bs=5, progress=False)
    np.testing.assert_allclose(get_embeddings(learn, X, bs=5, progress=False), direct, atol=1e-5)  # batch tfms applied
    # the (shuffled, cropping) training loader: re-made unshuffled and uncropped, rows in dataset order
    np.testing.assert_allclose(get_embeddings(learn, dls.train, progress=False), direct, atol=1e-5)
    # a tsai-style NaN-padded array gives the same as the list of series
    L = max(x.shape[-1] for x in X)
    arr = np.full((len(X), 1, L), np.nan, dtype=np.float32)
    for i, x in enumerate(X): arr[i, :, :x.shape[-1]] = (x - 2.) / 4.
    np.testing.assert_allclose(get_embeddings(learn.model, arr, bs=5, progress=False), direct, atol=1e-5)
    # a plain torch DataLoader yielding NaN-padded batches in order
    tdl = torch.utils.data.DataLoader(torch.from_numpy(arr), batch_size=5)
    np.testing.assert_allclose(get_embeddings(learn.model, tdl, progress=True), direct, atol=1e-5)
    assert get_embeddings(learn.model, X[:4], pool='max', progress=False).shape == (4, 16)
    with pytest.raises(ValueError, match='pool'): get_embeddings(learn.model, X[:2], pool='median')


def test_linear_probe_beats_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    emb = rng.normal(size=(200, 8)) + 3. * np.eye(3, 8)[y] * 1000  # separable, badly scaled: standardization needed
    acc = linear_probe(emb[:100], y[:100], emb[100:], y[100:])
    assert acc > 0.9
    noise = linear_probe(rng.normal(size=(100, 8)), y[:100], rng.normal(size=(100, 8)), y[100:])
    assert noise < 0.6


def _labeled(n, seed):
    "Two easy classes: flat noise vs a strong oscillation."
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = [(rng.normal(size=(1, L)) + c * 3 * np.sin(np.arange(L) / 2.)).astype(np.float32)
         for c, L in zip(y, rng.integers(20, 40, n))]
    return X, y


@pytest.mark.parametrize('held_out', [True, False])
def test_linear_probe_callback_reports(held_out):
    X, y = _labeled(24, seed=0)
    Xe, ye = _labeled(10, seed=1)
    probe = LinearProbe(X, y, Xe, ye, every=2) if held_out else LinearProbe(X, y, every=2, cv=3)
    dls = get_ssl_dls(X, y, splits=(list(range(16)), list(range(16, 24))), bs=8)
    learn = ts_learner(dls, ResNetPlus, nf=8, cbs=probe)
    metrics = list(learn.metrics)
    learn.fit(3, 1e-3)
    names = list(learn.recorder.metric_names)
    assert 'probe_acc' in names
    col = [v[names.index('probe_acc') - 1] for v in learn.recorder.values]
    assert col[0] is None and isinstance(col[1], float) and isinstance(col[2], float)  # every 2 epochs, and the last
    assert [e for e, _ in probe.history] == [1, 2]
    assert probe.history[-1][1] > 0.5  # easy classes: beats chance even with a barely trained backbone
    assert list(learn.metrics) == metrics  # the probe metric is gone after fit


def test_linear_probe_callback_validates_args():
    X, y = _labeled(6, seed=0)
    with pytest.raises(ValueError, match='2 classes'): LinearProbe(X, np.zeros(6))
    with pytest.raises(ValueError, match='per class'): LinearProbe(X[:3], [0, 0, 1])
    with pytest.raises(ValueError, match='both'): LinearProbe(X, y, X_eval=X)
