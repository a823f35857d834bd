"""What the contrastive tasks share: two augmented views of every series through the backbone in one forward.

A subclass (`ContrastivePretrain`, `TS2VecPretrain`) says how to make the two views (`TwoViewTask.views`) and what
its loss is; this base does the rest:

* an optional first cut of long series to a random ``window`` of real steps (the loss or the memory may not
  afford whole series);
* the two views concatenated along the batch, right-padded to the longer, with their padding masks
  (``xb = (views (2bs, C, L), pad_mask (2bs, L), pad_mask)``: the pretext model hands the mask to the
  padding-aware backbone and to the head), so a series gets the same representation alone as padded in a batch;
* the ``contrast_acc`` metric: the share of anchors whose most similar other row is their own second view.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..augment import Compose, gather_segments
from .base import CountMetric, PretextTask

__all__ = ['TwoViewTask', 'stack_views', 'random_window', 'contrastive_correct']


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


def random_window(x: torch.Tensor, pad_mask: torch.Tensor | None, window: int, generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    "Each series longer than `window` real steps cut to a uniformly placed window of `window` real steps."
    n = pad_mask.sum(1) if pad_mask is not None else torch.full((x.shape[0],), x.shape[-1], device=x.device)
    crop = n.clamp(max=window)
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device)
    start = torch.minimum((u * (n - crop + 1)).long(), n - crop)
    return gather_segments(x, start, crop, out_len=int(crop.max()))


def contrastive_correct(z: torch.Tensor, pos: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """For ``z = [z1; z2]`` ``(2n, d)``: how many anchors have their positive (row ``pos[i]``; default: the other
    view, ``(i + n) mod 2n``) as the most (cosine-)similar of the other ``2n - 1`` rows, and ``2n``."""
    z = F.normalize(z.detach().float(), dim=1)
    n2 = z.shape[0]
    sim = (z @ z.T).fill_diagonal_(float('-inf'))
    if pos is None: pos = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return (sim.argmax(1) == pos.to(z.device)).sum(), n2


class TwoViewTask(PretextTask):
    """Base of the two-view (contrastive) tasks; see the module docstring. Subclasses implement `views`,
    `make_head`, `loss` and `embed_views` (the per-series vectors the metric compares).

    Args:
        augs: augmentations applied independently to each view (a list, run in order, or one callable with the
            `tsai_ssl.augment` signature ``aug(x, pad_mask, generator) -> (x, pad_mask)``); None = the subclass's
            `default_augs`.
        window: first cut every series longer than this to a random window of ``window`` real steps (training and
            validation); None: no cut.
        save_as, save, seed, pad_aware: see `PretextTask`.
    """

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, window: int | None = None,
                 save_as: str | Path | None = None, save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if window is not None and window < 2: raise ValueError(f'window must be >= 2 or None, got {window}')
        if augs is None: augs = self.default_augs()
        self.aug = augs if callable(augs) and not isinstance(augs, (list, tuple)) else Compose(list(augs))
        self.window = window

    def default_augs(self) -> list: return []

    def views(self, x, pad_mask, generator) -> tuple:
        "``(x1, m1, x2, m2, yb)``: the two view batches with their masks, and the targets the loss and metric read."
        raise NotImplementedError

    def embed_views(self, pred, *yb) -> torch.Tensor:
        "One vector per view, ``(2n, d)`` (``[views 1; views 2]``), for the ``contrast_acc`` metric."
        raise NotImplementedError

    def make_batch(self, x, pad_mask, raw, generator):
        if self.window is not None and x.shape[-1] > self.window:
            x, pad_mask = random_window(x, pad_mask, self.window, generator)
        x1, m1, x2, m2, yb = self.views(x, pad_mask, generator)
        xb, mb = stack_views(x1, m1, x2, m2)
        return (xb, mb, mb), yb

    def _correct(self, pred, *yb):
        return contrastive_correct(self.embed_views(pred.detach(), *yb))

    def metrics(self):
        return [CountMetric(self._correct, 'contrast_acc')]
