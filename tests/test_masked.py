import numpy as np
import pytest
import torch
from conftest import ar_counts
from helpers import RaiseAt, Spy, assert_restored, fit_quiet, learner_state, unlabeled_dls
from test_backbone import UserNet
from tsai.data.core import get_ts_dls
from tsai.data.preprocessing import TSStandardize
from tsai.learner import ts_learner
from tsai.models.ResNet import ResNet
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import MaskedValuePretrain, get_ssl_dls
from tsai_ssl.errors import InputError
from tsai_ssl.tasks.targets import IGNORE


def _ref_masked_ce(pred, raw, m, vocab):
    "Loop reference: mean cross-entropy over masked, unpadded steps of a one-channel batch."
    total, n = 0., 0
    for i in range(pred.shape[0]):
        for t in range(pred.shape[-1]):
            if m[i, t]:
                logp = torch.log_softmax(pred[i, :, t], 0)
                total -= logp[int(raw[i, 0, t])].item(); n += 1
    return total / n


def test_loss_only_on_masked_unpadded_steps_matches_reference():
    task = MaskedValuePretrain(ratio=0.3, mean_span=3, n_values=41)
    task.make_head(8, 1)
    bs, L = 4, 50
    raw = torch.randint(0, 41, (bs, 1, L)).float()
    pad = torch.arange(L)[None] < torch.tensor([50, 40, 30, 20])[:, None]
    raw = raw * pad[:, None]
    x = (raw - 20) / 10
    (xm, _, mask), (tgt,) = task.make_batch(x, pad, raw, torch.Generator().manual_seed(1))
    m = tgt[:, 0] != IGNORE
    assert torch.equal(mask, m)  # the model's head gets the masked steps
    assert m.any() and not (m & ~pad).any()  # never on padding
    assert torch.equal(tgt[:, 0][m], raw[:, 0][m].long())  # exact raw integers, not normalised values
    assert (xm[:, 0][m] < x.min()).all() and torch.equal(xm[:, 0][~m], x[:, 0][~m])  # fill below the data only where masked
    pred = torch.randn(bs, 41, L)
    assert task.loss(pred, tgt).item() == pytest.approx(_ref_masked_ce(pred, raw, m, 41), rel=1e-5)


def test_head_runs_on_masked_steps_only():
    from tsai_ssl.tasks.targets import MaskedStepsHead
    torch.manual_seed(0)
    head = MaskedStepsHead(8, 41).eval()  # eval: BatchNorm with running statistics, so both paths compare
    h = torch.randn(3, 8, 20, requires_grad=True)
    mask = torch.rand(3, 20) < 0.3
    full = head(h)
    out = head(h, mask)
    assert out.shape == full.shape
    assert torch.allclose(out.permute(0, 2, 1)[mask], full.permute(0, 2, 1)[mask], atol=1e-6)
    assert (out.permute(0, 2, 1)[~mask] == 0).all()
    out.sum().backward()
    assert (h.grad.permute(0, 2, 1)[~mask] == 0).all() and h.grad.abs().sum() > 0  # no gradient from unmasked steps
    head.train()
    for n in (0, 1):  # too few masked steps for training-mode BatchNorm: still works, zeros elsewhere
        few = torch.zeros(3, 20, dtype=torch.bool); few[0, :n] = True
        out = head(h, few)
        assert torch.isfinite(out).all() and (out.permute(0, 2, 1)[~few] == 0).all()


def test_continuous_loss_reference():
    task = MaskedValuePretrain(n_values=None, loss='mse')
    x = torch.randn(3, 2, 30)
    pad = torch.ones(3, 30, dtype=torch.bool); pad[2, 20:] = False
    (xm, _, _), (target, m) = task.make_batch(x, pad, x, torch.Generator().manual_seed(0))
    pred = torch.randn(3, 2, 30)
    ref = ((pred - x) ** 2).permute(0, 2, 1)[m].mean()
    assert task.loss(pred, target, m).item() == pytest.approx(ref.item(), rel=1e-5)


def test_fit_trains_head_and_backbone_and_restores(tmp_path):
    dls = unlabeled_dls()
    cb = MaskedValuePretrain(save_as='mv')
    learn = ts_learner(dls, ResNetPlus, cbs=cb)
    learn.create_opt()
    state = learner_state(learn)
    bb0 = {k: v.clone() for k, v in learn.model.state_dict().items()}
    fit_quiet(learn, 1)
    head0 = [p.detach().clone() for p in cb.pretext_head.parameters()]
    fit_quiet(learn, 1)  # a second fit keeps training the same head
    assert any(not torch.equal(a, b) for a, b in zip(head0, cb.pretext_head.parameters()))
    assert any(not torch.equal(bb0[k], v) for k, v in learn.model.state_dict().items() if k.startswith('backbone'))
    assert_restored(learn, state)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'masked_acc']
    assert (tmp_path / 'models' / 'mv.pth').exists() and (tmp_path / 'models' / 'mv.pth.json').exists()


@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError])
def test_restored_after_exception_mid_epoch(exc):
    learn = ts_learner(unlabeled_dls(), ResNetPlus, cbs=MaskedValuePretrain())
    learn.create_opt()
    state = learner_state(learn)
    with pytest.raises(exc):
        fit_quiet(learn, 2, cbs=RaiseAt(1, exc))
    assert_restored(learn, state)
    learn.remove_cb(MaskedValuePretrain)
    out = learn.model(torch.randn(2, 1, 64))  # the classifier works again
    assert out.shape == (2, 1)  # unlabeled loaders: a 1-output placeholder head


def test_validation_masks_fixed_across_epochs():
    spy = Spy()
    learn = ts_learner(unlabeled_dls(), ResNetPlus, cbs=[MaskedValuePretrain(), spy])
    fit_quiet(learn, 2)
    (e1, e2) = spy.valid
    for (x1, y1), (x2, y2) in zip(e1, e2):
        assert torch.equal(y1[0], y2[0])


def test_targets_exact_with_tsai_get_ts_dls_and_plain_resnet():
    X, _ = ar_counts(40, min_len=64, max_len=64)
    X = np.stack(X).astype(np.float32)
    dls = get_ts_dls(X, splits=(list(range(30)), list(range(30, 40))), batch_tfms=[TSStandardize()], bs=10)
    spy = Spy()
    learn = ts_learner(dls, ResNet, cbs=[MaskedValuePretrain(), spy])  # tsai's MVP refuses plain ResNet
    fit_quiet(learn, 1)
    (xb, _, _), (tgt,) = spy.valid[0][0]
    keep = tgt != IGNORE
    assert torch.equal(tgt[keep].float(), torch.from_numpy(X[30:40])[keep.cpu()])


def test_user_module_and_lr_find(tmp_path):
    learn = ts_learner(unlabeled_dls(), UserNet(c_out=2), cbs=MaskedValuePretrain(save_as='ssl'), path=tmp_path)
    learn.create_opt()
    state = learner_state(learn)
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=5, show_plot=False)
    assert_restored(learn, state)
    assert not (tmp_path / 'models' / 'ssl.pth').exists()  # defect 1: an LR sweep writes no weights
    assert not (tmp_path / 'models').exists() or not any((tmp_path / 'models').iterdir())  # lr_find's _tmp is gone too
    fit_quiet(learn, 1)
    assert_restored(learn, state)
    assert (tmp_path / 'models' / 'ssl.pth').exists()  # a real fit does


def test_show_preds_png(tmp_path):
    cb = MaskedValuePretrain()
    learn = ts_learner(unlabeled_dls(), ResNetPlus, cbs=cb)
    fit_quiet(learn, 1)
    cb.show_preds(n=2, path=tmp_path / 'mv.png')
    assert (tmp_path / 'mv.png').stat().st_size > 10_000


@pytest.mark.parametrize('kw, msg', [(dict(ratio=1.2), 'ratio'), (dict(n_values=1), "n_values"), (dict(loss='l1'), 'loss'),
                                     (dict(save='sometimes'), 'save')])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg): MaskedValuePretrain(**kw)


def test_non_integer_input_in_categorical_mode_is_refused():
    X = [np.random.rand(1, 64).astype(np.float32) * 40 for _ in range(8)]
    learn = ts_learner(get_ssl_dls(X, bs=4), ResNetPlus, cbs=MaskedValuePretrain(n_values=41))
    learn.create_opt(); state = learner_state(learn)
    with pytest.raises(InputError, match='is not an integer in 0..40'):
        fit_quiet(learn, 1)
    assert_restored(learn, state)


def test_non_integer_value_error_names_the_series_and_the_fix():
    "Defect 3: the error points to the series in the user's data (not a shuffled batch position) and to n_values."
    X = [np.random.default_rng(i).integers(0, 41, (1, 40 + i)).astype(np.float32) for i in range(12)]
    X[7][0, 13] = 3.5
    learn = ts_learner(get_ssl_dls(X, bs=4, splits=(range(12), [])), ResNetPlus, cbs=MaskedValuePretrain(ratio=0.5))
    with pytest.raises(InputError) as e: fit_quiet(learn, 1)
    msg = str(e.value)
    assert 'series 7, channel 0, step 13' in msg and '3.5' in msg and 'get_ssl_dls(..., n_values=41)' in msg
    with pytest.raises(InputError, match=r'X\[7\].*step 13'):  # checked before training, naming the same place
        get_ssl_dls(X, bs=4, n_values=41)


def test_auto_fill_is_raw_minus_one_through_standardize():
    from tsai_ssl.tasks.masked import auto_fill
    raw = torch.randint(0, 41, (4, 1, 30)).float()
    x = (raw - 7.) / 3.
    assert auto_fill(x, raw, None, categorical=True).item() == pytest.approx((-1 - 7.) / 3., rel=1e-5)
    lo, hi = x.min().item(), x.max().item()
    assert auto_fill(x, x, None, categorical=False).item() == pytest.approx(lo - 0.1 * (hi - lo), rel=1e-5)


def test_non_integer_value_in_a_validation_series_names_its_index_in_the_data():
    "The series index is the one in X, also for a validation series of a split (not its index in the subset)."
    X = [np.random.default_rng(i).integers(0, 41, (1, 40 + i)).astype(np.float32) for i in range(12)]
    X[10][0, 5] = 2.5
    learn = ts_learner(get_ssl_dls(X, bs=4, splits=(range(8), range(8, 12))), ResNetPlus,
                       cbs=MaskedValuePretrain(ratio=0.5))
    with pytest.raises(InputError, match='series 10, channel 0, step 5'): fit_quiet(learn, 1)
