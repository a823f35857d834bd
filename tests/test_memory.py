"Memory saver: checkpointed blocks give exactly the results of the plain model (loss, gradients, BN statistics)."
import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from fastai.torch_core import set_seed
from helpers import ALL_TASKS, RaiseAt, fit_quiet, unlabeled_dls
from tsai.learner import ts_learner
from tsai.models.InceptionTimePlus import InceptionTimePlus
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import (
    MaskedValuePretrain,
    MemorySaver,
    checkpoint_blocks,
    find_blocks,
    padding_aware,
    split_backbone,
)
from tsai_ssl.memory import _CONTAINERS
from tsai_ssl.tasks import task_names


class UserNet(nn.Module):
    "The user story's model: a conv body in an nn.Sequential, mean over time, linear."
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv1d(1 if i == 0 else 16, 16, 5, padding=2), nn.BatchNorm1d(16),
                                                  nn.ReLU()) for i in range(4)])
        self.fc = nn.Linear(16, 3)
    def forward(self, x): return self.fc(self.body(x).mean(-1))


def test_find_blocks():
    assert find_blocks(ResNetPlus(1, 2)) == ['backbone.0', 'backbone.1', 'backbone.2']
    names = find_blocks(split_backbone(InceptionTimePlus(1, 2)))
    assert sum('inception.' in n for n in names) == 6
    assert find_blocks(UserNet()) == [f'body.{i}' for i in range(4)]
    for n in find_blocks(InceptionTimePlus(1, 2)):  # never a plain container or a single layer
        m = InceptionTimePlus(1, 2).get_submodule(n)
        assert type(m) not in _CONTAINERS and any(True for _ in m.children())


def _step(model, x, mask=None):
    "One training forward/backward; returns loss, gradients and BatchNorm running statistics."
    model.zero_grad()
    out = model(x)
    loss = (out.float() ** 2).mean() if mask is None else ((out.float() ** 2).mean(1) * mask).mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    stats = [b.clone() for b in model.buffers()]
    return loss.detach(), grads, stats


def _assert_same(a, b):
    assert torch.equal(a[0], b[0])
    assert len(a[1]) == len(b[1]) and all(torch.allclose(g, h, atol=1e-6, rtol=1e-5) for g, h in zip(a[1], b[1]))
    assert all(torch.equal(s, t) for s, t in zip(a[2], b[2]))  # BN running stats updated once, not twice


@pytest.mark.parametrize('arch', [ResNetPlus, InceptionTimePlus, UserNet])
def test_checkpointed_step_is_identical(arch):
    torch.manual_seed(0)
    m1 = arch(1, 3) if arch is not UserNet else UserNet()
    m1.train()
    m2 = copy.deepcopy(m1)
    x = torch.randn(4, 1, 50)
    ref = _step(m1, x)
    with checkpoint_blocks(m2) as names:
        assert names
        got = _step(m2, x)
    _assert_same(ref, got)
    assert 'forward' not in m2.get_submodule(names[0]).__dict__  # restored


def test_dropout_is_replayed():
    torch.manual_seed(0)
    blk = lambda: nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.Dropout(0.5), nn.ReLU())
    m1 = nn.Sequential(nn.Conv1d(1, 4, 1), blk(), blk(), blk()).train()
    m2 = copy.deepcopy(m1)
    x = torch.randn(2, 1, 30)
    torch.manual_seed(1); ref = _step(m1, x)
    with checkpoint_blocks(m2, blocks=['1', '2', '3']):
        torch.manual_seed(1); got = _step(m2, x)
    _assert_same(ref, got)


def test_padding_mask_of_the_forward_is_replayed():
    "The pretext model clears the padding mask after the forward; the recomputation must still use it."
    torch.manual_seed(0)
    m1 = split_backbone(ResNetPlus(1, 2)).train()
    m2 = copy.deepcopy(m1)
    x = torch.randn(4, 1, 40)
    mask = torch.arange(40)[None] < torch.tensor([40, 30, 20, 12])[:, None]
    res = []
    for m, ck in ((m1, False), (m2, True)):
        with padding_aware(m) as pa, checkpoint_blocks(m) if ck else torch.enable_grad():
            m.zero_grad()
            pa.pad_mask = mask
            out = m(x)
            pa.pad_mask = None  # as the pretext model does after its forward

            ((out ** 2).mean(1) * mask).mean().backward()
            res.append([p.grad.clone() for p in m.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*res))


def test_eval_and_no_grad_untouched():
    m = ResNetPlus(1, 2)
    x = torch.randn(2, 1, 30)
    m.eval()
    ref = m(x)
    with checkpoint_blocks(m), torch.no_grad():
        assert torch.equal(m(x), ref)


@pytest.mark.parametrize('task', [*ALL_TASKS, None], ids=[*task_names(), 'none'])
def test_memory_saver_callback_same_losses(task):
    "Two epochs with and without MemorySaver, same seed: the same losses, and the Learner left as it was."
    runs = []
    for saver in (False, True):
        set_seed(0, reproducible=True)
        dls = unlabeled_dls(n=32, bs=8)
        if task is None:  # supervised fine-tuning
            from conftest import ar_counts

            from tsai_ssl import get_ssl_dls
            X, y = ar_counts(32, n_classes=2)
            dls = get_ssl_dls(X, y, splits=(range(24), range(24, 32)), bs=8)
        dls.train.rng.seed(0)
        cbs = ([task()] if task else []) + ([MemorySaver()] if saver else [])
        learn = ts_learner(dls, ResNetPlus, cbs=cbs)
        fit_quiet(learn, 2)
        runs.append([float(l) for v in learn.recorder.values for l in v[:2]])
        if saver:
            ms = learn.memory_saver
            assert ms.names[:3] == ['backbone.0', 'backbone.1', 'backbone.2'] and len(ms.names) == 3 + 9 + 2  # + conv blocks, shortcuts
            assert all('forward' not in m.__dict__ for m in learn.model.modules())
            assert '_do_epoch' not in learn.__dict__
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_memory_saver_removed_after_interrupt():
    dls = unlabeled_dls(n=32, bs=8)
    learn = ts_learner(dls, ResNetPlus, cbs=[MaskedValuePretrain(), MemorySaver(), RaiseAt(1)])
    with pytest.raises(KeyboardInterrupt): fit_quiet(learn, 1)
    assert all('forward' not in m.__dict__ for m in learn.model.modules())
    assert '_do_epoch' not in learn.__dict__
    learn.remove_cb(RaiseAt)
    pickle.dumps(learn.model)  # learn.export would fail on a leftover patched forward
    fit_quiet(learn, 1)


def test_memory_saver_lr_find():
    learn = ts_learner(unlabeled_dls(n=32, bs=8), ResNetPlus, cbs=[MaskedValuePretrain(), MemorySaver()])
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=6, show_plot=False)
    assert all('forward' not in m.__dict__ for m in learn.model.modules())


def test_memory_saver_bad_blocks_leave_learner_usable():
    learn = ts_learner(unlabeled_dls(n=32, bs=8), ResNetPlus, cbs=[MaskedValuePretrain(), MemorySaver(blocks=[])])
    clf = learn.model
    with pytest.raises(ValueError, match='no blocks'): fit_quiet(learn, 1)
    assert learn.model is clf and not learn.masked_value_pretrain.attached
    with pytest.raises(AttributeError):
        fit_quiet(ts_learner(unlabeled_dls(n=32, bs=8), ResNetPlus, cbs=MemorySaver(blocks=['nope'])), 1)


def test_memory_saver_named_blocks_during_pretraining():
    "Block names are the classifier's, also while a pretext task has swapped in its model."
    learn = ts_learner(unlabeled_dls(n=32, bs=8), ResNetPlus,
                       cbs=[MaskedValuePretrain(), MemorySaver(blocks=['backbone.0', 'backbone.2'])])
    fit_quiet(learn, 1)
    assert learn.memory_saver.names == ['backbone.0', 'backbone.2']


def test_memory_saver_with_linear_probe_on_padded_batches():
    "LinearProbe embeds with its own padding-aware context inside the fit: the task's mask must still be replayed."
    from conftest import poisson_series

    from tsai_ssl import LinearProbe, MemorySaver, get_ssl_dls
    X = poisson_series(24, 20, 120)
    y = np.arange(24) % 2
    probe = LinearProbe(X[:12], y[:12], X[12:], y[12:], every=1)
    learn = ts_learner(get_ssl_dls(X, bs=6, splits=(range(18), range(18, 24))), ResNetPlus, nf=8,
                       cbs=[MaskedValuePretrain(), MemorySaver(), probe])
    fit_quiet(learn, 2)  # raised (different tensors saved in the recomputation) when the probe unregistered the task's
    assert np.isfinite(learn.recorder.values[-1][:2]).all()
