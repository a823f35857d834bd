"""What every pretext task shares: swap in backbone + pretext head, loss and metrics for the fit; restore after.

A task callback, added to an ordinary tsai/fastai Learner, does this around each ``fit``:

* ``before_fit``: split the classifier with `split_backbone`, build the pretext head once (kept across
  fits), put ``learn.model = PretextModel(backbone, head, pa)``, add the head's parameters to the *existing*
  optimizer (fastai creates the optimizer before ``before_fit``; tsai's MVP builds its head after that, so
  its head never trains), and swap ``loss_func`` and ``metrics`` for the task's.
* ``before_batch``: the padding mask of the batch is derived once (the loader's ``pad_mask``, or trailing NaN in
  a tsai NaN-padded batch), padded steps are set to 0, and the task turns the batch into pretext inputs and targets
  (``learn.xb = (x, pad_mask, *head_args)``, ``learn.yb``). The pretext model hands ``pad_mask`` to the
  padding-aware backbone for its forward: the one path a mask takes, the same for every task.
* ``after_epoch``: optionally save the backbone (best validation loss and/or last) under the
  classifier's parameter names, atomically; never during ``lr_find``.
* ``after_fit`` (also after `CancelFitException`, and after any other exception raised inside an epoch,
  e.g. KeyboardInterrupt): put the classifier, loss, metrics and optimizer back as they were.

Why the callback's ``order`` changes during fit: it must swap the model and metrics *before*
`DistributedTrainer` (order 11, which wraps the model in DDP), `Recorder` (50) and `LRFinder` (60, which
snapshots the model) see them, and put everything back *after* `LRFinder` has reloaded its snapshot; fastai sorts
callbacks by ``order`` at every event, so the callback runs early for ``before_fit`` and late for everything after it.

A new task: one file in this folder with a subclass declaring ``task_name``, ``aliases`` and ``label`` (it registers
itself, see `tsai_ssl.tasks.registry`) and implementing `make_head`, `make_batch` and `loss`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn
from fastai.callback.core import Callback, CancelEpochException, CancelFitException
from fastai.learner import Metric
from fastai.torch_core import rank_distrib

from ..backbone import Backbone, PretextModel, _eval_mode, infer_c_in, split_backbone
from ..data import batch_pad_mask, batch_raw_input, batch_series_index
from ..errors import InputError
from ..losses import _dist_world_size as _world_size
from ..padding import PaddingAware, clean_input, warn_sync_batchnorm
from ..transfer import save_backbone, weights_path
from . import registry

__all__ = ['PretextModel', 'PretextTask', 'CountMetric', 'restore_tasks', 'sum_over_processes', 'add_to_opt', 'remove_from_opt']


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the processes of a distributed run (`t` itself otherwise). For metrics: under DDP each process
    sees its own shard of every batch, and fastai's loss is averaged over them, so counts must be added up too."""
    if _world_size() > 1:
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


class CountMetric(Metric):
    """A metric that sums a numerator and a denominator over the epoch (e.g. correct / masked positions), so
    batches with more target positions weigh more, unlike fastai's per-batch `AvgMetric`."""

    def __init__(self, func, name: str):
        self.func, self._name = func, name

    def reset(self): self.num, self.den = 0., 0.

    def accumulate(self, learn):
        num, den = self.func(learn.pred, *learn.yb)
        pred = learn.pred if torch.is_tensor(learn.pred) else learn.pred[0]  # a tuple: the VAE's (out, mu, logvar)
        num, den = sum_over_processes(torch.tensor([float(num), float(den)], dtype=torch.float64,
                                                   device=pred.device)).tolist()
        self.num += num; self.den += den

    @property
    def value(self): return self.num / self.den if self.den else None

    @property
    def name(self): return self._name


class PretextTask(Callback):
    """Base class of the pretext-task callbacks (see the module docstring). Subclasses declare ``task_name``
    (registry key), ``aliases`` and ``label`` (tables), optionally ``epoch_cost`` (an epoch's cost per data step relative to a
    supervised epoch), and implement `make_head`, `make_batch`, `loss` and optionally `metrics`, `wrap_backbone`
    and `state_dict` / `load_state_dict` (what `Checkpoint` must save besides the weights).

    Args:
        save_as: name (``learn.path/learn.model_dir/<name>.pth``) or path to save the backbone to.
        save: 'best' (lowest validation loss; last epoch if there is no validation set), 'last', or 'both'
            ('best' to ``save_as`` and the last epoch to ``<save_as>_last``).
        seed: seed of the fixed validation masks/views (same every epoch, so validation losses compare).
        pad_aware: run the backbone padding-aware (`tsai_ssl.padding.PaddingAware`), so a series gets the same
            features in a padded batch as alone; False runs the plain layers (padded steps then leak into real
            steps' features near the end of short series and into BatchNorm statistics), unless `IgnorePadding`
            is attached too, which then makes the backbone padding-aware.

    Example:
        ```python
        class MyTask(PretextTask):
            task_name, aliases, label = 'mine', (), 'my task'
            def make_head(self, nf, c_in): return nn.Conv1d(nf, c_in, 1)
            def make_batch(self, x, pad_mask, raw, generator): return (x, pad_mask), (x, pad_mask)
            def loss(self, pred, x, pad_mask): return ((pred - x) ** 2).mean()   # a (trivial) reconstruction
        ```
    """
    order = -5  # before_fit: after TrainEvalCallback (-10), before DistributedTrainer (11), Recorder (50), LRFinder (60)
    _late_order = 70
    task_name: str | None = None  # registry key (not `name`: fastai's Callback.name is the Learner attribute)
    aliases: tuple[str, ...] = ()
    label: str | None = None
    epoch_cost: float = 1.

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get('task_name'): registry.register(cls)  # a shared base without one is not registered

    def __init__(self, save_as: str | Path | None = None, save: str = 'best', seed: int = 0, pad_aware: bool = True):
        if save not in ('best', 'last', 'both'): raise ValueError(f"save must be 'best', 'last' or 'both', not {save!r}")
        self.save_as, self.save, self.seed, self.pad_aware = save_as, save, seed, pad_aware
        self.pretext_head, self.pretext_backbone, self._saved, self._pa = None, None, None, None
        self._sync_checked = True
        self.best, self.saved_paths = float('inf'), []
        self._head_state = {}  # the head's optimizer state (Adam moments) between fits

    # -- to implement ---------------------------------------------------------------------------------
    def make_head(self, nf: int, c_in: int) -> nn.Module: raise NotImplementedError
    def make_batch(self, x: torch.Tensor, pad_mask, raw: torch.Tensor, generator) -> tuple[tuple, tuple]:
        """Return ``(xb, yb)``: ``xb = (model_input, its pad_mask | None, *head_args)`` for the pretext model, ``yb``
        for the loss and metrics (its first element has the batch dimension: fastai's loss averaging reads it).
        `x` has 0 at padded steps; `pad_mask` (bs, L) is True at real steps, None when nothing is padded."""
        raise NotImplementedError
    def loss(self, pred, *yb) -> torch.Tensor: raise NotImplementedError
    def metrics(self) -> list: return []
    def wrap_backbone(self, backbone: Backbone):
        "A context manager to run the backbone in during fit (next-step: causal view)."
        return contextlib.nullcontext()
    def optimizer_stepped(self) -> None:
        "Called after each optimizer step of a fit the task trains in (its own, or `SemiSupervised`'s): EMA teachers."
    def state_dict(self) -> dict:
        "The task's state beyond the model's weights, for `Checkpoint` (tensors and plain Python values)."
        return dict(best=float(self.best))
    def load_state_dict(self, state: dict) -> None:
        self.best = state['best'] if state.get('best') is not None else float('inf')

    # -- fit lifecycle -------------------------------------------------------------------------------
    @property
    def attached(self) -> bool: return self._saved is not None

    @property
    def classifier(self) -> nn.Module:
        "The classifier the task swapped out (``learn.model`` when the task is not attached)."
        return self._saved['model'] if self.attached else self.learn.model

    def before_fit(self):
        learn = self.learn
        if self.attached: self._restore()  # left over from an interrupted fit outside an epoch
        _check_distributed(learn)
        clf = learn.model
        self.pretext_backbone = split_backbone(clf)
        p = next(clf.parameters())
        if self.pretext_head is None:
            self.pretext_head = self.make_head(self.pretext_backbone.nf, self._c_in())
        self.pretext_head.to(p.device)
        self._ctx = self.wrap_backbone(self.pretext_backbone)
        self._ctx.__enter__()
        self._saved = dict(model=clf, loss_func=learn.loss_func, metrics=learn.metrics, n_opt=None)
        try:
            # after wrap_backbone, so its hooks see the layers the backbone will run (next-step's causal view)
            if self.pad_aware: self._pa = PaddingAware(self.pretext_backbone).__enter__()
            learn.model = PretextModel(self.pretext_backbone, self.pretext_head, self._pa).train(clf.training)
            learn.loss_func = self.loss
            learn.metrics = self.metrics()
            self._add_head_to_opt()
        except BaseException:
            self._restore(); raise
        self.best, self._trained, self._sync_checked = float('inf'), False, False
        # Restore even if something other than CancelFitException escapes an epoch (fastai then skips after_fit).
        orig = learn._do_epoch
        def guarded_do_epoch():
            try: orig()
            except BaseException as e:
                if not isinstance(e, (CancelFitException, CancelEpochException)): self._restore()
                raise
        learn._do_epoch = guarded_do_epoch
        self.order = self._late_order

    def _c_in(self) -> int:
        dls = getattr(self.learn, 'dls', None)
        return getattr(dls, 'vars', None) or infer_c_in(self.learn.model)

    def _add_head_to_opt(self):
        self._saved['n_opt'] = add_to_opt(self.learn, list(self.pretext_head.parameters()), self._head_state)

    def _restore(self):
        if not self.attached: return
        learn, saved = self.learn, self._saved
        self._saved = None
        try:
            if self._pa is not None: self._pa.__exit__(None, None, None)
            self._pa = None
            self._ctx.__exit__(None, None, None)
        finally:
            learn.model, learn.loss_func, learn.metrics = saved['model'], saved['loss_func'], saved['metrics']
            remove_from_opt(learn, saved['n_opt'], self._head_state)
            learn.__dict__.pop('_do_epoch', None)
            self.order = type(self).order

    def after_fit(self): self._restore()

    # -- batches -------------------------------------------------------------------------------------
    def before_batch(self):
        if not self.attached: return
        if not self._sync_checked:  # distrib_ctx converts BatchNorm after this task's before_fit: look at the 1st batch
            self._sync_checked = True
            if self._pa is not None: warn_sync_batchnorm(self.learn.model)
        x = self.learn.xb[0]
        raw = batch_raw_input(self.learn, x).as_subclass(torch.Tensor)
        x, pad_mask = clean_input(x.as_subclass(torch.Tensor), batch_pad_mask(self.learn, x))
        g = None
        if not self.training:  # fixed validation masks/views: the same every epoch
            g = torch.Generator(device='cpu').manual_seed(self.seed * 100_003 + self.learn.iter)
        self.learn.xb, self.learn.yb = self.make_batch(x, pad_mask, raw, g)

    def series_index(self, i: int) -> int | None:
        "The index in the loader's data set of item `i` of the batch being processed (None if the loader has none)."
        idxs = batch_series_index(self.learn)
        return None if idxs is None else int(idxs[i])

    # -- looking at it ---------------------------------------------------------------------------------
    @torch.no_grad()
    def pretext_batch(self, dl=None, n: int = 3, seed: int = 0) -> dict:
        """Run the trained pretext model (eval mode) on the first `n` series of one batch of `dl` (default: the
        validation loader, else training). Returns x, pad_mask, raw, xb, yb and pred for plots."""
        if self.pretext_head is None: raise RuntimeError('The pretext head does not exist yet: fit the Learner with this callback first.')
        learn = self.learn
        dl = dl or (learn.dls.valid if len(learn.dls.valid) else learn.dls.train)
        x = dl.one_batch()[0]
        pad_mask, raw = batch_pad_mask(dl, x), batch_raw_input(dl, x)
        raw = raw[:n].as_subclass(torch.Tensor)
        x, pad_mask = clean_input(x[:n].as_subclass(torch.Tensor), None if pad_mask is None else pad_mask[:n])
        backbone = split_backbone(self.classifier)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.wrap_backbone(backbone))
            pa = stack.enter_context(PaddingAware(backbone)) if self.pad_aware else None
            model = PretextModel(backbone, self.pretext_head, pa)
            stack.enter_context(_eval_mode(model))
            xb, yb = self.make_batch(x, pad_mask, raw, torch.Generator().manual_seed(seed))
            pred = model(*xb)
        return dict(x=x, pad_mask=pad_mask, raw=raw, xb=xb, yb=yb, pred=pred)

    # -- saving --------------------------------------------------------------------------------------
    def after_step(self):
        if self.attached: self.optimizer_stepped()

    def after_batch(self):
        if self.training: self._trained = True

    def after_epoch(self):
        trained, self._trained = self._trained, False
        # an epoch that trained nothing (skipped by fastai's start_epoch or a resumed `Checkpoint`) saves nothing,
        # and neither does an LR sweep: its "epochs" are a range test, not a pretraining
        if not self.attached or self.save_as is None or not trained or _in_lr_find(self.learn): return
        loss = self._epoch_loss()
        meta = dict(task=type(self).__name__, epoch=self.epoch, loss=loss)
        if self.save in ('best', 'both') and loss is not None and loss < self.best:
            self.best = loss
            self._save(self.save_as, meta)
        if self.save == 'last' or (self.save == 'best' and loss is None):
            self._save(self.save_as, meta)
        if self.save == 'both': self._save(f'{self.save_as}_last', meta)

    def _epoch_loss(self) -> float | None:
        "This epoch's validation loss from the Recorder (None without a validation set)."
        rec = getattr(self.learn, 'recorder', None)
        if rec is None or not rec.values: return None
        names = list(rec.metric_names[1:-1])  # drop 'epoch' and 'time'
        vals = rec.values[-1]
        if 'valid_loss' not in names or names.index('valid_loss') >= len(vals): return None
        return float(vals[names.index('valid_loss')])

    def _save(self, name, meta):
        if rank_distrib(): return  # under DDP only the first process writes (fastai's save does the same)
        path = weights_path(self.learn, name)
        save_backbone(self.pretext_backbone, path, meta)
        if path not in self.saved_paths: self.saved_paths.append(path)


def add_to_opt(learn, params: list, state: dict) -> int:
    """Append `params` (a pretext head's) to the last parameter group of the Learner's *existing* optimizer (fastai
    builds it before ``before_fit``). Their optimizer state from an earlier fit comes back from `state`; biases and
    norm weights get no weight decay unless ``learn.wd_bn_bias``. Returns the group's former length, for
    `remove_from_opt`."""
    opt = learn.opt
    n = len(opt.param_lists[-1])
    opt.param_lists[-1] = opt.param_lists[-1] + params  # a new L: `+=` would not reach the optimizer
    for p in params:  # Adam moments of the head survive between fits
        if p in state: opt.state[p] = state[p]
        elif not getattr(learn, 'wd_bn_bias', False) and p.ndim == 1: opt.state[p] = {'do_wd': False}
    return n


def remove_from_opt(learn, n: int | None, state: dict) -> None:
    "Undo `add_to_opt`: the last group back to its first `n` tensors; the removed ones' optimizer state into `state`."
    opt = getattr(learn, 'opt', None)
    if opt is None or n is None: return
    group = opt.param_lists[-1]
    for p in group[n:]:
        if p in opt.state: state[p] = opt.state.pop(p)
    opt.param_lists[-1] = group[:n]


def _in_lr_find(learn) -> bool:
    "Whether fastai's `LRFinder` is running (``learn.lr_find()``)."
    from fastai.callback.schedule import LRFinder
    return any(isinstance(cb, LRFinder) for cb in learn.cbs)


def _check_distributed(learn) -> None:
    """Fail before the swap on what fastai's `DistributedTrainer` would fail on right after it (fastai then runs no
    ``after_fit``, so the Learner would keep the pretext model): SyncBatchNorm needs GPUs; and what would fail after
    the first epoch: an empty validation set."""
    dt = next((cb for cb in learn.cbs if type(cb).__name__ == 'DistributedTrainer'), None)
    p = next(learn.model.parameters(), None)
    if dt is not None and getattr(dt, 'sync_bn', False) and p is not None and p.device.type == 'cpu':
        raise ValueError('learn.distrib_ctx() converts BatchNorm to nn.SyncBatchNorm, which needs GPUs. On CPU '
                         'processes use learn.distrib_ctx(sync_bn=False, cpu=True).')
    valid = getattr(getattr(learn, 'dls', None), 'valid', None)
    if dt is not None and valid is not None and getattr(valid, 'dataset', None) is not None and len(valid.dataset) == 0:
        # fastai's DistributedDL divides by the number of items: an empty validation set fails after the first epoch
        raise InputError('learn.distrib_ctx() needs a validation split: fastai cannot share out an empty one among '
                         'processes. Give get_ssl_dls splits=(train_idxs, valid_idxs).')


def restore_tasks(learn) -> None:
    """Put back the classifier of every attached pretext task of `learn`. For callbacks that run after a task's
    ``before_fit`` and raise: fastai then runs no ``after_fit``, so the task could not restore itself."""
    for cb in learn.cbs:
        if isinstance(cb, PretextTask) and cb.attached: cb._restore()
