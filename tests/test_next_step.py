import pytest
import torch
from helpers import RaiseAt, Spy, assert_restored, fit_quiet, learner_state, unlabeled_dls
from test_backbone import UserNet
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus
from tsai.models.utils import build_ts_model

from tsai_ssl import NextStepPretrain
from tsai_ssl.tasks.targets import IGNORE


def test_targets_are_next_raw_integers_and_ignore_padding():
    task = NextStepPretrain(horizon=2, steps=1.)
    task.make_head(8, 1)
    raw = torch.randint(0, 41, (3, 1, 20)).float()
    pad = torch.arange(20)[None] < torch.tensor([20, 15, 9])[:, None]
    x = (raw - 20) / 7  # the model sees normalised input
    (xi, _), (tgt, cur) = task.make_batch(x, pad, raw, None)
    assert torch.equal(xi, x)
    for i, L in enumerate([20, 15, 9]):
        for k in (1, 2):
            assert torch.equal(tgt[i, k - 1, 0, :L - k], raw[i, 0, k:L].long())
            assert (tgt[i, k - 1, 0, L - k:] == IGNORE).all()  # no target beyond the series end / in padding


def test_loss_matches_reference():
    task = NextStepPretrain(horizon=1, steps=1.)
    task.make_head(8, 1)
    raw = torch.randint(0, 41, (2, 1, 12)).float()
    pad = torch.ones(2, 12, dtype=torch.bool); pad[1, 7:] = False
    _, (tgt, cur) = task.make_batch(raw, pad, raw, None)
    pred = torch.randn(2, 41, 12)
    ref, n = 0., 0
    for i, L in enumerate([12, 7]):
        for t in range(L - 1):
            ref -= torch.log_softmax(pred[i, :, t], 0)[int(raw[i, 0, t + 1])].item(); n += 1
    assert task.loss(pred, tgt, cur).item() == pytest.approx(ref / n, rel=1e-5)


def test_training_batches_score_a_random_share_of_steps():
    "steps=0.25: the head runs on a random quarter of the steps in training, on every step in eval mode."
    task = NextStepPretrain(steps=0.25)
    head = task.make_head(8, 1)
    head.shift = 3
    task.pretext_head = head
    raw = torch.randint(0, 41, (4, 1, 400)).float()
    (x, _, sel), (tgt, _) = task.make_batch(raw, None, raw, torch.Generator().manual_seed(0))
    assert 0.2 < sel.float().mean() < 0.3
    scored = tgt[:, 0, 0] != IGNORE
    assert torch.equal(scored[:, 3:399], sel[:, :396])  # the prediction at t comes from the output at t - 3
    h = torch.randn(4, 8, 400)
    out = head(h, sel)
    assert (out[..., 3:][~sel[:, None, :397].expand(-1, 41, -1)] == 0).all()
    head.eval()
    (xe, _), (tgt_e, _) = task.make_batch(raw, None, raw, None)
    assert (tgt_e[:, 0, 0, 3:399] != IGNORE).all() and (tgt_e[:, 0, 0, :3] == IGNORE).all()


@pytest.mark.parametrize('causal', ['shift', 'pad'])
def test_fit_is_causal_restores_and_reports_baselines(causal):
    cb = NextStepPretrain(causal=causal)
    learn = ts_learner(unlabeled_dls(), ResNetPlus, cbs=cb)
    learn.create_opt()
    state = learner_state(learn)
    x = torch.randn(1, 1, 64)
    learn.model.eval(); before = learn.model(x)
    fit_quiet(learn, 2, lr=3e-3)
    assert_restored(learn, state)
    names = learn.recorder.metric_names[1:-1]
    assert names == ['train_loss', 'valid_loss', 'next_acc', 'top3_acc', 'repeat_acc', 'mode_acc']
    vals = dict(zip(names, learn.recorder.values[-1]))
    assert 0 <= vals['next_acc'] <= vals['top3_acc'] <= 1 and 0 < vals['repeat_acc'] < 1
    learn.model.eval()
    assert learn.model(x).shape == before.shape  # the ordinary (non-causal) classifier is back
    # the saved weights came from a causal run but are the same tensors: nothing to convert
    cb.plot_next(steps=50)


@pytest.mark.parametrize('causal', ['shift', 'pad'])
def test_interrupted_fit_restores_causal_patches(causal):
    learn = ts_learner(unlabeled_dls(), UserNet(c_out=2), cbs=NextStepPretrain(causal=causal))
    learn.create_opt()
    state = learner_state(learn)
    with pytest.raises(KeyboardInterrupt):
        fit_quiet(learn, 1, cbs=RaiseAt(1))
    assert_restored(learn, state)
    assert not any('forward' in m.__dict__ for m in learn.model.modules())  # no causal patch left behind


@pytest.mark.parametrize('causal', ['shift', 'pad'])
def test_backbone_that_cannot_be_causal_is_refused_and_restored(causal):
    model = build_ts_model(ResNetPlus, c_in=1, c_out=2, seq_len=64, device='cpu', se=4)
    learn = ts_learner(unlabeled_dls(), model, cbs=NextStepPretrain(causal=causal))
    learn.create_opt(); state = learner_state(learn)
    with pytest.raises(NotImplementedError, match='mixes information across all time steps'):
        fit_quiet(learn, 1)
    assert_restored(learn, state)


@pytest.mark.parametrize('arch', [ResNetPlus, UserNet])
def test_shift_prediction_never_sees_the_future(arch):
    "causal='shift': the prediction at step t comes from the unmodified backbone R steps back, blind to x[t+1:]."
    from tsai_ssl import split_backbone
    from tsai_ssl.backbone import lookahead
    from tsai_ssl.tasks.base import PretextModel
    cb = NextStepPretrain()
    learn = ts_learner(unlabeled_dls(), arch if arch is ResNetPlus else arch(c_out=2), cbs=cb)
    fit_quiet(learn, 1)
    bb = split_backbone(learn.model)
    # the sum of the right paddings: 3 blocks x (3+2+1), 2 x (3+2)
    assert cb.pretext_head.shift == lookahead(bb, 1) == (18 if arch is ResNetPlus else 10)
    model = PretextModel(bb, cb.pretext_head).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 80, generator=g)
    with torch.no_grad():
        y = model(x)
        assert (y[..., :cb.pretext_head.shift] == 0).all()  # no prediction before step R
        for t in (20, 45, 78):
            x2 = x.clone(); x2[..., t + 1:] += 3 * torch.randn(x2[..., t + 1:].shape, generator=g)
            y2 = model(x2)
            assert torch.allclose(y2[..., :t + 1], y[..., :t + 1], atol=1e-6)
            if t < 60: assert not torch.allclose(y2[..., t + 1:], y[..., t + 1:], atol=1e-3)  # later steps do see it
    # the targets before step R are not scored
    raw = torch.randint(0, 41, (2, 1, 40)).float()
    _, (tgt, _) = cb.make_batch(raw, None, raw, None)
    assert (tgt[..., :cb.pretext_head.shift] == IGNORE).all() and (tgt[..., cb.pretext_head.shift:39] != IGNORE).all()


def test_continuous_mode():
    learn = ts_learner(unlabeled_dls(), ResNetPlus, cbs=NextStepPretrain(n_values=None, horizon=3, loss='huber'))
    fit_quiet(learn, 1)
    assert learn.recorder.metric_names[3:5] == ['next_mse', 'repeat_mse']


def test_tsai_get_ts_dls_targets_are_raw_integers():
    import numpy as np
    from conftest import ar_counts
    from tsai.data.core import get_ts_dls
    from tsai.data.preprocessing import TSStandardize
    X = np.stack(ar_counts(30, min_len=48, max_len=48)[0]).astype(np.float32)
    dls = get_ts_dls(X, splits=(list(range(20)), list(range(20, 30))), batch_tfms=[TSStandardize()], bs=10)
    spy = Spy()
    learn = ts_learner(dls, ResNetPlus, cbs=[NextStepPretrain(), spy])
    fit_quiet(learn, 1)
    (xb, _), (tgt, cur) = spy.valid[0][0]
    assert torch.equal(cur.float(), torch.from_numpy(X[20:30]))
    R = learn.cbs.filter(lambda c: isinstance(c, NextStepPretrain))[0].pretext_head.shift  # steps < R: no prediction
    assert torch.equal(tgt[:, 0, :, R:-1].float(), torch.from_numpy(X[20:30, :, R + 1:]))
