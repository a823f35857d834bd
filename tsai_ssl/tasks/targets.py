"""What the per-step pretext tasks share: integer targets, the ignore index, and a head that runs on chosen steps.

* `IGNORE`: the target of a step that is not scored (``F.cross_entropy``'s default ``ignore_index``).
* `check_n_values`: raw inputs as class indices 0..n_values-1, with an error that names the series and step.
* `MaskedStepsHead`: a small per-step MLP run only at the steps a loss reads (masked steps, sampled steps).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..errors import InputError

__all__ = ['IGNORE', 'check_n_values', 'pointwise_head', 'MaskedStepsHead']

IGNORE = -100  # F.cross_entropy's default ignore_index


def check_n_values(raw: torch.Tensor, pad_mask: torch.Tensor | None, n_values: int,
                   series_index: Callable[[int], int | None] | None = None) -> torch.Tensor:
    """Raw values ``(bs, C, L)`` as class indices ``(bs, C, L)`` (long); `InputError` if a real step is not an
    integer in ``0..n_values-1``.

    ``series_index(i)`` maps batch item ``i`` to the series' index in the user's data (the dataset index), so the
    message points there. A 1e-3 tolerance absorbs float error when the raw scale was recovered by decoding a
    normalising batch transform (tsai `get_ts_dls` + `TSStandardize`); `get_ssl_dls` keeps the raw batch, which is
    exact."""
    tgt = raw.round()
    bad = ((tgt - raw).abs() > 1e-3) | (tgt < 0) | (tgt >= n_values)
    if pad_mask is not None: bad &= pad_mask[:, None]
    if bool(bad.any()):
        i, c, t = (int(v) for v in bad.nonzero()[0])
        idx = series_index(i) if series_index is not None else None
        where = f'series {idx}' if idx is not None else f'batch item {i} (series index unknown: not a tsai-ssl loader)'
        raise InputError(
            f'{where}, channel {c}, step {t} has the value {raw[i, c, t].item():g}, which is not an integer in '
            f'0..{n_values - 1}, so it cannot be a {n_values}-way target. Check the whole data set before training '
            f'with get_ssl_dls(..., n_values={n_values}); for real-valued series use n_values=None (a continuous '
            'target), or quantize them (tsai_ssl.datasets.quantize).')
    return tgt.long()


def pointwise_head(nf: int, n_out: int) -> nn.Module:
    "A small per-timestep MLP (1x1 convolutions): the pretext head, thrown away after pretraining."
    return nn.Sequential(nn.Conv1d(nf, nf, 1), nn.BatchNorm1d(nf), nn.ReLU(), nn.Conv1d(nf, n_out, 1))


class MaskedStepsHead(nn.Module):
    """`pointwise_head` run only at the chosen steps, the only ones the loss reads (zeros at the other steps).

    ``forward(h (bs, nf, L), steps (bs, L) | None) -> (bs, n_out, L)``; ``steps=None``: every step. Why: the head's
    hidden layer over every step of a long batch cost about as much as one more backbone layer; at 15% masked
    steps it costs a sixth of that. Its BatchNorm sees the chosen steps only (the steps it is trained on)."""

    def __init__(self, nf: int, n_out: int):
        super().__init__()
        self.mlp = pointwise_head(nf, n_out)

    def forward(self, h: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        if steps is None: return self.mlp(h)
        b, t = steps.nonzero(as_tuple=True)
        if len(b) < 2 and self.training:  # BatchNorm needs 2+ values in training: run on every step instead
            return self.mlp(h).masked_fill(~steps[:, None], 0.)
        y = self.mlp(h[b, :, t].T[None])[0]  # the chosen steps as one sequence: (n_out, n)
        out = y.new_zeros(h.shape[0], y.shape[0], h.shape[-1])
        out[b, :, t] = y.T
        return out
