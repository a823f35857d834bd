import warnings

import pytest
import torch
from conftest import ar_counts
from fastai.callback.core import Callback
from fastai.metrics import accuracy
from helpers import RaiseAt, fit_quiet, learner_state, unlabeled_dls
from tsai.data.preprocessing import TSStandardize
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import ContrastivePretrain, MaskedValuePretrain, NextStepPretrain, SemiSupervised, get_ssl_dls


def labeled(n=24, n_classes=3):
    X, y = ar_counts(n, n_classes=n_classes, seed=5)
    return get_ssl_dls(X, y, bs=8, batch_tfms=[TSStandardize()])


class Losses(Callback):
    "Record the classifier's loss and the loss that is backpropagated, per training batch."
    order = 6  # right after SemiSupervised's after_loss
    def before_fit(self): self.rows = []
    def after_loss(self):
        if self.training: self.rows.append((float(self.learn.loss), float(self.learn.loss_grad)))


@pytest.mark.parametrize('task', [MaskedValuePretrain, NextStepPretrain, ContrastivePretrain])
def test_pretext_loss_is_added_and_the_learner_is_restored(task):
    u = unlabeled_dls(n=32, bs=8)  # variable lengths 60..160: padded batches
    semi = SemiSupervised(task(), u.train, weight=0.5)
    spy = Losses()
    clf = ts_learner(labeled(), ResNetPlus, metrics=accuracy, cbs=[semi, spy])
    clf.create_opt()
    before = learner_state(clf)
    fit_quiet(clf, 1)
    assert spy.rows
    for loss, total in spy.rows: assert total > loss  # the pretext loss (positive) was added
    loss, total = spy.rows[-1]
    assert total == pytest.approx(loss + 0.5 * semi.pretext_loss, rel=1e-5)
    assert learner_state(clf) == before  # the head left the optimizer; the model is the classifier
    preds, _ = clf.get_preds(dl=clf.dls.valid if len(clf.dls.valid) else clf.dls.train)
    assert torch.isfinite(preds).all()


def test_head_trains_only_with_weight_and_lr_find_leaves_it():
    u = unlabeled_dls(n=32, bs=8)
    task = MaskedValuePretrain()
    semi = SemiSupervised(task, u.train, weight=1.)
    clf = ts_learner(labeled(), ResNetPlus, cbs=semi)
    fit_quiet(clf, 1)
    head = {k: v.clone() for k, v in task.pretext_head.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with clf.no_bar(), clf.no_logging(): clf.lr_find(num_it=5, show_plot=False)
    for k, v in task.pretext_head.state_dict().items(): assert torch.equal(v, head[k]), k
    fit_quiet(clf, 1)
    assert any(not torch.equal(v, head[k]) for k, v in task.pretext_head.state_dict().items() if v.is_floating_point())
    semi.weight, spy = 0., Losses()
    clf.add_cb(spy)
    fit_quiet(clf, 1)
    assert spy.rows and all(total == loss for loss, total in spy.rows)


def test_refusals():
    u = unlabeled_dls(n=32, bs=8)
    with pytest.raises(ValueError, match="causal='shift'"): SemiSupervised(NextStepPretrain(causal='pad'), u.train)
    with pytest.raises(TypeError, match='pretext task'): SemiSupervised(object(), u.train)
    with pytest.raises(ValueError, match='weight'): SemiSupervised(MaskedValuePretrain(), u.train, weight=-1)
    with pytest.raises(ValueError, match='a task, a pseudo_threshold'): SemiSupervised(None, u.train)
    with pytest.raises(ValueError, match='pseudo_threshold'): SemiSupervised(None, u.train, pseudo_threshold=1.)
    from tsai_ssl.augment import RandomCrop
    with pytest.raises(ValueError, match='layout'): SemiSupervised(None, u.train, pseudo_threshold=.9, strong_aug=RandomCrop())


class Halve:
    "A deterministic strong view, so the pseudo-label loss has a closed form."
    changes_layout = False
    def __call__(self, x, pad_mask=None, generator=None): return 0.5 * x, pad_mask


@pytest.mark.parametrize('threshold', [0., 0.4, 0.999])
def test_pseudo_label_loss_against_a_hand_written_reference(threshold):
    "FixMatch on one batch: mean over the batch of CE(f(strong x), argmax f(x)) where max softmax f(x) >= threshold."
    u = unlabeled_dls(n=32, bs=8, tfms=False)
    semi = SemiSupervised(None, u.train, pseudo_threshold=threshold, strong_aug=Halve())
    clf = ts_learner(labeled(), ResNetPlus, cbs=semi)
    clf.model.train()
    torch.manual_seed(0)
    x = torch.randn(6, 1, 50)
    loss = semi._pseudo_loss(x, None).detach()
    with torch.no_grad():
        p = torch.softmax(clf.model(x), -1)
        keep = (p.max(-1).values >= threshold).float()
        ref = (torch.nn.functional.cross_entropy(clf.model(0.5 * x), p.argmax(-1), reduction='none') * keep).mean()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)
    assert semi.pseudo_share == pytest.approx(float(keep.mean()))
    if threshold == 0.: assert semi.pseudo_share == 1. and float(loss) > 0
    if threshold == 0.999: assert semi.pseudo_share == 0. and float(loss) == 0.  # a fresh model is never that sure


def test_pseudo_labels_alone_train_and_restore():
    "task=None: FixMatch alone; the term is added at each step and the Learner is restored."
    semi = SemiSupervised(None, unlabeled_dls(n=32, bs=8).train, pseudo_threshold=0., pseudo_weight=2.)
    spy = Losses()
    clf = ts_learner(labeled(), ResNetPlus, cbs=[semi, spy])
    clf.create_opt()
    before = learner_state(clf)
    fit_quiet(clf, 1)
    loss, total = spy.rows[-1]
    assert total == pytest.approx(loss + 2. * semi.pseudo_loss, rel=1e-5) and semi.pseudo_share == 1.
    assert learner_state(clf) == before


def test_restored_after_an_interruption():
    semi = SemiSupervised(MaskedValuePretrain(), unlabeled_dls(n=32, bs=8).train)
    clf = ts_learner(labeled(), ResNetPlus, cbs=[semi, RaiseAt(it=1)])
    clf.create_opt()
    before = learner_state(clf)
    with pytest.raises(KeyboardInterrupt): fit_quiet(clf, 1)
    assert learner_state(clf) == before and '_do_epoch' not in clf.__dict__
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in clf.model.modules())  # PaddingAware is gone


@pytest.mark.parametrize('weight', [0., 1.])
def test_the_pretext_loss_alone_moves_the_backbone(weight):
    "With the classifier's loss multiplied by 0, only the pretext loss on unlabeled batches can move the backbone."
    from tsai_ssl import split_backbone
    semi = SemiSupervised(MaskedValuePretrain(), unlabeled_dls(n=32, bs=8).train, weight=weight)
    clf = ts_learner(labeled(), ResNetPlus, cbs=semi, wd=0., loss_func=lambda p, y: 0. * torch.nn.functional.cross_entropy(p, y))
    bb = [p.detach().clone() for p in split_backbone(clf.model).parameters()]
    fit_quiet(clf, 1)
    moved = any(not torch.equal(a, p) for a, p in zip(bb, split_backbone(clf.model).parameters()))
    assert moved == (weight > 0)
