"""MoCo: contrastive pretraining against an EMA key encoder and a queue of keys from earlier batches.

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=MoCoPretrain(save_as='ssl_moco'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_moco', strict=False, with_opt=False)

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020 (v2: Chen et al., 2020).
Why it is here: NT-Xent's negatives are the batch, and at 30720 steps a batch holds about 8 series, so SimCLR sees 14
negatives per anchor. MoCo's negatives are a queue of ``queue_size`` keys from earlier batches, computed by a teacher
(`tsai_ssl.ema.EMATeacher`) that follows the student slowly, so old keys stay comparable with new ones; the number of
negatives no longer depends on the batch size.

What this implementation does:

* Two views per series (the augmentations and crops of `ContrastivePretrain`), both through the student (queries) and
  the teacher (keys); the loss is symmetric: ``(InfoNCE(q1, k2) + InfoNCE(q2, k1)) / 2`` (`tsai_ssl.losses.moco_info_nce`),
  with the batch's other keys (of every process under DDP) and the queue as negatives.
* Both views' keys join the queue after the loss of every training batch (gathered from every process first, in rank
  order, so the queue is the same on every process); validation batches never enter it.
* The queue remembers which series each key came from, and a query never takes an older key of its own series as a
  negative. On a small data set a queue of 4096 keys holds dozens of keys of every series: without this they would
  push each series away from itself.
* The queue starts empty and fills up (no random keys); the teacher's BatchNorm uses its own batch statistics, as in
  the reference code (MoCo's "shuffling BN" against leakage needs several GPUs and is not done).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..losses import _dist_world_size, gather_no_grad, moco_info_nce
from .contrastive import ProjectionHead
from .teacher import TeacherTask

__all__ = ['MoCoPretrain', 'KeyQueue']


class KeyQueue:
    """A first-in, first-out ring of at most `size` keys ``(d,)`` with the index of the series each came from.

    Example:
        ```python
        q = KeyQueue(4, 2)
        q.push(torch.ones(3, 2), torch.tensor([0, 1, 2]))
        q.keys().shape                   # (3, 2): only what was pushed
        ```
    """

    def __init__(self, size: int, dim: int):
        if size < 0: raise ValueError(f'queue_size must be >= 0, got {size}')
        self.size, self.dim = size, dim
        self.buf = torch.zeros(size, dim)
        self.ids = torch.full((size,), -1, dtype=torch.long)
        self.ptr, self.n = 0, 0

    def keys(self) -> torch.Tensor:
        "The stored keys ``(n, d)``, oldest first."
        return torch.cat([self.buf[self.ptr:self.n], self.buf[:self.ptr]]) if self.n == self.size else self.buf[:self.n]

    def key_ids(self) -> torch.Tensor:
        "The series index of each stored key (-1: unknown), in the order of `keys`."
        return torch.cat([self.ids[self.ptr:self.n], self.ids[:self.ptr]]) if self.n == self.size else self.ids[:self.n]

    @torch.no_grad()
    def push(self, k: torch.Tensor, ids: torch.Tensor) -> None:
        "Add keys ``(b, d)`` and their series ids ``(b,)``; the oldest leave once the queue is full."
        if self.size == 0: return
        k, ids = k.detach()[-self.size:], ids[-self.size:]
        if self.buf.device != k.device or self.buf.dtype != k.dtype:
            self.buf, self.ids = self.buf.to(k.device, k.dtype), self.ids.to(k.device)
        pos = (self.ptr + torch.arange(k.shape[0], device=k.device)) % self.size
        self.buf[pos], self.ids[pos] = k, ids.to(k.device)
        self.ptr = (self.ptr + k.shape[0]) % self.size
        self.n = min(self.n + k.shape[0], self.size)

    def state_dict(self) -> dict:
        return dict(buf=self.buf.clone(), ids=self.ids.clone(), ptr=self.ptr, n=self.n)

    def load_state_dict(self, st: dict) -> None:
        if tuple(st['buf'].shape) != (self.size, self.dim):
            raise ValueError(f'The saved queue holds {tuple(st["buf"].shape)} keys; this one is ({self.size}, {self.dim}): '
                             'resume with the same queue_size and proj_dim.')
        dev = self.buf.device
        self.buf, self.ids, self.ptr, self.n = st['buf'].to(dev), st['ids'].to(dev), int(st['ptr']), int(st['n'])


class MoCoPretrain(TeacherTask):
    """fastai callback: MoCo pretraining (an EMA key encoder and a queue of negatives) of any backbone
    `split_backbone` supports. See the module docstring.

    Args:
        augs: augmentations applied independently to each view; None = `ContrastivePretrain`'s defaults.
        temperature: InfoNCE temperature (MoCo v2: 0.2).
        queue_size: number of negative keys kept from earlier batches (0: the batch's keys only, as MoCo v3).
        momentum: the teacher's EMA momentum (MoCo: 0.999 over 200 epochs; 0.99 suits runs of a few thousand steps).
        momentum_schedule: 'constant' (MoCo v1/v2) or 'cosine' (to 1 over the fit, as MoCo v3 and BYOL).
        proj_dim: output size of the projection head.
        hidden: hidden size of the projection head (None: the backbone's nf).
        window: first cut every series longer than this to a random window (None: no cut).
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=MoCoPretrain(queue_size=1024, save_as='ssl_moco'))
        learn.fit_one_cycle(10, 1e-3)
        ```
    """
    task_name, aliases, label = 'moco', ('moco-v2', 'momentum-contrast'), 'MoCo'
    epoch_cost = 1.3  # the teacher's forward: 1.35x a supervised step at 2048 steps, 1.15x at 8192 (bench/speed_bench.py)

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99, momentum_schedule: str = 'constant',
                 proj_dim: int = 128, hidden: int | None = None, window: int | None = None,
                 save_as: str | Path | None = None, save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(augs=augs, momentum=momentum, momentum_schedule=momentum_schedule, window=window,
                         save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if temperature <= 0: raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature, self.proj_dim, self.hidden = temperature, proj_dim, hidden
        self.queue = KeyQueue(queue_size, proj_dim)

    def make_student_head(self, nf): return ProjectionHead(nf, self.hidden, self.proj_dim)

    def views(self, x, pad_mask, generator):
        x1, m1 = self.aug(x, pad_mask, generator=generator)
        x2, m2 = self.aug(x, pad_mask, generator=generator)
        ids = [self.series_index(i) for i in range(x.shape[0])]
        ids = torch.tensor([-1 if i is None else i for i in ids], dtype=torch.long, device=x.device)
        return x1, m1, x2, m2, (torch.cat([ids, ids]),)

    def _exclude(self, ids: torch.Tensor, queue_ids: torch.Tensor) -> torch.Tensor | None:
        "(n, K): True where a queue key comes from the query's own series (unknown ids exclude nothing)."
        if not queue_ids.numel(): return None
        return (ids[:, None] == queue_ids.to(ids.device)[None]) & (ids[:, None] >= 0)

    def loss(self, pred, ids, keys):
        n = pred.shape[0] // 2
        q, k = pred.float(), keys.float()
        queue, qids = self.queue.keys(), self.queue.key_ids()
        if queue.numel(): queue = queue.to(q.device)
        loss = (moco_info_nce(q[:n], k[n:], queue, self.temperature, self._exclude(ids[:n], qids)) +
                moco_info_nce(q[n:], k[:n], queue, self.temperature, self._exclude(ids[n:], qids))) / 2
        if torch.is_grad_enabled():  # a training batch (validation runs without gradients): its keys join the queue
            kn = nn.functional.normalize(k, dim=1)
            if _dist_world_size() > 1:  # every process's keys, in rank order: the same queue everywhere
                kn = torch.cat([gather_no_grad(kn[:n]), gather_no_grad(kn[n:])])
                ids = torch.cat([gather_no_grad(ids[:n]), gather_no_grad(ids[n:])])
            self.queue.push(kn, ids)
        return loss

    def state_dict(self) -> dict:
        return dict(super().state_dict(), queue=self.queue.state_dict())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get('queue') is not None: self.queue.load_state_dict(state['queue'])
