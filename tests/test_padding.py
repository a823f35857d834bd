import numpy as np
import pytest
import torch
from conftest import poisson_series
from fastai.metrics import accuracy
from helpers import fit_quiet
from tsai.learner import ts_learner
from tsai.models.InceptionTimePlus import InceptionTimePlus
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import IgnorePadding, get_ssl_dls
from tsai_ssl.data import batch_pad_mask


def _randomize_bn(model):
    "Non-trivial running statistics, so padded steps hold non-zero activations in eval mode."
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_get_preds_do_not_depend_on_batch_neighbours():
    "IgnorePadding: padded batches (test_dl(exact=False)) give every series the prediction it gets alone."
    X = poisson_series(12, 20, 120)
    y = np.arange(12) % 3
    for arch in (ResNetPlus, InceptionTimePlus):
        learn = ts_learner(get_ssl_dls(X, y, bs=4), arch, metrics=accuracy, cbs=IgnorePadding())
        fit_quiet(learn, 1)
        _randomize_bn(learn.model)
        new = poisson_series(6, 20, 200, seed=5)
        alone, _ = learn.get_preds(dl=learn.dls.test_dl(new, bs=1))
        batched, _ = learn.get_preds(dl=learn.dls.test_dl(new, bs=6, exact=False))
        assert torch.allclose(alone, batched, atol=1e-5)
        learn.remove_cb(IgnorePadding)
        plain, _ = learn.get_preds(dl=learn.dls.test_dl(new, bs=6, exact=False))
        assert not torch.allclose(alone, plain, atol=1e-3)  # without it, padding changes predictions
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in learn.model.modules())


def test_default_test_dl_is_independent_of_batching_without_ignore_padding():
    "Defect 8: the default test_dl batches series of one length only, so any model predicts as for a lone series."
    X = poisson_series(12, 20, 120)
    y = np.arange(12) % 3
    learn = ts_learner(get_ssl_dls(X, y, bs=4), ResNetPlus, metrics=accuracy)  # no IgnorePadding
    fit_quiet(learn, 1)
    _randomize_bn(learn.model)
    new = poisson_series(9, 20, 200, seed=5) + poisson_series(3, 50, 51, seed=6)  # 3 of one length
    dl = learn.dls.test_dl(new, bs=8)
    assert dl.pad_mask is None and all(batch_pad_mask(dl, b[0]) is None for b in dl)  # nothing is ever padded
    assert len(dl) == len(list(dl)) == len({s.shape[-1] for s in new})
    alone = torch.cat([learn.get_preds(dl=learn.dls.test_dl([s], bs=1))[0] for s in new])
    batched, _ = learn.get_preds(dl=dl)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    padded, _ = learn.get_preds(dl=learn.dls.test_dl(new, bs=8, exact=False))
    assert not torch.allclose(padded, alone, atol=1e-3)  # what the default avoids
    # labels and the data-set order survive the regrouping
    dl = learn.dls.test_dl(new, y=np.arange(12) % 3, with_labels=True, bs=8)
    _, targs = learn.get_preds(dl=dl)
    assert targs.tolist() == (np.arange(12) % 3).tolist()


def _reference_masked_bn(x, mask, weight, bias, eps=1e-5):
    "Plain autograd reference: statistics over the real steps, output everywhere."
    w = mask[:, None].to(x.dtype)
    n = w.sum()
    mean = (x * w).sum((0, 2)) / n
    var = (((x - mean[:, None]) ** 2) * w).sum((0, 2)) / n
    return (x - mean[:, None]) / torch.sqrt(var[:, None] + eps) * weight[:, None] + bias[:, None]


@pytest.mark.parametrize('lens', [[12, 12, 12], [12, 7, 3], [12, 1, 5]])
@pytest.mark.parametrize('offset', [0., 50.])
def test_masked_batch_norm_matches_reference(lens, offset):
    from tsai_ssl.padding import _MaskedBatchNorm
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 12, generator=g, dtype=torch.float64) * 2 + offset).requires_grad_()
    weight = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(12)[None] < torch.tensor(lens)[:, None]
    gy = torch.randn(3, 4, 12, generator=g, dtype=torch.float64)
    ref = _reference_masked_bn(x, mask, weight, bias)
    got, mean, var = _MaskedBatchNorm.apply(x, mask[:, None].double(), weight, bias, 1e-5)
    assert torch.allclose(got, ref, atol=1e-9)
    r = torch.autograd.grad(ref, (x, weight, bias), gy)
    o = torch.autograd.grad(got, (x, weight, bias), gy)
    assert all(torch.allclose(a, b, atol=1e-8) for a, b in zip(r, o))
    assert torch.autograd.gradcheck(lambda x, w_, b_: _MaskedBatchNorm.apply(x, mask[:, None].double(), w_, b_, 1e-5)[0],
                                    (x, weight, bias))


def test_masked_batch_norm_under_autocast():
    "Under mixed precision the statistics stay float32 (sums of squares over bs x L steps overflow in fp16)."
    from tsai_ssl.padding import _masked_batch_norm
    bn = torch.nn.BatchNorm1d(4).train()
    x = (torch.randn(2, 4, 4000) * 30).requires_grad_()  # sum of squares ~ 7e6: beyond fp16's 65504
    mask = torch.arange(4000)[None] < torch.tensor([4000, 2500])[:, None]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = _masked_batch_norm(bn, x, mask)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(bn.running_var).all()
    real = y.detach()[:, :, :2500]
    assert abs(float(real.mean())) < 0.05


def test_mask_without_padding_runs_the_plain_layers():
    "A mask with no padded step is stored as None: the native layers run, with the same result as the masked ones."
    from tsai_ssl.padding import padding_aware
    torch.manual_seed(0)
    full = torch.ones(4, 64, dtype=torch.bool)
    with padding_aware(ResNetPlus(1, 2)) as pa:
        pa.pad_mask = full
        assert pa.pad_mask is None
        pa.pad_mask = full.clone().index_fill_(1, torch.tensor([63]), False)
        assert pa.pad_mask is not None  # real padding is kept
    # the masked path with an all-real mask (forced) equals the plain forward
    from tsai_ssl.padding import _masked_batch_norm
    bn1, bn2 = torch.nn.BatchNorm1d(3).train(), torch.nn.BatchNorm1d(3).train()
    h = torch.randn(4, 3, 64)
    assert torch.allclose(_masked_batch_norm(bn1, h, full), bn2(h), atol=1e-5)
    assert torch.allclose(bn1.running_var, bn2.running_var, atol=1e-6)


def test_sync_batchnorm_is_reported_not_silently_unmasked():
    "distrib_ctx(sync_bn=True) turns BatchNorm into SyncBatchNorm, which PaddingAware cannot mask: it says so."
    from tsai_ssl.padding import padding_aware
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ResNetPlus(1, 2))
    with pytest.warns(UserWarning, match='sync_bn=False'):
        with padding_aware(model): pass
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with padding_aware(ResNetPlus(1, 2)): pass  # plain BatchNorm: no warning


def test_ignore_padding_covers_a_pretext_model_without_its_own_padding_awareness():
    "Defect 9: IgnorePadding + ContrastivePretrain(pad_aware=False) masks the views' padding in the backbone."
    from tsai_ssl import ContrastivePretrain
    from tsai_ssl.padding import PaddingAware
    calls = []
    orig = PaddingAware._mask_for
    def spy(self, x):
        m = orig(self, x)
        calls.append(m is not None)
        return m
    X = poisson_series(16, 20, 120)
    for cbs, expect in (([ContrastivePretrain(pad_aware=False)], False),
                        ([ContrastivePretrain(pad_aware=False), IgnorePadding()], True),
                        ([ContrastivePretrain()], True)):
        calls.clear()
        learn = ts_learner(get_ssl_dls(X, bs=8, splits=(range(16), [])), ResNetPlus, nf=8, cbs=cbs)
        PaddingAware._mask_for = spy
        try: fit_quiet(learn, 1)
        finally: PaddingAware._mask_for = orig
        assert any(calls) == expect, (cbs, sum(calls), len(calls))
        assert not any(m._forward_hooks or m._forward_pre_hooks or 'forward' in m.__dict__ for m in learn.model.modules())


def test_nested_contexts_keep_the_outer_registration():
    "A second PaddingAware over the same layers (LinearProbe inside a task's fit) leaves the outer one registered."
    from tsai_ssl.padding import PaddingAware, installed
    m = ResNetPlus(1, 2)
    with PaddingAware(m) as outer:
        with PaddingAware(m) as inner:
            assert installed(m) == [outer, inner]
        assert installed(m) == [outer]
    assert installed(m) == []
