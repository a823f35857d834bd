"""Tests of tsai_ssl.tasks.vae: the KL and the ELBO against hand-computed values, the KL warm-up, padding ignored, and a
fit that restores the Learner, uses its latent and transfers its backbone."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import ar_counts, poisson_series
from helpers import assert_restored, fit_quiet, learner_state
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import VAEPretrain, get_ssl_dls, load_pretrained
from tsai_ssl.backbone import split_backbone
from tsai_ssl.padding import PaddingAware
from tsai_ssl.tasks.base import PretextModel
from tsai_ssl.tasks.vae import VAEHead, gaussian_kl, negative_elbo


@pytest.mark.parametrize('mu, logvar, want', [(0., 0., 0.), (1., 0., 0.5), (0., math.log(2.), 0.5 * (1 - math.log(2.))),
                                              (-2., math.log(0.5), 0.5 * (4 + 0.5 - 1 - math.log(0.5)))])
def test_gaussian_kl_closed_form(mu, logvar, want):
    assert gaussian_kl(torch.tensor([[mu]]), torch.tensor([[logvar]])).item() == pytest.approx(want, rel=1e-6)


def test_negative_elbo_by_hand():
    nll = torch.tensor([[1., 2., 0.], [3., 0., 0.]])  # 3 real values (the zeros are padded steps)
    kl = torch.tensor([[0.2, 0.00], [0.4, 0.02]])     # per series, per dimension: batch means 0.3 and 0.01
    # (6 + beta * 2 * (0.3 + 0.01)) / 3, and with free bits 0.1 the second dimension counts 0.1
    assert negative_elbo(nll, kl, 3, beta=1.).item() == pytest.approx((6 + 2 * 0.31) / 3)
    assert negative_elbo(nll, kl, 3, beta=0.5, free_bits=0.1).item() == pytest.approx((6 + 0.5 * 2 * 0.4) / 3)
    assert negative_elbo(nll, kl, 3, beta=0.).item() == pytest.approx(2.)


def test_task_loss_by_hand_categorical():
    "One series of 3 real steps (+1 padded), 3 values, a 1-d latent: the loss is the per-value NLL plus the KL share."
    task = VAEPretrain(n_values=3, latent_dim=1, kl_warmup=0., free_bits=0.)
    logits = torch.tensor([[[2., 0., 1., 9.], [0., 1., 0., 9.], [0., 0., 0., 9.]]])  # (1, V=3, L=4), C=1
    tgt = torch.tensor([[[0, 1, 2, 0]]])
    mask = torch.tensor([[True, True, True, False]])
    mu, logvar = torch.tensor([[0.5]]), torch.tensor([[0.]])
    lse = [math.log(math.exp(2) + 1 + 1), math.log(1 + math.e + 1), math.log(math.e + 1 + 1)]
    nll = (lse[0] - 2) + (lse[1] - 1) + (lse[2] - 0)  # the target logit at each step: 2, 1, 0
    want = (nll + 0.5 * 0.25) / 3
    assert task.loss((logits, mu, logvar), tgt, mask).item() == pytest.approx(want, rel=1e-5)


def test_task_loss_by_hand_gaussian():
    task = VAEPretrain(n_values=None, latent_dim=1, kl_warmup=0., free_bits=0.)
    out = torch.tensor([[[0., 1.], [0., math.log(2.)]]])  # mean (0, 1), log-scale (0, log 2)
    x = torch.tensor([[[1., 1.]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    c = 0.5 * math.log(2 * math.pi)
    want = ((c + 0 + 0.5) + (c + math.log(2.) + 0)) / 2
    assert task.loss((out, torch.zeros(1, 1), torch.zeros(1, 1)), x, mask).item() == pytest.approx(want, rel=1e-5)


class _FakeLearn:
    def __init__(self, pct, training): self.pct_train, self.training = pct, training


@pytest.mark.parametrize('pct, training, want', [(0., True, 0.), (0.15, True, 1.), (0.3, True, 2.), (0.9, True, 2.),
                                                 (0., False, 2.)])
def test_kl_warmup_schedule(pct, training, want):
    task = VAEPretrain(beta=2., kl_warmup=0.3)
    task.learn = _FakeLearn(pct, training)
    assert task.current_beta() == pytest.approx(want)
    task.kl_warmup = 0.
    assert task.current_beta() == 2.


def test_padding_is_ignored():
    "Eval mode: a series' latent and its decoded steps are the same alone as padded in a batch."
    torch.manual_seed(0)
    bb = split_backbone(ResNetPlus(1, 2, nf=8))
    head = VAEHead(bb.nf, 41, latent_dim=4).eval()
    X = poisson_series(4, 20, 50)
    L = max(s.shape[-1] for s in X)
    x = torch.zeros(len(X), 1, L)
    for i, s in enumerate(X): x[i, :, :s.shape[-1]] = torch.from_numpy(s)
    mask = torch.arange(L)[None] < torch.tensor([s.shape[-1] for s in X])[:, None]
    with torch.no_grad(), PaddingAware(bb) as pa:
        pm = PretextModel(bb, head, pa).eval()
        out, mu, _ = pm(x, mask, mask)
        for i, s in enumerate(X):
            o1, m1, _ = pm(torch.from_numpy(s)[None], None, None)
            torch.testing.assert_close(mu[i:i + 1], m1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[i:i + 1, :, :s.shape[-1]], o1, atol=1e-5, rtol=1e-5)
    task = VAEPretrain(n_values=41, latent_dim=4)
    tgt = torch.randint(0, 41, (len(X), 1, L))
    loss = task.loss((out, mu, torch.zeros_like(mu)), tgt, mask)
    tgt2 = tgt.masked_fill(~mask[:, None], 7)  # other values at padded steps change nothing
    assert task.loss((out, mu, torch.zeros_like(mu)), tgt2, mask).item() == pytest.approx(loss.item())


def test_fit_restores_uses_the_latent_and_transfers(tmp_path):
    X, _ = ar_counts(48, min_len=48, max_len=120)
    dls = get_ssl_dls(X, splits=(range(32), range(32, 48)), bs=8, drop_last=True)
    task = VAEPretrain(n_values=41, latent_dim=8, save_as='vae', save='last')
    learn = ts_learner(dls, ResNetPlus, nf=8, cbs=task, path=tmp_path)
    state = learner_state(learn)
    fit_quiet(learn, 10, lr=3e-3)
    assert_restored(learn, state)
    names = list(learn.recorder.metric_names[1:-1])
    vals = learn.recorder.values
    recon = [v[names.index('recon_nll')] for v in vals]
    assert recon[-1] < recon[0] < math.log(41) + 0.5  # learning; started near the uniform 41-way NLL
    kl = [v[names.index('kl')] for v in vals]
    # the latent carries information: after the warm-up the KL grows again, under the full beta (collapse: ~0)
    assert kl[-1] > 0.2 and kl[-1] > min(kl) + 0.1, kl
    clf = ts_learner(get_ssl_dls(X[:16], [i % 2 for i in range(16)], bs=8), ResNetPlus, nf=8, path=tmp_path)
    assert load_pretrained(clf, 'vae').transferred
    want = split_backbone(learn.model).state_dict()
    assert all(torch.equal(want[k], v) for k, v in split_backbone(clf.model).state_dict().items())
    fig = task.show_reconstructions(n=2, n_samples=1, path=tmp_path / 'vae.png')
    assert (tmp_path / 'vae.png').stat().st_size > 1000 and len(fig.axes) == 3
    s = task.sample(3, length=40)
    assert s.shape == (3, 1, 40) and s.min() >= 0 and s.max() <= 40
    assert not any(m._forward_pre_hooks or 'forward' in m.__dict__ for m in learn.model.modules())


def test_arguments_are_checked():
    for kw, msg in [(dict(n_values=1), 'n_values'), (dict(latent_dim=0), 'latent_dim'), (dict(beta=-1), 'beta'),
                    (dict(kl_warmup=2), 'kl_warmup')]:
        with pytest.raises(ValueError, match=msg): VAEPretrain(**kw)
    with pytest.raises(RuntimeError, match='fit the Learner'): VAEPretrain().sample()
