"""Contrastive pretraining: two augmented views of every series, pulled together against the rest of the batch.

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=ContrastivePretrain(save_as='ssl_resnet'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_resnet', strict=False)

Two losses:

* ``loss='ntxent'`` (default), SimCLR (Chen et al., ICML 2020): each view is one vector, the mean of the backbone
  features over the view's *real* steps, passed through a projection MLP; NT-Xent with temperature
  ``temperature`` against the other ``2N - 2`` views of the batch (of all processes under DDP, see
  `tsai_ssl.losses.nt_xent`).
* ``loss='ts2vec'`` (also `TS2VecPretrain`), TS2Vec (Yue et al., AAAI 2022): two overlapping crops of each series
  (`overlapping_crops`), per-timestep representations from a 1x1-convolution projection, aligned on the overlap and
  contrasted instance-wise and temporally across a max-pooling hierarchy (`hierarchical_contrastive_loss`), with
  the padding mask of the overlaps.

Both views of a batch go through the backbone in *one* forward: they are concatenated along the batch, right-padded
to the longer, and the masks travel with them (``xb = (views, masks)``; the pretext model's forward hands the mask
to the head). While the task is attached the backbone runs under `tsai_ssl.padding.padding_aware`: padded steps never
reach a real step's features and training-mode BatchNorm statistics use real steps only, so a series gets the same
representation alone as padded in a batch (exactly in eval mode), which is also how `get_embeddings` extracts
features afterwards.

Default augmentations (``augs=None``), chosen for integer count series as well as real-valued ones:
``RandomCrop(0.5, 0.5)`` (the strongest, value-preserving view: a random half of each series; two halves cost
the backbone what one full series costs, so a contrastive step costs about a supervised step, where two full-length
views cost two; see the README for the transfer it gives against 50-100 % crops),
``TimeMask(0.1, 5)`` (drops ~10 % of the steps in short spans; integer fill), ``Scaling(0.1)`` (a per-series rate
change: multiplicative, so zero counts stay zero, unlike an additive shift) and ``Jitter(0.03)`` (small noise in
model-input units, so the two views never match value for value). Not by default: time warping / resizing
(interpolates counts and changes durations that may carry the class) and segment permutation (destroys the
order of events). For TS2Vec the crops are the layout augmentation and only value augmentations may be added
(default: ``Scaling(0.1)``, ``Jitter(0.03)``).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import Compose, Jitter, RandomCrop, Scaling, TimeMask, gather_segments, overlapping_crops
from ..backbone import masked_mean
from ..embed import clean_input
from ..padding import padding_aware, warn_sync_batchnorm
from ..losses import hierarchical_contrastive_loss, nt_xent
from .base import CountMetric, PretextTask

__all__ = ['ContrastivePretrain', 'TS2VecPretrain', 'ProjectionHead', 'TimestepProjectionHead', 'default_augs',
           'stack_views', 'contrastive_correct']


def default_augs(loss: str = 'ntxent') -> list:
    "The default augmentation pipeline of each loss (see the module docstring for why)."
    if loss == 'ts2vec': return [Scaling(0.1), Jitter(0.03)]
    return [RandomCrop(0.5, 0.5, min_len=8), TimeMask(0.1, 5.), Scaling(0.1), Jitter(0.03)]


class ProjectionHead(nn.Module):
    """SimCLR projection: masked mean of the backbone features over the real steps, then Linear-BN-ReLU-Linear.

    ``forward(h (bs, nf, L), mask (bs, L) | None) -> (bs, out_dim)``."""

    def __init__(self, nf: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = hidden or nf
        self.mlp = nn.Sequential(nn.Linear(nf, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, h, mask=None):
        return self.mlp(masked_mean(h, mask))


class TimestepProjectionHead(nn.Module):
    """TS2Vec projection: a per-timestep MLP of 1x1 convolutions (no BatchNorm: padded steps would enter its
    statistics). ``forward(h (bs, nf, L), mask=None) -> (bs, out_dim, L)``; padded steps are set to 0."""

    def __init__(self, nf: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = hidden or nf
        self.mlp = nn.Sequential(nn.Conv1d(nf, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, out_dim, 1))

    def forward(self, h, mask=None):
        z = self.mlp(h)
        return z if mask is None else z.masked_fill(~mask[:, None], 0.)


def stack_views(x1: torch.Tensor, m1: torch.Tensor | None, x2: torch.Tensor, m2: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate two view batches along the batch, right-padded with 0 to the longer: ``(2bs, C, L)`` and the
    bool mask ``(2bs, L)`` (always a tensor, True at real steps)."""
    L = max(x1.shape[-1], x2.shape[-1])
    def full(x, m):
        if m is None: m = torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
        pad = L - x.shape[-1]
        return (F.pad(x, (0, pad)), F.pad(m, (0, pad), value=False)) if pad else (x, m)
    (a, ma), (b, mb) = full(x1, m1), full(x2, m2)
    return torch.cat([a, b]), torch.cat([ma, mb])


def _random_window(x: torch.Tensor, mask: torch.Tensor | None, max_len: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    "Each series longer than `max_len` cut to a uniformly placed window of `max_len` real steps."
    n = mask.sum(1) if mask is not None else torch.full((x.shape[0],), x.shape[-1], device=x.device)
    crop = n.clamp(max=max_len)
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device)
    start = torch.minimum((u * (n - crop + 1)).long(), n - crop)
    return gather_segments(x, start, crop, out_len=int(crop.max()))


def contrastive_correct(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """For ``z = [z1; z2]`` ``(2n, d)``: how many anchors have their other view as the most (cosine-)similar of the
    other ``2n - 1`` rows, and ``2n``."""
    z = F.normalize(z.detach().float(), dim=1)
    n2 = z.shape[0]
    sim = (z @ z.T).fill_diagonal_(float('-inf'))
    pos = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return (sim.argmax(1) == pos).sum(), n2


class ContrastivePretrain(PretextTask):
    """fastai callback: contrastive pretraining (NT-Xent or TS2Vec) of any backbone `split_backbone` supports.

    Args:
        augs: augmentations applied independently to each view (a list, run in order, or one callable with the
            `tsai_ssl.augment` signature ``aug(x, mask, generator) -> (x, mask)``); None = `default_augs`. With
            ``loss='ts2vec'`` they must keep the layout (the crops are made by the task).
        loss: 'ntxent' (SimCLR) or 'ts2vec'.
        temperature: NT-Xent temperature.
        proj_dim, hidden: projection head output and hidden sizes (hidden defaults to the backbone's nf).
        alpha, temporal_unit: TS2Vec: weight of the instance-wise term, first hierarchy level with a temporal term.
        min_overlap: TS2Vec: minimum overlap of the two crops as a fraction of each series.
        max_len: first cut every series longer than this to a random window of ``max_len`` steps (training and
            validation; validation loaders give full series). TS2Vec's temporal loss builds ``(bs, 2T, 2T)``
            similarities, so it defaults to 3000 there, as in TS2Vec; None (no cut) for NT-Xent.
        pad_aware: run the backbone under `padding_aware` (recommended; see the module docstring).
        save_as, save, seed: see `PretextTask`.
    """

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, loss: str = 'ntxent',
                 temperature: float = 0.1, proj_dim: int = 128, hidden: int | None = None, alpha: float = 0.5,
                 temporal_unit: int = 0, min_overlap: float = 0., max_len: int | None | str = 'auto',
                 pad_aware: bool = True, save_as: str | Path | None = None, save: str = 'best', seed: int = 0):
        super().__init__(save_as=save_as, save=save, seed=seed)
        if loss not in ('ntxent', 'ts2vec'): raise ValueError(f"loss must be 'ntxent' or 'ts2vec', got {loss!r}")
        if temperature <= 0: raise ValueError(f'temperature must be > 0, got {temperature}')
        if not 0 <= alpha <= 1: raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        if temporal_unit < 0: raise ValueError(f'temporal_unit must be >= 0, got {temporal_unit}')
        if max_len == 'auto': max_len = 3000 if loss == 'ts2vec' else None
        if max_len is not None and max_len < 2: raise ValueError(f'max_len must be >= 2 or None, got {max_len}')
        if augs is None: augs = default_augs(loss)
        self.aug = augs if callable(augs) and not isinstance(augs, (list, tuple)) else Compose(list(augs))
        if loss == 'ts2vec' and getattr(self.aug, 'changes_layout', False):
            raise ValueError('With loss="ts2vec" the views are overlapping crops made by the task: pass only '
                             f'layout-preserving augmentations (no RandomCrop/Resize), got {self.aug!r}.')
        self.loss_kind, self.temperature, self.proj_dim, self.hidden = loss, temperature, proj_dim, hidden
        self.alpha, self.temporal_unit, self.min_overlap, self.pad_aware = alpha, temporal_unit, min_overlap, pad_aware
        self.max_len = max_len
        self._pa, self._hooks, self._warned_single, self._sync_checked = None, [], False, True

    # -- head and backbone -----------------------------------------------------------------------------
    def make_head(self, nf, c_in):
        cls = TimestepProjectionHead if self.loss_kind == 'ts2vec' else ProjectionHead
        return cls(nf, self.hidden, self.proj_dim)

    @contextlib.contextmanager
    def wrap_backbone(self, backbone):
        if not self.pad_aware:
            yield backbone; return
        with padding_aware(backbone) as pa:
            self._pa = pa
            try: yield backbone
            finally: self._pa = None

    def before_fit(self):
        super().before_fit()
        if self.attached and self._pa is not None:
            # the pretext model's forward(x, mask): hand the mask to the padding-aware layers for that forward only
            # (cleared after it, also when it raises, so a stale mask never reaches another caller of the backbone)
            model, self._sync_checked = self.learn.model, False
            self._hooks = [model.register_forward_pre_hook(self._set_mask),
                           model.register_forward_hook(self._clear_mask, always_call=True)]

    def _set_mask(self, module, args):
        if self._pa is None: return
        if not self._sync_checked:  # distrib_ctx converts BatchNorm after this task's before_fit
            self._sync_checked = True
            warn_sync_batchnorm(self._pa.module)
        self._pa.mask = args[1] if len(args) > 1 else None

    def _clear_mask(self, module, args, out):
        if self._pa is not None: self._pa.mask = None

    def _restore(self):
        for h in self._hooks: h.remove()
        self._hooks = []
        super()._restore()

    # -- batches ---------------------------------------------------------------------------------------
    def make_batch(self, x, pad_mask, raw, generator):
        x, mask = clean_input(x, pad_mask)
        if self.max_len is not None and x.shape[-1] > self.max_len: x, mask = _random_window(x, mask, self.max_len, generator)
        if self.loss_kind == 'ts2vec':
            x1, m1, x2, m2, ov = overlapping_crops(x, mask, self.min_overlap, 2 ** (self.temporal_unit + 1), generator)
            x1, m1 = self.aug(x1, m1, generator=generator)
            x2, m2 = self.aug(x2, m2, generator=generator)
            xb, mb = stack_views(x1, m1, x2, m2)
            yb = (torch.stack([ov.start1, ov.start2, ov.length], 1),)
        else:
            x1, m1 = self.aug(x, mask, generator=generator)
            x2, m2 = self.aug(x, mask, generator=generator)
            xb, mb = stack_views(x1, m1, x2, m2)
            n = x.shape[0]
            idx = torch.arange(n, device=x.device)
            yb = (torch.cat([idx + n, idx]),)  # target: the row of each anchor's positive
        # also for a pretext model run outside fit (`pretext_batch`): the next forward is on these views
        if self._pa is not None: self._pa.mask = mb
        return (xb, mb), yb

    # -- loss and metrics --------------------------------------------------------------------------------
    def _overlaps(self, pred, ov):
        "TS2Vec: the aligned per-timestep representations of the overlaps, ``(n, T, d)`` twice, and their mask."
        n = ov.shape[0]
        z = pred.float().transpose(1, 2)  # (2n, L, d)
        o1, om = gather_segments(z[:n], ov[:, 0], ov[:, 2], dim=1)
        o2, _ = gather_segments(z[n:], ov[:, 1], ov[:, 2], dim=1)
        return o1, o2, om

    def loss(self, pred, *yb):
        if self.loss_kind == 'ts2vec':
            o1, o2, om = self._overlaps(pred, yb[0])
            return hierarchical_contrastive_loss(o1, o2, self.alpha, self.temporal_unit, mask=om)
        n = pred.shape[0] // 2
        if n < 2 and not self._warned_single:
            self._warned_single = True
            warnings.warn('A batch with a single series: NT-Xent has no negatives and its loss is 0. Use at least 2 '
                          'series per batch (drop_last=True for training, 2+ validation series).', stacklevel=2)
        z = pred.float()
        return nt_xent(z[:n], z[n:], self.temperature)

    def _correct(self, pred, tgt):
        if self.loss_kind == 'ts2vec':  # instance-level: the overlaps' mean representations
            o1, o2, om = self._overlaps(pred.detach(), tgt)
            m = om[..., None].float()
            cnt = m.sum(1).clamp_min(1)
            return contrastive_correct(torch.cat([(o1 * m).sum(1) / cnt, (o2 * m).sum(1) / cnt]))
        return contrastive_correct(pred)

    def metrics(self):
        return [CountMetric(self._correct, 'contrast_acc')]


class TS2VecPretrain(ContrastivePretrain):
    """`ContrastivePretrain` with ``loss='ts2vec'``: TS2Vec's hierarchical contrast of two overlapping crops.

    Args: see `ContrastivePretrain` (``augs`` must keep the layout; default ``Scaling(0.1), Jitter(0.03)``).
    """

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, proj_dim: int = 128,
                 hidden: int | None = None, alpha: float = 0.5, temporal_unit: int = 0, min_overlap: float = 0.,
                 max_len: int | None = 3000, pad_aware: bool = True, save_as: str | Path | None = None,
                 save: str = 'best', seed: int = 0):
        super().__init__(augs=augs, loss='ts2vec', proj_dim=proj_dim, hidden=hidden, alpha=alpha,
                         temporal_unit=temporal_unit, min_overlap=min_overlap, max_len=max_len, pad_aware=pad_aware,
                         save_as=save_as, save=save, seed=seed)
