"""Masked-value pretraining: hide spans of the input, predict the hidden values (BERT / TST-style, for CNNs).

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl_resnet'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_resnet', strict=False, with_opt=False)

Spans have geometric lengths (mean ``mean_span``) covering ``ratio`` of the real (non-padded) steps, as in
Zerveas et al., "A Transformer-based Framework for Multivariate Time Series Representation Learning"
(KDD 2021). Masked steps are filled with a value just below anything in the data (0 is a real value in count
data), so the network can tell "hidden" from "zero": categorical, the raw value -1 carried through the
batch transforms (so an integer that cannot occur); otherwise a tenth of the data range below the minimum.
Close to the data on purpose: a far-out sentinel would also skew BatchNorm's running statistics, which the
classifier inherits. Two targets:

* ``n_values=41`` (default): categorical over the integers 0..n_values-1, 41-way cross-entropy. Targets are the
  exact original integers, even when batch transforms (TSStandardize) normalise the model input.
* ``n_values=None``: continuous, MSE or Huber in the model's input scale (for real-valued series).

The loss and metrics use masked, non-padded steps only.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..masking import span_mask
from .base import CountMetric, PretextTask
from .targets import IGNORE, MaskedStepsHead, check_n_values

__all__ = ['MaskedValuePretrain', 'auto_fill']


def auto_fill(x: torch.Tensor, raw: torch.Tensor, pad_mask, categorical: bool) -> torch.Tensor:
    """Per-channel fill value in the model-input scale, just outside the data of this batch.

    Categorical: the raw value -1 mapped through the (per-channel affine, e.g. standardising) batch transforms,
    estimated from the batch as x = a * raw + b. Continuous: 0.1 x the range below the minimum."""
    C = x.shape[1]
    keep = torch.ones_like(x[:, 0], dtype=torch.bool) if pad_mask is None else pad_mask
    xs = x.transpose(0, 1)[:, keep].reshape(C, -1).double()
    if categorical:
        rs = raw.transpose(0, 1)[:, keep].reshape(C, -1).double()
        a = xs.std(1) / rs.std(1).clamp_min(1e-12)
        a = torch.where(rs.std(1) > 0, a, torch.ones_like(a))
        b = xs.mean(1) - a * rs.mean(1)
        return (b - a).float().detach().cpu()  # a * (-1) + b
    lo, hi = xs.amin(1), xs.amax(1)
    return (lo - 0.1 * (hi - lo).clamp_min(1e-3)).float().detach().cpu()


class MaskedValuePretrain(PretextTask):
    """fastai callback for masked-value pretraining of any backbone `split_backbone` supports.

    Args:
        ratio: expected share of real steps that are masked.
        mean_span: mean masked span length (geometric).
        n_values: number of integer values (categorical target over 0..n_values-1), or None for a continuous target.
        loss: continuous only: 'mse' or 'huber'.
        fill: value masked steps get in the model-input scale; 'auto' = per channel, from the first batch: raw -1
            mapped like the data (categorical), or 0.1 x the data range below the minimum (continuous). The value
            found is part of the task's `state_dict`, so a resumed `Checkpoint` run uses the same one.
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=MaskedValuePretrain(n_values=41, ratio=0.15, save_as='ssl'))
        learn.fit_one_cycle(10, 1e-3)                # writes models/ssl.pth: the backbone, classifier names
        clf = ts_learner(dls, ResNetPlus, metrics=accuracy)
        clf.load('ssl', strict=False, with_opt=False)
        ```
    """
    task_name, aliases, label = 'masked', ('mask', 'masked-value'), 'masked-value'

    def __init__(self, ratio: float = 0.15, mean_span: float = 5., n_values: int | None = 41, loss: str = 'mse',
                 fill: float | str = 'auto', save_as: str | Path | None = None, save: str = 'best', seed: int = 0,
                 pad_aware: bool = True):
        super().__init__(save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if not 0 < ratio < 1: raise ValueError(f'ratio must be in (0, 1), got {ratio}')
        if mean_span * (1 - ratio) / ratio < 1 - 1e-9:  # the unmasked runs between spans need a mean length >= 1
            raise ValueError(f'ratio={ratio} is too high for mean_span={mean_span}: use ratio <= '
                             f'{mean_span / (mean_span + 1):.3g} or a larger mean_span')
        if n_values is not None and n_values < 2: raise ValueError(f'n_values must be >= 2 or None, got {n_values}')
        if loss not in ('mse', 'huber'): raise ValueError(f"loss must be 'mse' or 'huber', got {loss!r}")
        self.ratio, self.mean_span, self.n_values, self.loss_kind = ratio, mean_span, n_values, loss
        self.fill_value = None if fill == 'auto' else torch.tensor(float(fill))

    def make_head(self, nf, c_in):
        self.c_in = c_in
        return MaskedStepsHead(nf, c_in * (self.n_values or 1))

    def state_dict(self) -> dict:
        return dict(super().state_dict(), fill_value=self.fill_value)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get('fill_value') is not None: self.fill_value = state['fill_value']

    def _fill_for(self, x, raw, pad_mask):
        if self.fill_value is None:
            self.fill_value = auto_fill(x, raw, pad_mask, categorical=self.n_values is not None)
        return self.fill_value.to(x.device, x.dtype).reshape(-1, 1) if self.fill_value.ndim else self.fill_value.to(x)

    def make_batch(self, x, pad_mask, raw, generator):
        bs, C, L = x.shape
        m = span_mask(bs, L, self.ratio, self.mean_span, pad_mask=pad_mask, generator=generator, device=x.device)
        xm = torch.where(m[:, None], self._fill_for(x, raw, pad_mask), x)
        xb = (xm, pad_mask, m)  # the head runs on the masked steps only
        if self.n_values is None: return xb, (x, m)
        tgt = check_n_values(raw, pad_mask, self.n_values, self.series_index).masked_fill(~m[:, None], IGNORE)
        return xb, (tgt,)

    # pred: (bs, C*V, L) categorical or (bs, C, L) continuous
    def loss(self, pred, *yb):
        if self.n_values is None:
            target, m = yb
            f = F.mse_loss if self.loss_kind == 'mse' else F.huber_loss
            err = f(pred.float(), target.float(), reduction='none') * m[:, None]
            return err.sum() / (m.sum() * target.shape[1]).clamp_min(1)
        tgt = yb[0]
        logits = pred.float().reshape(pred.shape[0], -1, self.n_values, pred.shape[-1]).transpose(1, 2)  # (bs, V, C, L)
        n = (tgt != IGNORE).sum()
        return F.cross_entropy(logits, tgt, ignore_index=IGNORE, reduction='sum') / n.clamp_min(1)

    def metrics(self):
        if self.n_values is None: return [CountMetric(_masked_sq_err, 'masked_mse')]
        return [CountMetric(lambda p, t: _masked_correct(p, t, self.n_values), 'masked_acc')]

    # -- looking at it ---------------------------------------------------------------------------------
    def show_preds(self, n: int = 3, dl=None, max_steps: int = 400, path: str | Path | None = None):
        """Plot, for `n` validation series, the original input, the masked spans and the predictions there.

        Returns the matplotlib figure; writes a PNG when `path` is given. Runs outside fit (temporarily
        attaching the pretext head; the Learner is restored afterwards).
        """
        from ..plots import show_masked_preds
        return show_masked_preds(self, n=n, dl=dl, max_steps=max_steps, path=path)


def _masked_correct(pred, tgt, n_values):
    logits = pred.reshape(pred.shape[0], -1, n_values, pred.shape[-1])
    keep = tgt != IGNORE
    return (logits.argmax(2) == tgt)[keep].sum(), keep.sum()


def _masked_sq_err(pred, target, m):
    return (((pred - target) ** 2) * m[:, None]).sum(), m.sum() * target.shape[1]
