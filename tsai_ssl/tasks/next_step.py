"""Next-step prediction: predict x[t+1] (or x[t+1..t+k]) from x[..t], with the classifier's own backbone.

tsai's CNNs pad symmetrically, so their output at step t has seen the future: up to ``R`` steps ahead, the
backbone's look-ahead (18 for ResNetPlus). Two ways to make the prediction causal, with the *same* parameters, so
the weights transfer into the ordinary (non-causal) classifier afterwards:

* ``causal='shift'`` (default): run the backbone exactly as the classifier does and predict x[t+1] from its output
  at step ``t - R``, which has seen x[..t] and nothing later. ``R`` is measured at the start of every fit
  (`tsai_ssl.backbone.lookahead`). It costs nothing over a supervised step and works for any backbone whose
  output keeps the length and sees a bounded stretch ahead; the first ``R`` steps of each series get no prediction.
* ``causal='pad'``: run the backbone through `tsai_ssl.backbone.causal` (every convolution and pooling layer pads on
  the left only), verified with `check_causal`. Every step gets a prediction, but each layer copies its padded
  input: 1.1-1.5x a supervised step at long lengths.

On a Transformer (`TSTPlus`, `TSiTPlus`) both run with a causal attention mask (`tsai_ssl.transformer`): with
'shift', ``R`` is then the patch size minus one (0 when every step is a position); 'pad' needs one position per step.

With 'shift' the features are exactly the ones the classifier computes later; with 'pad' the same weights compute
a different function (in a residual block the shortcut sees step t while the convolutions see a window ending at t,
not centred on the shortcut's step).

In training the head runs on a random share of the steps (``steps=0.25``) and only those are scored, as the
masked-value head runs on the masked steps only; validation scores every step.

The next value can be a classification over a vocabulary (default 41 values, 0..40: the targets are the exact
raw integers even when the input is normalised) or a continuous regression (``n_values=None``, MSE/Huber).
Metrics print next to two trivial baselines on the same steps, so learning beyond copying is visible:
``repeat_acc`` (predict the previous value) and ``mode_acc`` (always predict the most frequent value).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import causal, check_causal, lookahead
from ..transformer import TransformerBackbone, causal_attention
from .base import CountMetric, PretextTask, sum_over_processes
from .targets import IGNORE, MaskedStepsHead, check_n_values

__all__ = ['NextStepPretrain', 'ShiftedHead']


class _ModeMetric(CountMetric):
    "Accuracy of always predicting the epoch's most frequent next value (an optimistic constant baseline)."

    def __init__(self, n_values: int):
        super().__init__(None, 'mode_acc')
        self.n_values = n_values

    def reset(self): self.hist = torch.zeros(self.n_values, dtype=torch.long)

    def accumulate(self, learn):
        tgt = learn.yb[0][:, 0]
        self.hist += sum_over_processes(torch.bincount(tgt[tgt != IGNORE].flatten(), minlength=self.n_values)).cpu()

    @property
    def value(self): return (self.hist.max() / self.hist.sum()).item() if self.hist.sum() else None


class ShiftedHead(nn.Module):
    """The pretext head, its output moved ``shift`` steps later: the prediction at step t comes from the backbone's
    output at ``t - shift`` (zeros for t < shift). ``shift`` is set by the task (0: unchanged)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head, self.shift = head, 0

    def forward(self, h: torch.Tensor, *args) -> torch.Tensor:
        y = self.head(h, *args)
        if not self.shift: return y
        L = y.shape[-1]
        return F.pad(y[..., :max(L - self.shift, 0)], (min(self.shift, L), 0))


class NextStepPretrain(PretextTask):
    """fastai callback: causal next-value prediction on any backbone `split_backbone` supports.

    Args:
        horizon: predict the next `horizon` values from each step (loss averaged over all of them).
        steps: share of the steps scored in a training batch, drawn at random (validation scores every step). The
            head runs on those steps only: over every step of a long batch it costs about as much as one more
            backbone layer, and neighbouring steps' targets are largely redundant.
        causal: 'shift' (predict from the output ``R`` steps back) or 'pad' (left-padded layers); see the module
            docstring.
        n_values: number of integer values (categorical over 0..n_values-1), or None for a continuous target.
        loss: continuous only: 'mse' or 'huber'.
        check: ``causal='pad'``: verify causality (a perturbation test on a short random input) at the start of each
            fit (with 'shift' the measurement of ``R`` is the check).
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        task = NextStepPretrain(n_values=41, save_as='ssl_next')   # next value as a 41-way classification
        learn = ts_learner(dls_u, ResNetPlus, cbs=task)
        learn.fit_one_cycle(10, 1e-3)
        task.plot_next(item=0)                       # predicted distribution vs the real next values
        ```
    """
    task_name, aliases, label = 'next', ('next-step', 'nextstep'), 'next-step'

    def __init__(self, horizon: int = 1, n_values: int | None = 41, loss: str = 'mse', causal: str = 'shift',
                 steps: float = 0.25, check: bool = True, save_as: str | Path | None = None, save: str = 'best',
                 seed: int = 0, pad_aware: bool = True):
        super().__init__(save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if horizon < 1: raise ValueError(f'horizon must be >= 1, got {horizon}')
        if n_values is not None and n_values < 2: raise ValueError(f'n_values must be >= 2 or None, got {n_values}')
        if loss not in ('mse', 'huber'): raise ValueError(f"loss must be 'mse' or 'huber', got {loss!r}")
        if causal not in ('shift', 'pad'): raise ValueError(f"causal must be 'shift' or 'pad', got {causal!r}")
        if not 0 < steps <= 1: raise ValueError(f'steps must be in (0, 1], got {steps}')
        self.horizon, self.n_values, self.loss_kind, self.check = horizon, n_values, loss, check
        self.causal_mode, self.steps, self._warned_short = causal, steps, False

    def make_head(self, nf, c_in):
        self.c_in = c_in
        return ShiftedHead(MaskedStepsHead(nf, self.horizon * c_in * (self.n_values or 1)))

    @contextlib.contextmanager
    def wrap_backbone(self, backbone):
        if self.causal_mode == 'shift':
            with contextlib.ExitStack() as stack:
                if isinstance(backbone, TransformerBackbone):  # attention sees every step: make it causal
                    stack.enter_context(causal_attention(backbone))
                self.pretext_head.shift = lookahead(backbone, self._c_in())
                yield backbone
            return
        self.pretext_head.shift = 0
        with causal(backbone):
            if self.check: check_causal(backbone, self._c_in())
            yield backbone

    def make_batch(self, x, pad_mask, raw, generator):
        bs, C, L = x.shape
        H = self.horizon
        real = torch.ones(bs, L, dtype=torch.bool, device=x.device) if pad_mask is None else pad_mask
        shift = self.pretext_head.shift if self.pretext_head is not None else 0  # steps < shift: no prediction
        if shift and L <= shift + 1 and not self._warned_short:
            self._warned_short = True
            warnings.warn(f"Series of {L} steps or fewer have no next-step target with causal='shift': the backbone sees "
                          f"{shift} steps ahead, so predictions start at step {shift}. Use causal='pad' for such short "
                          "series (or crop less).", stacklevel=2)
        # scored steps: all (validation) or a random share (training); `sel` in the backbone output's steps,
        # `scored` in the prediction's (`shift` later); nothing before `shift`
        sel = None
        scored = torch.ones(bs, L, dtype=torch.bool, device=x.device)
        if self.steps < 1 and self.pretext_head is not None and self.pretext_head.training:  # a training forward
            dev = generator.device if generator is not None else x.device
            sel = (torch.rand(bs, L, generator=generator, device=dev) < self.steps).to(x.device)
            scored = F.pad(sel[:, :max(L - shift, 0)], (min(shift, L), 0), value=False)
        else: scored[:, :shift] = False
        xb = (x, pad_mask) if sel is None else (x, pad_mask, sel)
        if self.n_values is not None:
            cur = check_n_values(raw, pad_mask, self.n_values, self.series_index)
            tgt = torch.full((bs, H, C, L), IGNORE, dtype=torch.long, device=x.device)
            for k in range(1, min(H, L - 1) + 1):  # over the horizon (small), not samples; none exists >= L ahead
                tgt[:, k - 1, :, :L - k] = cur[..., k:].masked_fill(~real[:, None, k:], IGNORE)
            return xb, (tgt.masked_fill(~scored[:, None, None], IGNORE), cur)
        tgt = torch.zeros(bs, H, C, L, device=x.device, dtype=x.dtype)
        w = torch.zeros(bs, H, 1, L, device=x.device, dtype=x.dtype)
        for k in range(1, min(H, L - 1) + 1):
            tgt[:, k - 1, :, :L - k] = x[..., k:]
            w[:, k - 1, 0, :L - k] = real[:, k:].to(x.dtype)
        return xb, (tgt, w * scored[:, None, None], x)

    def _logits(self, pred):  # (bs, H*C*V, L) -> (bs, V, H, C, L)
        bs, _, L = pred.shape
        return pred.float().reshape(bs, self.horizon, -1, self.n_values, L).permute(0, 3, 1, 2, 4)

    def loss(self, pred, *yb):
        if self.n_values is None:
            tgt, w, _ = yb
            f = F.mse_loss if self.loss_kind == 'mse' else F.huber_loss
            err = f(pred.float().reshape(tgt.shape), tgt.float(), reduction='none') * w
            return err.sum() / (w.sum() * tgt.shape[2]).clamp_min(1)
        tgt = yb[0]
        n = (tgt != IGNORE).sum()
        return F.cross_entropy(self._logits(pred), tgt, ignore_index=IGNORE, reduction='sum') / n.clamp_min(1)

    def metrics(self):
        if self.n_values is None:
            return [CountMetric(self._sq_err, 'next_mse'), CountMetric(self._repeat_sq_err, 'repeat_mse')]
        return [CountMetric(lambda p, t, c: self._topk(p, t, 1), 'next_acc'),
                CountMetric(lambda p, t, c: self._topk(p, t, 3), 'top3_acc'),
                CountMetric(self._repeat_correct, 'repeat_acc'), _ModeMetric(self.n_values)]

    # metrics on the first horizon step (t+1)
    def _topk(self, pred, tgt, k):
        top = self._logits(pred)[:, :, 0].topk(min(k, self.n_values), dim=1).indices  # (bs, k, C, L)
        t = tgt[:, 0]
        keep = t != IGNORE
        return ((top == t[:, None]).any(1) & keep).sum(), keep.sum()

    @staticmethod
    def _repeat_correct(pred, tgt, cur):
        t = tgt[:, 0]
        keep = t != IGNORE
        return ((cur == t) & keep).sum(), keep.sum()

    def _sq_err(self, pred, tgt, w, x):
        p = pred.float().reshape(tgt.shape)[:, 0]
        return (((p - tgt[:, 0]) ** 2) * w[:, 0]).sum(), w[:, 0].sum() * tgt.shape[2]

    @staticmethod
    def _repeat_sq_err(pred, tgt, w, x):
        return (((x - tgt[:, 0]) ** 2) * w[:, 0]).sum(), w[:, 0].sum() * tgt.shape[2]

    # -- looking at it ---------------------------------------------------------------------------------
    def plot_next(self, item: int = 0, dl=None, start: int = 0, steps: int = 200, path: str | Path | None = None):
        """Predicted distribution of the next value (heat map) against the actual next values over a stretch of
        a validation series. Returns the matplotlib figure; writes a PNG when `path` is given."""
        from ..plots import plot_next_step
        return plot_next_step(self, item=item, dl=dl, start=start, steps=steps, path=path)
