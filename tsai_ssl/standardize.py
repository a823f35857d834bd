"""Per-series standardization that ignores padding: each series (per channel) to mean 0 and std 1 over its own real
steps.

tsai's ``TSStandardize()`` uses one mean and std for the whole data set (from a batch), which keeps the scale of each
series. Where series differ in scale by orders of magnitude (PLAID's currents: maxima from 0.02 to 205), the small
ones are then near-constant inputs, and a ResNetPlus trained with all labels reached 30.5% on PLAID; with this transform
it reached 84.0% at 2000 steps and 86.6% at 6000 (docs/results.md). ``TSStandardize(by_sample=True)`` standardizes
per series too, but counts the padded steps of a batch in each series' statistics, so a series' input would change
with its batch neighbours. This transform reads the batch's padding mask instead.

Pretext targets are unaffected: masked-value and next-step targets come from the batch before batch transforms
(``learn.dl.raw_input``), so 41-way targets stay the exact integers.
"""
from __future__ import annotations

import torch
from fastai.data.core import Transform  # fastai re-exports the Transform class it uses (fasttransform today)

__all__ = ['SeriesStandardize']


def _pad_mask_of(items, x: torch.Tensor) -> torch.Tensor | None:
    "The batch's padding mask among the loader's tuple items: a bool ``(bs, L)`` tensor matching `x` (None: no padding)."
    for o in items:
        if isinstance(o, torch.Tensor) and o.dtype == torch.bool and o.shape == (x.shape[0], x.shape[-1]): return o
    return None


class SeriesStandardize(Transform):
    """Batch transform: standardize every series, per channel, over its real steps (padded and NaN steps excluded);
    padded steps become 0 (the series' mean). A constant series becomes 0.

    With `get_ssl_dls` loaders it finds the padding mask in the batch, so a series gets the same input alone, in a
    padded batch and in an exact-length `test_dl`. In other loaders NaN marks padding (tsai's NaN-padded arrays) and
    stays NaN.

    Args:
        eps: added to the standard deviation.

    Example:
        ```python
        dls = get_ssl_dls(X, y, bs=16, batch_tfms=[SeriesStandardize()])
        clf = ts_learner(dls, ResNetPlus, metrics=accuracy)
        ```
    """
    order = 90  # tsai's TSStandardize's place among batch transforms

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def __call__(self, b, **kwargs):
        # the whole tuple, not one item at a time (fastcore's dispatch): the padding mask is another item of it
        if not isinstance(b, tuple): return self.scale(b, None)
        return (self.scale(b[0], _pad_mask_of(b[1:], b[0])),) + tuple(b[1:])

    def scale(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        "`x` ``(bs, C, L)`` standardized per series and channel over the steps where `pad_mask` ``(bs, L)`` is True."
        real = ~torch.isnan(x)
        if pad_mask is not None: real = real & pad_mask[:, None, :]
        w = real.to(x.dtype)
        xz = torch.where(real, x, torch.zeros_like(x))
        n = w.sum(-1, keepdim=True).clamp_min(1)
        mean = xz.sum(-1, keepdim=True) / n
        var = ((xz - mean) * w).pow(2).sum(-1, keepdim=True) / n
        out = (x - mean) / (var.sqrt() + self.eps)
        if pad_mask is not None: out = torch.where(pad_mask[:, None, :], out, torch.zeros_like(out))
        return out
