"""TS2Vec pretraining (Yue et al., AAAI 2022): hierarchical contrast of two overlapping crops, per time step.

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=TS2VecPretrain(save_as='ssl_resnet'))

Two overlapping crops of each series (`tsai_ssl.augment.overlapping_crops`), per-timestep representations from a
1x1-convolution projection, aligned on the overlap and contrasted instance-wise and temporally across a
max-pooling hierarchy (`tsai_ssl.losses.hierarchical_contrastive_loss`), with the padding mask of the overlaps.
The temporal term would build ``(bs, 2T, 2T)`` similarities at every level; it scores ``anchors`` (64) sampled
steps per level against all steps instead (``(bs, 2K, 2T)``, an estimate of the full term, see
`tsai_ssl.losses.hierarchical_contrastive_loss`), and long series are first cut to a random ``window`` of 1024
steps (TS2Vec cuts at 3000). Why these defaults: a TS2Vec step runs two overlapping crops, each up to the window's
length, through the backbone, so the window sets the cost. With 1024 and 64 a step cost 1.39x a supervised step
at 2048 steps (3.54x with TS2Vec's 3000 and 256 anchors), and transfer accuracy on GunPoint, ArrowHead and the
demo set was unchanged within noise; their series are at most 1024 steps, so there only the anchors changed
(docs/results.md). A CNN's per-step features see far fewer than 1024 steps anyway; give ``window=3000`` (or None)
for a Transformer that should learn longer contexts. The crops are the
layout augmentation; only value augmentations may be added (default: ``Scaling(0.1)``, ``Jitter(0.03)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..augment import Jitter, Scaling, gather_segments, overlapping_crops
from ..losses import hierarchical_contrastive_loss
from .two_view import TwoViewTask

__all__ = ['TS2VecPretrain', 'TimestepProjectionHead']


class TimestepProjectionHead(nn.Module):
    """TS2Vec projection: a per-timestep MLP of 1x1 convolutions (no BatchNorm: padded steps would enter its
    statistics). ``forward(h (bs, nf, L), pad_mask=None) -> (bs, out_dim, L)``; padded steps are set to 0."""

    def __init__(self, nf: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = hidden or nf
        self.mlp = nn.Sequential(nn.Conv1d(nf, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, out_dim, 1))

    def forward(self, h, pad_mask=None):
        z = self.mlp(h)
        return z if pad_mask is None else z.masked_fill(~pad_mask[:, None], 0.)


class TS2VecPretrain(TwoViewTask):
    """fastai callback: TS2Vec's hierarchical contrast of two overlapping crops (see the module docstring).

    Args:
        augs: value augmentations applied to each crop (must keep the layout: no RandomCrop/Resize); None =
            ``[Scaling(0.1), Jitter(0.03)]``.
        proj_dim: output size of the projection.
        hidden: hidden size of the projection (None: the backbone's nf).
        alpha: weight of the instance-wise term (1 - alpha: temporal).
        temporal_unit: first hierarchy level with a temporal term.
        min_overlap: minimum overlap of the two crops as a fraction of each series.
        anchors: score the temporal term on this many sampled anchor steps per level (against all steps), which
            makes its cost linear in the length instead of quadratic; None: every step (the exact loss). See
            `tsai_ssl.losses.hierarchical_contrastive_loss`.
        window: first cut every series longer than this to a random window (None: no cut).
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=TS2VecPretrain(save_as='ssl_ts2vec'))
        learn.fit_one_cycle(10, 1e-3)
        ```
    """
    task_name, aliases, label = 'ts2vec', ('ts-2-vec',), 'TS2Vec'
    epoch_cost = 2.  # two overlapping crops padded to the longest of the batch: about two series per series

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, proj_dim: int = 128,
                 hidden: int | None = None, alpha: float = 0.5, temporal_unit: int = 0, min_overlap: float = 0.,
                 window: int | None = 1024, anchors: int | None = 64, save_as: str | Path | None = None,
                 save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(augs=augs, window=window, save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if getattr(self.aug, 'changes_layout', False):
            raise ValueError('TS2Vec views are overlapping crops made by the task: pass only layout-preserving '
                             f'augmentations (no RandomCrop/Resize), got {self.aug!r}.')
        if not 0 <= alpha <= 1: raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        if temporal_unit < 0: raise ValueError(f'temporal_unit must be >= 0, got {temporal_unit}')
        self.proj_dim, self.hidden, self.alpha = proj_dim, hidden, alpha
        self.temporal_unit, self.min_overlap = temporal_unit, min_overlap
        if anchors is not None and anchors < 1: raise ValueError(f'anchors must be >= 1 or None, got {anchors}')
        self.anchors, self._loss_gen = anchors, None

    def default_augs(self) -> list: return [Scaling(0.1), Jitter(0.03)]

    def make_head(self, nf, c_in): return TimestepProjectionHead(nf, self.hidden, self.proj_dim)

    def views(self, x, pad_mask, generator):
        self._loss_gen = generator  # validation's fixed generator: the same anchors every epoch
        x1, m1, x2, m2, ov = overlapping_crops(x, pad_mask, self.min_overlap, 2 ** (self.temporal_unit + 1), generator)
        x1, m1 = self.aug(x1, m1, generator=generator)
        x2, m2 = self.aug(x2, m2, generator=generator)
        return x1, m1, x2, m2, (torch.stack([ov.start1, ov.start2, ov.length], 1),)

    def _overlaps(self, pred, ov):
        "The aligned per-timestep representations of the overlaps, ``(n, T, d)`` twice, and their mask."
        n = ov.shape[0]
        z = pred.float().transpose(1, 2)  # (2n, L, d)
        o1, om = gather_segments(z[:n], ov[:, 0], ov[:, 2], dim=1)
        o2, _ = gather_segments(z[n:], ov[:, 1], ov[:, 2], dim=1)
        return o1, o2, om

    def loss(self, pred, ov):
        o1, o2, om = self._overlaps(pred, ov)
        return hierarchical_contrastive_loss(o1, o2, self.alpha, self.temporal_unit, mask=om, anchors=self.anchors,
                                             generator=self._loss_gen)

    def embed_views(self, pred, ov):
        "Instance level: the mean representation of each overlap."
        o1, o2, om = self._overlaps(pred, ov)
        m = om[..., None].float()
        cnt = m.sum(1).clamp_min(1)
        return torch.cat([(o1 * m).sum(1) / cnt, (o2 * m).sum(1) / cnt])
