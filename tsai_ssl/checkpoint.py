"""Resumable training: a checkpoint after every epoch, and a fit that continues from it exactly.

    cbs = [MaskedValuePretrain(save_as='ssl'), Checkpoint('ssl_run', resume='auto')]
    learn = ts_learner(dls, ResNetPlus, cbs=cbs)
    learn.fit_one_cycle(50, 1e-3)   # killed at epoch 31? run the same script again: it continues at epoch 32

The checkpoint (``learn.path/learn.model_dir/<fname>.pth``, written atomically: a crash mid-write leaves the
previous one intact) holds what the rest of the run depends on: the model being trained (during pretraining the
backbone *and* the pretext head), the optimizer state (Adam moments of both), the epoch, the random states
(torch, numpy, Python, and the training loader's shuffling generator), the Recorder's history and smoothed loss,
and the task's state (`PretextTask.state_dict`: best validation loss, masked-value's fill value, an EMA teacher
and MoCo's queue), also for the task of a `SemiSupervised` callback (with its head). A resumed fit
skips the finished epochs (the one-cycle schedule restarts at
the right point, as with fastai's ``start_epoch``) and, on CPU with the same data and seed, ends with the same
weights and losses as a run that was never interrupted (tested).

Works the same for fine-tuning a classifier without a pretext task.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelEpochException, CancelFitException
from fastai.torch_core import rank_distrib

from .tasks.base import PretextTask, restore_tasks
from .transfer import atomic_save, weights_path

__all__ = ['Checkpoint']

_VERSION = 2  # 2: the task's state_dict (was its best loss only)


def _plain(o):
    "fastcore L / tuples / numpy scalars -> lists and Python numbers, so `torch.load(weights_only=True)` reads it."
    if isinstance(o, dict): return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)) or type(o).__name__ == 'L': return [_plain(v) for v in o]
    if isinstance(o, np.generic): return o.item()
    return o


def _rng_states(learn) -> dict:
    np_state = np.random.get_state()
    st = dict(torch=torch.get_rng_state(), python=random.getstate(),
              numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
              loader=learn.dls.train.rng.getstate())
    if torch.cuda.is_available(): st['cuda'] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_states(learn, st: dict):
    torch.set_rng_state(st['torch'])
    random.setstate(_tuples(st['python']))
    n = st['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    learn.dls.train.rng.setstate(_tuples(st['loader']))
    if 'cuda' in st and torch.cuda.is_available(): torch.cuda.set_rng_state_all(st['cuda'])


def _tuples(o):  # random.setstate needs the nested tuples back
    return tuple(_tuples(v) for v in o) if isinstance(o, (list, tuple)) else o


class Checkpoint(Callback):
    """fastai callback: save a resumable checkpoint every `every` epochs, and resume a fit from it.

    Args:
        fname: checkpoint name (``learn.path/learn.model_dir/<fname>.pth``) or path.
        every: save after every `every`-th epoch (and after the last one).
        resume: False: start from scratch (an existing checkpoint is overwritten after the first epoch); True:
            continue from the checkpoint (error if there is none); 'auto': continue if there is one.

    Resume with the same Learner setup, data and ``fit_one_cycle`` arguments (``n_epoch`` is checked). Add it to a
    pretext-task Learner as well as to a fine-tuning one.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=[MaskedValuePretrain(save_as='ssl'), Checkpoint('ssl_run', resume='auto')])
        learn.fit_one_cycle(100, 1e-3)   # run the same script again after a crash: it continues after the last epoch
        ```
    """
    order = 75  # before_fit after the pretext task's swap (-5); after_epoch after Recorder (50) and the task (70)

    def __init__(self, fname: str | Path = 'checkpoint', every: int = 1, resume: bool | str = False):
        if resume not in (False, True, 'auto'): raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
        if every < 1: raise ValueError(f'every must be >= 1, got {every}')
        self.fname, self.every, self.resume = fname, every, resume
        self.start_epoch, self._pending = 0, None

    @property
    def path(self) -> Path: return weights_path(self.learn, self.fname)

    # -- resuming ------------------------------------------------------------------------------------------
    def before_fit(self):
        self.start_epoch, self._pending = 0, None
        try: self._load()
        except CancelFitException: raise  # fastai runs after_fit: the task restores itself
        except BaseException:
            restore_tasks(self.learn); raise

    def _load(self):
        if not self.resume or getattr(self.learn, 'lr_finder', None) is not None: return
        path = self.path
        if not path.exists():
            if self.resume == 'auto': return
            raise FileNotFoundError(f'No checkpoint at {path} to resume from: run the fit once with Checkpoint('
                                    f"{str(self.fname)!r}) (or resume='auto' to start fresh when there is none).")
        try: ck = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise RuntimeError(f'Cannot read the checkpoint {path} ({type(e).__name__}: {e}). It may be truncated or '
                               'not a tsai_ssl checkpoint: delete it to start fresh.') from e
        if not isinstance(ck, dict) or ck.get('kind') != 'tsai_ssl.Checkpoint':
            raise RuntimeError(f'{path} is not a tsai_ssl Checkpoint file (a backbone or fastai model file?).')
        learn = self.learn
        if ck['n_epoch'] != learn.n_epoch:
            raise ValueError(f'The checkpoint {path} comes from a fit of {ck["n_epoch"]} epochs; this fit has '
                             f'{learn.n_epoch}. Resume with the same number of epochs (the schedule depends on it).')
        if ck['task'] != self._task_name():
            raise ValueError(f'The checkpoint {path} was written during {ck["task"] or "plain training"}, not '
                             f'{self._task_name() or "plain training"}: add the same task callback to resume.')
        try: learn.model.load_state_dict(ck['model'])
        except RuntimeError as e:
            raise RuntimeError(f'The checkpoint {path} does not fit this model: {e}') from e
        dev = next(learn.model.parameters()).device
        learn.opt.load_state_dict(dict(hypers=ck['opt']['hypers'], state=_to(ck['opt']['state'], dev)))
        self.start_epoch = ck['epoch'] + 1
        self._pending = ck
        task = self._task()
        if task is not None:  # best loss, masked-value's fill value, ...; a version-1 file has the best loss only
            task.load_state_dict(ck.get('task_state') or {'best': ck.get('best')})
        semi, st = self._semi_task(), ck.get('semi')
        if st is not None and self._semi() is not None:  # SemiSupervised: its task's head, teacher, queue; its loader
            if semi is not None and st.get('head') is not None:
                semi.pretext_head.load_state_dict(_to(st['head'], dev))
                semi.load_state_dict(st['task'])
            self._semi().load_loader_state(st.get('loader'))
        if self.start_epoch >= learn.n_epoch:
            warnings.warn(f'The checkpoint {path} is from the last epoch: nothing left to train.', stacklevel=2)
            raise CancelFitException()

    def before_epoch(self):
        if self.epoch < self.start_epoch: raise CancelEpochException()  # already trained (fastai's SkipToEpoch)
        if self._pending is not None:  # the first epoch to run: the random states and history of the saved run
            ck, self._pending = self._pending, None
            _set_rng_states(self.learn, ck['rng'])
            rec = getattr(self.learn, 'recorder', None)
            if rec is not None:
                rec.values = list(ck['recorder']['values'])
                rec.losses = [torch.tensor(v) for v in ck['recorder']['losses']]
                rec.lrs, rec.iters = list(ck['recorder']['lrs']), list(ck['recorder']['iters'])
                rec.smooth_loss.count = ck['recorder']['smooth_count']
                rec.smooth_loss.val = ck['recorder']['smooth_val']
            self.learn.train_iter = ck['train_iter']

    # -- saving ------------------------------------------------------------------------------------------
    def after_epoch(self):
        if self.epoch < self.start_epoch or getattr(self.learn, 'lr_finder', None) is not None: return
        if rank_distrib(): return  # under DDP only the first process writes (fastai's save does the same)
        if (self.epoch + 1) % self.every and self.epoch != self.n_epoch - 1: return
        learn, rec = self.learn, getattr(self.learn, 'recorder', None)
        task = self._task()
        ck = dict(kind='tsai_ssl.Checkpoint', version=_VERSION, epoch=self.epoch, n_epoch=self.n_epoch,
                  train_iter=learn.train_iter, task=self._task_name(),
                  task_state=_to(task.state_dict(), 'cpu') if task is not None else None,
                  model=_to(dict(learn.model.state_dict()), 'cpu'),
                  opt=dict(hypers=_plain(learn.opt.hypers), state=_to(_plain(learn.opt.state_dict()['state']), 'cpu')),
                  rng=_rng_states(learn))
        semi = self._semi_task()
        if self._semi() is not None:
            ck['semi'] = dict(head=None if semi is None else _to(dict(semi.pretext_head.state_dict()), 'cpu'),
                              task=None if semi is None else _to(semi.state_dict(), 'cpu'),
                              loader=_plain(self._semi().loader_state()))
        if rec is not None:
            ck['recorder'] = dict(values=_plain(rec.values), losses=[float(v) for v in rec.losses],
                                  lrs=_plain(rec.lrs), iters=_plain(rec.iters),
                                  smooth_count=rec.smooth_loss.count, smooth_val=_to(rec.smooth_loss.val, 'cpu'))
        atomic_save(ck, self.path)

    # -- helpers -------------------------------------------------------------------------------------------
    def _task(self):
        return next((cb for cb in self.learn.cbs if isinstance(cb, PretextTask) and cb.attached), None)

    def _semi(self):
        return next((cb for cb in self.learn.cbs if type(cb).__name__ == 'SemiSupervised'), None)

    def _semi_task(self):
        "The pretext task a `SemiSupervised` callback trains alongside the classifier (None without one)."
        task = getattr(self._semi(), 'task', None)
        return task if task is not None and task.pretext_head is not None else None

    def _task_name(self) -> str | None:
        t = self._task()
        return None if t is None else type(t).__name__


def _to(o, device):
    if torch.is_tensor(o): return o.detach().as_subclass(torch.Tensor).to(device)  # fastai's TensorBase: not weights_only
    if isinstance(o, dict): return {k: _to(v, device) for k, v in o.items()}
    if isinstance(o, list): return [_to(v, device) for v in o]
    return o
