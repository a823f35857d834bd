"""Contrastive pretraining, SimCLR-style: two augmented views of every series, pulled together against the batch.

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=ContrastivePretrain(save_as='ssl_resnet'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_resnet', strict=False, with_opt=False)

SimCLR (Chen et al., ICML 2020): each view is one vector, the mean of the backbone features over the view's *real*
steps, passed through a projection MLP; NT-Xent with temperature ``temperature`` against the other ``2N - 2``
views of the batch (of all processes under DDP, see `tsai_ssl.losses.nt_xent`). Both views of a batch go through
the backbone in one forward, padding-aware (`tsai_ssl.tasks.two_view`).

Default augmentations (``augs=None``), chosen for integer count series as well as real-valued ones:
``RandomCrop(0.5, 0.5)`` (the strongest, value-preserving view: a random half of each series; two halves cost
the backbone what one full series costs, so a contrastive step costs about a supervised step, where two full-length
views cost two; see the README for the transfer it gives against 50-100 % crops),
``TimeMask(0.1, 5)`` (drops ~10 % of the steps in short spans; integer fill), ``Scaling(0.1)`` (a per-series rate
change: multiplicative, so zero counts stay zero, unlike an additive shift) and ``Jitter(0.03)`` (small noise in
model-input units, so the two views never match value for value). Not by default: time warping / resizing
(interpolates counts and changes durations that may carry the class) and segment permutation (destroys the
order of events).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..augment import Jitter, RandomCrop, Scaling, TimeMask
from ..backbone import masked_mean
from ..losses import nt_xent
from .two_view import TwoViewTask, contrastive_correct

__all__ = ['ContrastivePretrain', 'ProjectionHead', 'default_view_augs']


def default_view_augs() -> list:
    "The default augmentations of the series-level contrastive tasks (SimCLR, MoCo, BYOL): see the module docstring."
    return [RandomCrop(0.5, 0.5, min_len=8), TimeMask(0.1, 5.), Scaling(0.1), Jitter(0.03)]


class ProjectionHead(nn.Module):
    """SimCLR projection: masked mean of the backbone features over the real steps, then Linear-BN-ReLU-Linear.

    ``forward(h (bs, nf, L), pad_mask (bs, L) | None) -> (bs, out_dim)``."""

    def __init__(self, nf: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = hidden or nf
        self.mlp = nn.Sequential(nn.Linear(nf, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, h, pad_mask=None):
        return self.mlp(masked_mean(h, pad_mask))


class ContrastivePretrain(TwoViewTask):
    """fastai callback: SimCLR-style contrastive pretraining (NT-Xent) of any backbone `split_backbone` supports.

    Args:
        augs: augmentations applied independently to each view (see `TwoViewTask`); None = `default_augs`.
        temperature: NT-Xent temperature.
        proj_dim: output size of the projection head.
        hidden: hidden size of the projection head (None: the backbone's nf).
        window: first cut every series longer than this to a random window (None: no cut).
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=ContrastivePretrain(temperature=0.1, save_as='ssl_simclr'))
        learn.fit_one_cycle(10, 1e-3)
        ```
    """
    task_name, aliases, label = 'contrastive', ('contrast', 'simclr', 'ntxent', 'nt-xent'), 'contrastive'

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, temperature: float = 0.1,
                 proj_dim: int = 128, hidden: int | None = None, window: int | None = None,
                 save_as: str | Path | None = None, save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(augs=augs, window=window, save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if temperature <= 0: raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature, self.proj_dim, self.hidden = temperature, proj_dim, hidden
        self._warned_single = False

    def default_augs(self) -> list:
        "See the module docstring for why these."
        return default_view_augs()

    def make_head(self, nf, c_in): return ProjectionHead(nf, self.hidden, self.proj_dim)

    def views(self, x, pad_mask, generator):
        x1, m1 = self.aug(x, pad_mask, generator=generator)
        x2, m2 = self.aug(x, pad_mask, generator=generator)
        n = x.shape[0]
        idx = torch.arange(n, device=x.device)
        return x1, m1, x2, m2, (torch.cat([idx + n, idx]),)  # the row of each anchor's positive: the metric reads it

    def loss(self, pred, *yb):
        n = pred.shape[0] // 2
        if n < 2 and not self._warned_single:
            self._warned_single = True
            warnings.warn('A batch with a single series: NT-Xent has no negatives and its loss is 0. Use at least 2 '
                          'series per batch (drop_last=True for training, 2+ validation series).', stacklevel=2)
        z = pred.float()
        return nt_xent(z[:n], z[n:], self.temperature)

    def embed_views(self, pred, *yb): return pred

    def _correct(self, pred, pos): return contrastive_correct(pred, pos)
