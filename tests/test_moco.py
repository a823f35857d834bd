"""Tests of tsai_ssl.tasks.moco: the key queue, the teacher's updates during a fit, the Learner restored, the weights
transferred, and the queue under two DDP processes equal to one process on the concatenated batch."""
from __future__ import annotations

import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ar_counts
from fastai.callback.core import Callback
from helpers import RaiseAt, assert_restored, fit_quiet, learner_state, unlabeled_dls
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import MoCoPretrain, get_ssl_dls, load_pretrained
from tsai_ssl.backbone import split_backbone
from tsai_ssl.tasks.moco import KeyQueue


# ----------------------------------------------------------------------------------------------------
# the queue
# ----------------------------------------------------------------------------------------------------
def test_queue_is_first_in_first_out_and_bounded():
    q = KeyQueue(5, 2)
    assert q.keys().shape == (0, 2) and q.key_ids().numel() == 0
    q.push(torch.arange(6.).view(3, 2), torch.tensor([0, 1, 2]))
    assert q.key_ids().tolist() == [0, 1, 2] and q.n == 3
    q.push(torch.arange(6., 12.).view(3, 2), torch.tensor([3, 4, 5]))
    assert q.key_ids().tolist() == [1, 2, 3, 4, 5] and q.n == 5  # the oldest left
    torch.testing.assert_close(q.keys()[:, 0], torch.tensor([2., 4., 6., 8., 10.]))
    q.push(torch.zeros(7, 2), torch.arange(10, 17))  # more than fits: the last 5
    assert q.key_ids().tolist() == [12, 13, 14, 15, 16]
    st = q.state_dict()
    r = KeyQueue(5, 2)
    r.load_state_dict(st)
    assert torch.equal(r.keys(), q.keys()) and r.key_ids().tolist() == q.key_ids().tolist() and r.ptr == q.ptr
    empty = KeyQueue(0, 2)
    empty.push(torch.ones(3, 2), torch.arange(3))
    assert empty.keys().numel() == 0
    with pytest.raises(ValueError, match='queue_size'): KeyQueue(-1, 2)


def test_own_series_is_never_a_negative():
    task = MoCoPretrain(queue_size=8, proj_dim=4)
    ex = task._exclude(torch.tensor([3, -1, 5]), torch.tensor([5, 3, 3, -1]))
    assert ex.tolist() == [[False, True, True, False], [False] * 4, [True, False, False, False]]
    assert task._exclude(torch.tensor([1]), torch.tensor([], dtype=torch.long)) is None


# ----------------------------------------------------------------------------------------------------
# fits
# ----------------------------------------------------------------------------------------------------
class TeacherSpy(Callback):
    "Record the student and the teacher before and after the first optimizer step (order: after the task's step)."
    order = 80
    def __init__(self, task): self.task = task
    def before_fit(self): self.seen = None
    def before_step(self):
        if self.seen is None:
            t = self.task
            self.teacher_before = [p.clone() for p in t.teacher.parameters()]
    def after_step(self):
        if self.seen is None:
            t = self.task
            student = [p.detach().clone() for m in (t.pretext_backbone, t.pretext_head) for p in m.parameters()]
            self.seen = (self.teacher_before, student, [p.clone() for p in t.teacher.parameters()])


def test_fit_moves_the_teacher_by_ema_fills_the_queue_and_restores(tmp_path):
    dls = unlabeled_dls(n=40, bs=8)
    task = MoCoPretrain(queue_size=1000, momentum=0.9, proj_dim=16, save_as='moco', save='last')
    spy = TeacherSpy(task)
    learn = ts_learner(dls, ResNetPlus, nf=8, cbs=[task, spy], path=tmp_path)
    state = learner_state(learn)
    fit_quiet(learn, 2)
    assert_restored(learn, state)
    before, student, after = spy.seen
    for b, s, a in zip(before, student, after):  # one step: t <- 0.9 t + 0.1 s, s the student after the step
        torch.testing.assert_close(a, 0.9 * b + 0.1 * s, rtol=0, atol=1e-6)
    # training keys only, both views: 3 batches of 8 series x 2 views x 2 epochs (drop_last), validation never
    assert task.queue.n == 3 * 8 * 2 * 2
    ids = task.queue.key_ids()
    assert ids.min() >= 0 and ids.max() < 24  # the training split's series
    assert set(learn.recorder.metric_names) >= {'train_loss', 'valid_loss', 'contrast_acc'}
    assert not any(m._forward_pre_hooks or 'forward' in m.__dict__ for m in learn.model.modules())
    # the student's backbone is what is saved, and it loads into a classifier
    X, y = ar_counts(16, n_classes=2)
    clf = ts_learner(get_ssl_dls(X, y, bs=8), ResNetPlus, nf=8, path=tmp_path)
    assert load_pretrained(clf, 'moco').transferred
    want = split_backbone(learn.model).state_dict()
    got = split_backbone(clf.model).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_interrupted_fit_restores_and_lr_find_leaves_teacher_and_queue(tmp_path):
    dls = unlabeled_dls(n=32, bs=8)
    task = MoCoPretrain(queue_size=64, proj_dim=8)
    learn = ts_learner(dls, ResNetPlus, nf=8, cbs=[task, RaiseAt(1)], path=tmp_path)
    state = learner_state(learn)
    with pytest.raises(KeyboardInterrupt): fit_quiet(learn, 1)
    assert_restored(learn, state)
    learn.remove_cb(learn.cbs.filter(lambda c: isinstance(c, RaiseAt))[0])
    fit_quiet(learn, 1)
    teacher = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    keys, n = task.queue.keys().clone(), task.queue.n
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=5, show_plot=False)
    assert all(torch.equal(v, task.teacher.state_dict()[k]) for k, v in teacher.items())
    assert task.queue.n == n and torch.equal(task.queue.keys(), keys)
    assert_restored(learn, state)
    assert not (tmp_path / 'models').exists() or not any((tmp_path / 'models').iterdir())


def test_semi_supervised_with_moco_steps_the_teacher():
    from fastai.metrics import accuracy

    from tsai_ssl import SemiSupervised
    Xu, _ = ar_counts(32)
    X, y = ar_counts(24, n_classes=2, seed=1)
    task = MoCoPretrain(queue_size=64, proj_dim=8)
    semi = SemiSupervised(task, get_ssl_dls(Xu, bs=8, drop_last=True).train, weight=1.)
    clf = ts_learner(get_ssl_dls(X, y, splits=(range(16), range(16, 24)), bs=8), ResNetPlus, nf=8, metrics=accuracy,
                     cbs=semi)
    fit_quiet(clf, 1)
    t0 = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    fit_quiet(clf, 1)
    assert semi.pretext_loss is not None and task.queue.n == 2 * 2 * 8 * 2  # 2 steps/epoch x 2 views x 8 x 2 fits
    assert any(not torch.equal(v, task.teacher.state_dict()[k]) for k, v in t0.items() if v.is_floating_point())


# ----------------------------------------------------------------------------------------------------
# two processes
# ----------------------------------------------------------------------------------------------------
WORLD, N_LOCAL, DIM = 2, 3, 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _problem():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2 * WORLD * N_LOCAL, DIM, generator=g)   # [view 1 of every series; view 2 of every series]
    k = torch.randn(2 * WORLD * N_LOCAL, DIM, generator=g)
    ids = torch.arange(WORLD * N_LOCAL).repeat(2)
    queue0 = torch.randn(5, DIM, generator=g)
    return q, k, ids, queue0


def _local(t, rank):
    "This process's share of a [view 1; view 2] tensor: its series in both views."
    n = WORLD * N_LOCAL
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    return torch.cat([t[:n][sl], t[n:][sl]])


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    if sys.platform.startswith('linux'): os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        q, k, ids, queue0 = _problem()
        task = MoCoPretrain(queue_size=12, proj_dim=DIM)
        task.queue.push(queue0, torch.full((5,), 100))
        ql = _local(q, rank).requires_grad_(True)
        loss = task.loss(ql, _local(ids, rank), _local(k, rank))
        loss.backward()
        torch.save(dict(loss=loss.detach(), grad=ql.grad, keys=task.queue.keys(), ids=task.queue.key_ids()),
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_queue_and_loss_under_two_processes_equal_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD)]
    q, k, ids, queue0 = _problem()
    task = MoCoPretrain(queue_size=12, proj_dim=DIM)
    task.queue.push(queue0, torch.full((5,), 100))
    q = q.requires_grad_(True)
    loss = task.loss(q, ids, k)
    loss.backward()
    for rank, r in enumerate(res):  # the same queue everywhere, in the single process's order
        assert torch.equal(r['ids'], task.queue.key_ids())
        torch.testing.assert_close(r['keys'], task.queue.keys())
    # keys carry no gradient: the mean of the processes' losses is the single-process loss, and each process's
    # query gradients are WORLD x its share of the single-process ones (DDP's averaging divides it back)
    torch.testing.assert_close(torch.stack([r['loss'] for r in res]).mean(), loss.detach())
    for rank, r in enumerate(res): torch.testing.assert_close(r['grad'] / WORLD, _local(q.grad, rank))
