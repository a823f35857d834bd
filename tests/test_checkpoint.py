"Resumable training: an interrupted + resumed fit ends exactly where an uninterrupted one does."
import functools

import helpers
import numpy as np
import pytest
import torch
from conftest import ar_counts
from fastai.torch_core import set_seed
from helpers import RaiseAt, fit_quiet, unlabeled_dls
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import (
    BYOLPretrain,
    Checkpoint,
    ContrastivePretrain,
    MaskedValuePretrain,
    MoCoPretrain,
    NextStepPretrain,
    TS2VecPretrain,
    VAEPretrain,
    get_ssl_dls,
)


class RaiseAtEpoch(RaiseAt):
    "Raise KeyboardInterrupt at training iteration `it` of epoch `epoch`."
    def __init__(self, epoch, it=1): super().__init__(it); self.at_epoch = epoch
    def after_batch(self):
        if self.training and self.epoch == self.at_epoch and self.iter == self.it: raise KeyboardInterrupt('boom')


def _learner(task, extra=(), labeled=False):
    set_seed(0, reproducible=True)
    if labeled:
        X, y = ar_counts(32, n_classes=2)
        dls = get_ssl_dls(X, y, splits=(range(24), range(24, 32)), bs=8)
    else: dls = unlabeled_dls(n=32, bs=8)
    dls.train.rng.seed(0)
    return ts_learner(dls, ResNetPlus, cbs=([task(save_as='bb')] if task else []) + list(extra))


def _task(learn):
    return next((cb for cb in learn.cbs if hasattr(cb, 'task_name')), None)


def _result(learn):
    return [float(v) for row in learn.recorder.values for v in row], {k: v.clone() for k, v in learn.model.state_dict().items()}


continuous_masked = functools.partial(MaskedValuePretrain, n_values=None)  # its fill value comes from the first batch


@pytest.mark.parametrize('task', [MaskedValuePretrain, continuous_masked, NextStepPretrain, ContrastivePretrain,
                                  TS2VecPretrain, MoCoPretrain, BYOLPretrain, VAEPretrain, None],
                         ids=['masked', 'masked-continuous', 'next', 'contrastive', 'ts2vec', 'moco', 'byol', 'vae',
                              'none'])
def test_resume_equals_uninterrupted(task, monkeypatch):
    if task is continuous_masked:  # real values: each batch has its own range, so the first batch's fill differs
        def real_series(n, **kw):
            rng = np.random.default_rng(0)
            return [rng.normal(0, 1, (1, int(L))).astype(np.float32) for L in rng.integers(60, 160, n)], None
        monkeypatch.setattr(helpers, 'ar_counts', real_series)
    ref = _learner(task, [Checkpoint('run')], labeled=task is None)
    fit_quiet(ref, 4)
    ref_vals, ref_state = _result(ref)
    ref_bb = torch.load('models/bb.pth') if task else None

    crashed = _learner(task, [Checkpoint('run'), RaiseAtEpoch(2)], labeled=task is None)
    with pytest.raises(KeyboardInterrupt): fit_quiet(crashed, 4)
    ck = torch.load('models/run.pth', weights_only=True)
    assert ck['epoch'] == 1  # the last completed epoch

    resumed = _learner(task, [Checkpoint('run', resume=True)], labeled=task is None)  # a fresh process' Learner
    set_seed(123)  # whatever the global random state is now, the checkpoint's is used
    fit_quiet(resumed, 4)
    vals, state = _result(resumed)
    assert vals == pytest.approx(ref_vals, rel=1e-6, abs=1e-7)
    assert state.keys() == ref_state.keys()
    assert all(torch.allclose(state[k].float(), ref_state[k].float(), atol=1e-6) for k in state)
    teacher_state = [getattr(_task(r), 'teacher', None) for r in (ref, resumed)]
    if teacher_state[0] is not None:  # MoCo, BYOL: the EMA teacher (and MoCo's queue) resumed exactly too
        a, b = (t.state_dict() for t in teacher_state)
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
        if hasattr(_task(ref), 'queue'):
            qa, qb = _task(ref).queue, _task(resumed).queue
            assert qa.n == qb.n > 0 and torch.allclose(qa.keys(), qb.keys(), atol=1e-6)
            assert torch.equal(qa.key_ids(), qb.key_ids())
    if task:  # the 'best' backbone file is the uninterrupted run's
        bb = torch.load('models/bb.pth')
        assert all(torch.allclose(bb[k], ref_bb[k], atol=1e-6) for k in bb)


def test_resume_auto_without_file_starts_fresh_and_true_errors():
    learn = _learner(MaskedValuePretrain, [Checkpoint('nothing', resume=True)])
    with pytest.raises(FileNotFoundError, match="resume='auto'"): fit_quiet(learn, 1)
    assert '_do_epoch' not in learn.__dict__ and not learn.masked_value_pretrain.attached
    learn = _learner(MaskedValuePretrain, [Checkpoint('nothing', resume='auto')])
    fit_quiet(learn, 1)
    assert torch.load('models/nothing.pth', weights_only=True)['epoch'] == 0


def test_resume_mismatches_are_explained(tmp_path):
    fit_quiet(_learner(MaskedValuePretrain, [Checkpoint('run')]), 2)
    with pytest.raises(ValueError, match='same number of epochs'):
        fit_quiet(_learner(MaskedValuePretrain, [Checkpoint('run', resume=True)]), 3)
    with pytest.raises(ValueError, match='MaskedValuePretrain'):
        fit_quiet(_learner(NextStepPretrain, [Checkpoint('run', resume=True)]), 2)
    with pytest.warns(UserWarning, match='nothing left'):
        learn = _learner(MaskedValuePretrain, [Checkpoint('run', resume=True)])
        fit_quiet(learn, 2)
    assert not learn.masked_value_pretrain.attached  # restored after the early stop
    (tmp_path / 'models' / 'bad.pth').write_bytes(b'\x80\x02garbage')
    with pytest.raises(RuntimeError, match='truncated'):
        fit_quiet(_learner(MaskedValuePretrain, [Checkpoint('bad', resume=True)]), 2)
    torch.save({'a': torch.zeros(1)}, tmp_path / 'models' / 'other.pth')
    with pytest.raises(RuntimeError, match='not a tsai_ssl Checkpoint'):
        fit_quiet(_learner(MaskedValuePretrain, [Checkpoint('other', resume=True)]), 2)


def test_checkpoint_file_survives_a_crash_during_the_next_epoch():
    learn = _learner(MaskedValuePretrain, [Checkpoint('run'), RaiseAtEpoch(1)])
    with pytest.raises(KeyboardInterrupt): fit_quiet(learn, 3)
    ck = torch.load('models/run.pth', weights_only=True)
    assert ck['epoch'] == 0 and any(k.startswith('ssl_head.') for k in ck['model'])
    import os
    assert not [f for f in os.listdir('models') if f.endswith('.tmp')]


def test_every_and_bad_arguments():
    import os
    learn = _learner(MaskedValuePretrain, [Checkpoint('sparse', every=2), RaiseAtEpoch(1)])
    with pytest.raises(KeyboardInterrupt): fit_quiet(learn, 3)
    assert not os.path.exists('models/sparse.pth')  # epoch 0 is not a multiple of 2: nothing written yet
    learn = _learner(MaskedValuePretrain, [Checkpoint('sparse', every=2), RaiseAtEpoch(2)])
    with pytest.raises(KeyboardInterrupt): fit_quiet(learn, 4)
    assert torch.load('models/sparse.pth', weights_only=True)['epoch'] == 1
    fit_quiet(_learner(MaskedValuePretrain, [Checkpoint('sparse', every=2)]), 3)
    assert torch.load('models/sparse.pth', weights_only=True)['epoch'] == 2  # the last epoch is always written
    with pytest.raises(ValueError, match='resume'): Checkpoint(resume='yes')
    with pytest.raises(ValueError, match='every'): Checkpoint(every=0)


def test_checkpoint_saves_the_automatic_fill_value():
    "Defect 10: masked-value's automatic fill comes from the first batch seen; a resumed run must reuse it."
    learn = _learner(continuous_masked, [Checkpoint('run')])
    fit_quiet(learn, 2)
    task = next(cb for cb in learn.cbs if isinstance(cb, MaskedValuePretrain))
    assert task.fill_value is not None
    ck = torch.load('models/run.pth', weights_only=True)
    assert torch.equal(ck['task_state']['fill_value'], task.fill_value) and ck['task_state']['best'] == task.best
    fresh = continuous_masked()
    fresh.load_state_dict(ck['task_state'])
    assert torch.equal(fresh.fill_value, task.fill_value)
    x = torch.randn(2, 1, 30) * 100  # another batch would give another automatic fill
    assert torch.equal(fresh._fill_for(x, x, None).flatten(), task.fill_value.flatten())


@pytest.mark.parametrize('task', [MoCoPretrain, MaskedValuePretrain, None], ids=['moco', 'masked', 'pseudo-labels'])
def test_semi_supervised_resume_equals_uninterrupted(task):
    """Fine-tuning with `SemiSupervised`: the checkpoint also holds its task's head and state (an EMA teacher, MoCo's
    queue) and where the unlabeled loader is, so the resumed fit ends where the uninterrupted one does."""
    from tsai_ssl import SemiSupervised

    def learner(extra):
        set_seed(0, reproducible=True)
        X, y = ar_counts(32, n_classes=2)
        Xu, _ = ar_counts(40, seed=3)
        dls = get_ssl_dls(X, y, splits=(range(24), range(24, 32)), bs=8)
        dls.train.rng.seed(0)
        du = get_ssl_dls(Xu, bs=8, drop_last=True, seed=1).train
        semi = SemiSupervised(task() if task else None, du, weight=1., pseudo_threshold=None if task else 0.)
        return ts_learner(dls, ResNetPlus, cbs=[semi, *extra]), semi

    ref, ref_semi = learner([Checkpoint('run')])
    fit_quiet(ref, 4)
    ref_vals, ref_state = _result(ref)
    crashed, _ = learner([Checkpoint('run'), RaiseAtEpoch(2)])
    with pytest.raises(KeyboardInterrupt): fit_quiet(crashed, 4)
    resumed, semi = learner([Checkpoint('run', resume=True)])
    set_seed(123)
    fit_quiet(resumed, 4)
    vals, state = _result(resumed)
    assert vals == pytest.approx(ref_vals, rel=1e-6, abs=1e-7)
    assert all(torch.allclose(state[k].float(), ref_state[k].float(), atol=1e-6) for k in state)
    if task is not None:
        a, b = ref_semi.task.pretext_head.state_dict(), semi.task.pretext_head.state_dict()
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    if task is MoCoPretrain:
        assert torch.allclose(ref_semi.task.queue.keys(), semi.task.queue.keys(), atol=1e-6)
        ta, tb = ref_semi.task.teacher.state_dict(), semi.task.teacher.state_dict()
        assert all(torch.allclose(ta[k].float(), tb[k].float(), atol=1e-6) for k in ta)
