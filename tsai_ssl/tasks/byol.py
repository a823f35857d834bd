"""BYOL: pretraining without negatives, a student predicting an EMA teacher's projection of the other view.

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=BYOLPretrain(save_as='ssl_byol'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_byol', strict=False, with_opt=False)

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020. The student (backbone, projector, predictor) predicts the
teacher's projection of the other view of the same series, ``2 - 2 cos(p, z)`` both ways (`tsai_ssl.losses.byol_loss`);
the teacher (`tsai_ssl.ema.EMATeacher`: backbone and projector) follows the student with a momentum that rises from
``momentum`` to 1 on a cosine. No negatives, so no batch size or queue to tune: the usual answer to small batches,
such as the ~8 series of 30720 steps a batch holds. What keeps it from collapsing to a constant is the predictor and
the slow teacher (and BatchNorm in the projector and predictor); the ``embed_std`` metric shows the spread of the
normalised projections across series (about ``1/sqrt(proj_dim)`` when they are spread out, 0 when collapsed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..losses import byol_loss
from .base import CountMetric
from .contrastive import ProjectionHead
from .teacher import TeacherTask

__all__ = ['BYOLPretrain', 'BYOLHead']


class BYOLHead(nn.Module):
    """The student's head: `ProjectionHead` (masked mean over the real steps, MLP) then a predictor MLP.

    ``forward(h (bs, nf, L), pad_mask (bs, L) | None) -> (bs, proj_dim)``; ``projector`` is what the teacher copies."""

    def __init__(self, nf: int, hidden: int | None = None, proj_dim: int = 128, pred_hidden: int = 512):
        super().__init__()
        self.projector = ProjectionHead(nf, hidden, proj_dim)
        self.predictor = nn.Sequential(nn.Linear(proj_dim, pred_hidden), nn.BatchNorm1d(pred_hidden), nn.ReLU(),
                                       nn.Linear(pred_hidden, proj_dim))

    def forward(self, h, pad_mask=None):
        return self.predictor(self.projector(h, pad_mask))


def _embed_std(pred, ids, z):
    "Std across series of the teacher's normalised projections, summed over dimensions, and the dimension count."
    if z.shape[0] < 2: return 0., 0
    zn = nn.functional.normalize(z.detach().float(), dim=1)
    return zn.std(0).sum(), zn.shape[1]


class BYOLPretrain(TeacherTask):
    """fastai callback: BYOL pretraining (no negatives; an EMA teacher) of any backbone `split_backbone` supports.
    See the module docstring.

    Args:
        augs: augmentations applied independently to each view; None = `ContrastivePretrain`'s defaults.
        momentum: the teacher's EMA momentum at the start (BYOL: 0.996 over 300+ epochs; 0.99 for shorter runs).
        momentum_schedule: 'cosine' (BYOL: to 1 over the fit) or 'constant'.
        proj_dim: output size of the projector and the predictor.
        hidden: hidden size of the projector (None: the backbone's nf).
        pred_hidden: hidden size of the predictor.
        window: first cut every series longer than this to a random window (None: no cut).
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=BYOLPretrain(save_as='ssl_byol'))
        learn.fit_one_cycle(10, 1e-3)
        ```
    """
    task_name, aliases, label = 'byol', ('bootstrap',), 'BYOL'
    epoch_cost = 1.3  # the teacher's forward: 1.33x a supervised step at 2048 steps, 1.18x at 8192 (bench/speed_bench.py)

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, momentum: float = 0.99,
                 momentum_schedule: str = 'cosine', proj_dim: int = 128, hidden: int | None = None,
                 pred_hidden: int = 512, window: int | None = None, save_as: str | Path | None = None,
                 save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(augs=augs, momentum=momentum, momentum_schedule=momentum_schedule, window=window,
                         save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        self.proj_dim, self.hidden, self.pred_hidden = proj_dim, hidden, pred_hidden

    def make_student_head(self, nf): return BYOLHead(nf, self.hidden, self.proj_dim, self.pred_hidden)

    def teacher_head(self, head): return head.projector

    def views(self, x, pad_mask, generator):
        x1, m1 = self.aug(x, pad_mask, generator=generator)
        x2, m2 = self.aug(x, pad_mask, generator=generator)
        return x1, m1, x2, m2, (torch.arange(2 * x.shape[0], device=x.device),)

    def loss(self, pred, ids, z):
        n = pred.shape[0] // 2
        return (byol_loss(pred[:n], z[n:]) + byol_loss(pred[n:], z[:n])) / 2

    def metrics(self):
        return [*super().metrics(), CountMetric(_embed_std, 'embed_std')]
