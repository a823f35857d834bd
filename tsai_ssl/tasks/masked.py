"""Masked-value pretraining: hide spans of the input, predict the hidden values (BERT / TST-style, for CNNs).

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=MaskedValuePretrain(save_as='ssl_resnet'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_resnet', strict=False)

Spans have geometric lengths (mean ``mean_span``) covering ``ratio`` of the real (non-padded) steps, as in
Zerveas et al., "A Transformer-based Framework for Multivariate Time Series Representation Learning"
(KDD 2021). Masked steps are filled with a value just below anything in the data (0 is a real value in count
data), so the network can tell "hidden" from "zero": with a vocabulary, the raw value -1 carried through the
batch transforms (so an integer that cannot occur); otherwise a tenth of the data range below the minimum.
Close to the data on purpose: a far-out sentinel would also skew BatchNorm's running statistics, which the
classifier inherits. Two targets:

* ``vocab=41`` (default): categorical over the integers 0..vocab-1, 41-way cross-entropy. Targets are the
  exact original integers, even when batch transforms (TSStandardize) normalise the model input.
* ``vocab=None``: continuous, MSE or Huber in the model's input scale (for real-valued series).

The loss and metrics use masked, non-padded steps only.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..masking import span_mask
from .base import CountMetric, PretextTask

__all__ = ['MaskedValuePretrain', 'MaskedStepsHead', 'pointwise_head', 'check_vocab', 'auto_fill']

IGNORE = -100  # F.cross_entropy's default ignore_index


def pointwise_head(nf: int, n_out: int) -> nn.Module:
    "A small per-timestep MLP (1x1 convolutions): the pretext head, thrown away after pretraining."
    return nn.Sequential(nn.Conv1d(nf, nf, 1), nn.BatchNorm1d(nf), nn.ReLU(), nn.Conv1d(nf, n_out, 1))


class MaskedStepsHead(nn.Module):
    """`pointwise_head` run only at the masked steps, the only ones the loss reads (zeros at the other steps).

    ``forward(h (bs, nf, L), mask (bs, L) | None) -> (bs, n_out, L)``; ``mask=None``: every step. Why: the head's
    hidden layer over every step of a long batch cost about as much as one more backbone layer; at 15% masked
    steps it now costs a sixth of that. Its BatchNorm sees the masked steps only (the steps it is trained on)."""

    def __init__(self, nf: int, n_out: int):
        super().__init__()
        self.mlp = pointwise_head(nf, n_out)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None: return self.mlp(h)
        b, t = mask.nonzero(as_tuple=True)
        if len(b) < 2 and self.training:  # BatchNorm needs 2+ values in training: run on every step instead
            return self.mlp(h).masked_fill(~mask[:, None], 0.)
        y = self.mlp(h[b, :, t].T[None])[0]  # the masked steps as one sequence: (n_out, n)
        out = y.new_zeros(h.shape[0], y.shape[0], h.shape[-1])
        out[b, :, t] = y.T
        return out


def check_vocab(raw: torch.Tensor, valid: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """Raw values as class indices; `ValueError` if a real step is not an integer in 0..vocab-1.

    A 1e-3 tolerance absorbs float error when the raw scale was recovered by decoding a normalising batch
    transform (tsai `get_ts_dls` + `TSStandardize`); `get_ssl_dls` keeps the raw batch, which is exact."""
    tgt = raw.round()
    bad = ((tgt - raw).abs() > 1e-3) | (tgt < 0) | (tgt >= vocab)
    if valid is not None: bad &= valid[:, None]
    if bool(bad.any()):
        i, c, t = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f'Input value {raw[i, c, t].item()} (batch item {i}, channel {c}, step {t}) is not an integer in '
                         f'0..{vocab - 1}. Use vocab=None for real-valued series, or quantize them (tsai_ssl.datasets.quantize).')
    return tgt.long()


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
        vocab: number of integer values (categorical target over 0..vocab-1), or None for a continuous target.
        loss: continuous only: 'mse' or 'huber'.
        fill: value masked steps get in the model-input scale; 'auto' = per channel, from the first batch: raw -1
            mapped like the data (categorical), or 0.1 x the data range below the minimum (continuous).
        save_as, save, seed: see `PretextTask`.
    """

    def __init__(self, ratio: float = 0.15, mean_span: float = 5., vocab: int | None = 41, loss: str = 'mse',
                 fill: float | str = 'auto', save_as: str | Path | None = None, save: str = 'best', seed: int = 0):
        super().__init__(save_as=save_as, save=save, seed=seed)
        if not 0 < ratio < 1: raise ValueError(f'ratio must be in (0, 1), got {ratio}')
        if vocab is not None and vocab < 2: raise ValueError(f'vocab must be >= 2 or None, got {vocab}')
        if loss not in ('mse', 'huber'): raise ValueError(f"loss must be 'mse' or 'huber', got {loss!r}")
        self.ratio, self.mean_span, self.vocab, self.loss_kind = ratio, mean_span, vocab, loss
        self.fill_value = None if fill == 'auto' else torch.tensor(float(fill))

    def make_head(self, nf, c_in):
        self.c_in = c_in
        return MaskedStepsHead(nf, c_in * (self.vocab or 1))

    def _fill_for(self, x, raw, pad_mask):
        if self.fill_value is None: self.fill_value = auto_fill(x, raw, pad_mask, categorical=self.vocab is not None)
        return self.fill_value.to(x.device, x.dtype).reshape(-1, 1) if self.fill_value.ndim else self.fill_value.to(x)

    def make_batch(self, x, pad_mask, raw, generator):
        bs, C, L = x.shape
        m = span_mask(bs, L, self.ratio, self.mean_span, pad_mask=pad_mask, generator=generator, device=x.device)
        xm = torch.where(m[:, None], self._fill_for(x, raw, pad_mask), x)
        if self.vocab is None: return (xm, m), (x, m)  # the model gets the mask too: its head runs on masked steps
        tgt = check_vocab(raw, pad_mask, self.vocab).masked_fill(~m[:, None], IGNORE)
        return (xm, m), (tgt,)

    # pred: (bs, C*V, L) categorical or (bs, C, L) continuous
    def loss(self, pred, *yb):
        if self.vocab is None:
            target, m = yb
            f = F.mse_loss if self.loss_kind == 'mse' else F.huber_loss
            err = f(pred.float(), target.float(), reduction='none') * m[:, None]
            return err.sum() / (m.sum() * target.shape[1]).clamp_min(1)
        tgt = yb[0]
        logits = pred.float().reshape(pred.shape[0], -1, self.vocab, pred.shape[-1]).transpose(1, 2)  # (bs, V, C, L)
        n = (tgt != IGNORE).sum()
        return F.cross_entropy(logits, tgt, ignore_index=IGNORE, reduction='sum') / n.clamp_min(1)

    def metrics(self):
        if self.vocab is None: return [CountMetric(_masked_sq_err, 'masked_mse')]
        return [CountMetric(lambda p, t: _masked_correct(p, t, self.vocab), 'masked_acc')]

    # -- looking at it ---------------------------------------------------------------------------------
    def show_preds(self, n: int = 3, dl=None, max_steps: int = 400, path: str | Path | None = None):
        """Plot, for `n` validation series, the original input, the masked spans and the predictions there.

        Returns the matplotlib figure; writes a PNG when `path` is given. Runs outside fit (temporarily
        attaching the pretext head; the Learner is restored afterwards).
        """
        from ..plots import show_masked_preds
        return show_masked_preds(self, n=n, dl=dl, max_steps=max_steps, path=path)


def _masked_correct(pred, tgt, vocab):
    logits = pred.reshape(pred.shape[0], -1, vocab, pred.shape[-1])
    keep = tgt != IGNORE
    return (logits.argmax(2) == tgt)[keep].sum(), keep.sum()


def _masked_sq_err(pred, target, m):
    return (((pred - target) ** 2) * m[:, None]).sum(), m.sum() * target.shape[1]
