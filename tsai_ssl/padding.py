"""Padding-aware layers: a right-padded batch gives every series what it gets alone.

Padding invariance. A convolution sees its neighbours, so in a right-padded batch the last real steps of a short
series see the padded steps of the batch, which hold non-zero activations after the first layer (biases,
BatchNorm shifts). `padding_aware` removes that leak without touching the model's parameters: while it is active,
every time-mixing layer of the backbone (``Conv1d`` with a kernel > 1, tsai's ``SameConv1d``, ``ConstantPad1d``,
``MaxPool1d``, ``AvgPool1d``) gets its input at padded steps overwritten with what the layer would see past the
end of the series if the series were alone (0, the pad value, or -inf for max pooling), and ``BatchNorm1d`` in
training mode computes its batch statistics (and running statistics) over real steps only. Pointwise layers
(1x1 convolutions, BatchNorm in eval mode, activations, residual additions) cannot leak. Pooling with
`masked_mean` / `masked_max` then gives, in eval mode, the embedding the series gets alone, within float
tolerance. Not covered (they mix all steps or reflect at the edge): squeeze-excite / attention / instance norm
inside the backbone, reflect/replicate padding, ``AvgPool1d(count_include_pad=False)`` and convolutions called
functionally (``F.conv1d``) instead of as modules.

`IgnorePadding` applies the same to a standard tsai classifier (fine-tuning, validation, `get_preds`), and also
makes its global average/max pooling use real steps only.

The mask reaches the layers one way: ``pa.pad_mask = mask`` before a forward (a pretext task's `PretextModel`
sets it for each of its forwards and clears it after; `IgnorePadding` sets it for each batch of a classifier and
clears it after the prediction).
"""
from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.torch_core import get_model

from .backbone import PretextModel, masked_max, masked_mean
from .data import batch_pad_mask

__all__ = ['PaddingAware', 'padding_aware', 'installed', 'clean_input', 'IgnorePadding']

# hooked layer -> the entered contexts hooking it, innermost last (contexts nest: LinearProbe embeds with its own
# context while a pretext task's is entered on the same backbone)
_OWNERS: 'weakref.WeakKeyDictionary[nn.Module, list[PaddingAware]]' = weakref.WeakKeyDictionary()


def clean_input(x: torch.Tensor, pad_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model input without NaN, and its padding mask: tsai-style NaN padding becomes a mask (a step is real when
    none of its channels is NaN), and NaN / padded steps are set to 0."""
    if pad_mask is None and x.is_floating_point() and bool(torch.isnan(x).any()):
        pad_mask = ~torch.isnan(x).any(1)
    if pad_mask is not None:
        x = x.masked_fill(~pad_mask[:, None], 0.)
    return x, pad_mask


def active_owner(module: nn.Module) -> 'PaddingAware | None':
    "The innermost entered `PaddingAware` context over `module` (a layer that reads the mask itself asks this)."
    owners = _OWNERS.get(module)
    return owners[-1] if owners else None


def contexts_over(module: nn.Module, registry) -> list:
    "The entered contexts that `registry` (layer -> contexts hooking it) holds for layers of `module`, each once."
    out = []
    for m in module.modules():
        for ctx in registry.get(m, ()):
            if ctx not in out: out.append(ctx)
    return out


def installed(module: nn.Module) -> list['PaddingAware']:
    "The entered `PaddingAware` contexts that hook layers of `module` (`tsai_ssl.memory` replays their masks)."
    return contexts_over(module, _OWNERS)


class PaddingAware:
    """Makes the time-mixing layers of `module` ignore padded steps while ``self.pad_mask`` is set (see the module
    docstring). Use it as a context manager (`padding_aware`) and set the mask before each forward (example below).

    With ``pad_mask=None`` every layer behaves exactly as without the context. A mask is only applied to inputs
    shaped ``(bs, C, L)`` with the mask's ``bs`` and ``L``, so layers that see a longer, internally padded input
    (e.g. the convolution inside ``SameConv1d``) are left alone; their padding module handled it.

    Args:
        module: the backbone (its parameters are untouched; layers are hooked/patched in place until exit).
        batchnorm: compute training-mode ``BatchNorm1d`` statistics over real steps only.

    Example:
        ```python
        with padding_aware(backbone) as pa:
            pa.pad_mask = pad_mask   # bool (bs, L), True at real steps
            h = backbone(x)          # h at real steps == what each series gives alone (eval mode)
        ```
    """

    def __init__(self, module: nn.Module, batchnorm: bool = True):
        self.module, self.batchnorm = module, batchnorm
        self._pad_mask: torch.Tensor | None = None
        self._handles, self._patched, self._layers = [], [], []

    @property
    def pad_mask(self) -> torch.Tensor | None:
        "The padding mask of the next forwards (bool ``(bs, L)``, True = real step), None if there is no padding."
        return self._pad_mask

    @pad_mask.setter
    def pad_mask(self, pad_mask: torch.Tensor | None):
        # a mask without padded steps is stored as None: every layer then runs its plain (native) path, which gives
        # the same result faster (the contrastive task's equal-length crops, unpadded batches)
        self._pad_mask = None if pad_mask is None or bool(pad_mask.all()) else pad_mask

    # -- install / remove ----------------------------------------------------------------------------
    def __enter__(self) -> 'PaddingAware':
        if self.batchnorm: warn_sync_batchnorm(self.module)
        try:
            for m in self.module.modules():
                if getattr(m, 'takes_pad_mask', False):  # reads the mask itself (`tsai_ssl.transformer`)
                    _OWNERS.setdefault(m, []).append(self); self._layers.append(m)
                    continue
                fill = _fill_value(m)
                if fill is not None:
                    self._handles.append(m.register_forward_pre_hook(self._pre_hook(fill)))
                    if isinstance(m, nn.MaxPool1d): self._handles.append(m.register_forward_hook(self._zero_out_hook))
                elif self.batchnorm and isinstance(m, nn.BatchNorm1d):
                    prev = m.__dict__.get('forward')
                    m.forward = self._bn_forward(m, prev)
                    self._patched.append((m, prev))
                else: continue
                _OWNERS.setdefault(m, []).append(self); self._layers.append(m)
        except BaseException:
            self.__exit__(None, None, None); raise
        return self

    def __exit__(self, *exc):
        for h in self._handles: h.remove()
        for m, prev in reversed(self._patched):
            if prev is None: m.__dict__.pop('forward', None)
            else: m.forward = prev
        for m in self._layers:
            owners = _OWNERS.get(m, [])
            if self in owners: owners.remove(self)
            if not owners: _OWNERS.pop(m, None)
        self._handles, self._patched, self._layers, self.pad_mask = [], [], [], None
        return False

    # -- hooks -----------------------------------------------------------------------------------------
    def _mask_for(self, x) -> torch.Tensor | None:
        m = self._pad_mask
        if m is None or not torch.is_tensor(x) or x.ndim != 3: return None
        if x.shape[0] != m.shape[0] or x.shape[-1] != m.shape[-1]: return None
        return m.to(x.device)

    def _pre_hook(self, fill):
        def hook(mod, args):
            if not args: return None
            m = self._mask_for(args[0])
            if m is None: return None
            x = args[0]
            v = torch.finfo(x.dtype).min if fill == 'min' else fill
            return (x.masked_fill(~m[:, None], v),) + tuple(args[1:])
        return hook

    def _zero_out_hook(self, mod, args, out):
        m = self._mask_for(out)
        return None if m is None else out.masked_fill(~m[:, None], 0.)

    def _bn_forward(self, bn: nn.BatchNorm1d, prev):
        orig = prev if prev is not None else (lambda x: type(bn).forward(bn, x))
        def forward(x):
            use_batch_stats = bn.training or bn.running_mean is None
            m = self._mask_for(x) if use_batch_stats else None
            if m is None: return orig(x)
            return _masked_batch_norm(bn, x, m)
        forward._tsai_ssl_patch = True  # a copy of the module must not take it along (`tsai_ssl.ema`)
        return forward


def warn_sync_batchnorm(module: nn.Module) -> bool:
    """Warn (and return True) if `module` holds ``nn.SyncBatchNorm`` layers, which `PaddingAware` cannot make
    padding-aware: ``learn.distrib_ctx()`` converts BatchNorm to them by default (``sync_bn=True``)."""
    if not any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()): return False
    warnings.warn('nn.SyncBatchNorm layers (learn.distrib_ctx(sync_bn=True)) are not padding-aware: their batch '
                  'statistics include padded steps. Use learn.distrib_ctx(sync_bn=False) for padding-aware '
                  'statistics per process, or keep padding small (bucketed batches).', stacklevel=3)
    return True


def padding_aware(module: nn.Module, batchnorm: bool = True) -> PaddingAware:
    """A `PaddingAware` context for `module` (see there).

    Example:
        ```python
        with padding_aware(split_backbone(model)) as pa:
            pa.pad_mask = pad_mask
            h = pa.module(x)
        ```
    """
    return PaddingAware(module, batchnorm)


def _fill_value(m: nn.Module):
    "What a time-mixing layer sees past the end of a lone series (None: pointwise or not handled)."
    kind = type(m).__name__
    if kind in ('SameConv1d',): return 0.
    if isinstance(m, nn.Conv1d):
        if getattr(m, 'padding_mode', 'zeros') != 'zeros': return None
        k, p = m.kernel_size[0], m.padding
        if k == 1 and (p == 'valid' or p == (0,) or p == 0): return None  # pointwise
        return 0.
    if isinstance(m, nn.ConstantPad1d): return float(m.value)
    if isinstance(m, nn.MaxPool1d): return 'min'
    if isinstance(m, nn.AvgPool1d): return 0.
    return None


def _f32(t: torch.Tensor) -> torch.Tensor:
    "float16/bfloat16 -> float32; float32/float64 as they are."
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    "Per-channel sums of ``a * b`` over batch and time, ``(C,)``, as batched dot products (no full-size temporary)."
    bs, C, L = a.shape
    return torch.bmm(a.reshape(bs * C, 1, L), b.reshape(bs * C, L, 1)).reshape(bs, C).sum(0)


class _MaskedBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of ``x (bs, C, L)`` with statistics over the real steps (``w (bs, 1, L)``: 1 real,
    0 padded) and a hand-written backward. The output at padded steps is normalised too (with the real steps'
    statistics) and its gradient is included exactly.

    Why not plain autograd ops: at long lengths every elementwise op allocates and writes a full-size tensor,
    which costs as much as a convolution layer; the autograd version took ~10 such passes forward and ~15 backward
    (a contrastive step spent more time there than in its convolutions). Here the sums are batched dot products
    (read-only) and the forward/backward write 2 and 3 full-size tensors."""

    @staticmethod
    def forward(ctx, x, w, weight, bias, eps):
        with torch.autocast(x.device.type, enabled=False):  # sums of squares over bs x L steps overflow in fp16
            return _MaskedBatchNorm._forward(ctx, _f32(x).contiguous(), w.to(_f32(x).dtype), weight, bias, eps)

    @staticmethod
    def _forward(ctx, x, w, weight, bias, eps):
        n = w.sum()
        xw = x * w
        mean = xw.sum((0, 2)) / n
        var = (_dots(xw, x) / n - mean * mean).clamp_min(0)  # w is 0/1: sum w x^2 = sum (w x) x
        del xw
        invstd = torch.rsqrt(var + eps)
        y = torch.nn.functional.batch_norm(x, mean, var, weight, bias, False, 0., eps)  # normalise with these stats
        ctx.save_for_backward(x, w, mean, invstd, weight)
        ctx.n, ctx.has_bias = n, bias is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        with torch.autocast(gy.device.type, enabled=False):
            return _MaskedBatchNorm._backward(ctx, _f32(gy).contiguous())

    @staticmethod
    def _backward(ctx, gy):
        x, w, mean, invstd, weight = ctx.saved_tensors
        sg = gy.sum((0, 2))
        sgx = (_dots(gy, x) - mean * sg) * invstd  # sum gy * xhat
        gx = None
        if ctx.needs_input_grad[0]:
            # gx = a gy - w (c x + k): the direct term at every step, the statistics' terms at real steps only
            a = invstd if weight is None else invstd * weight
            c = a * invstd * sgx / ctx.n
            k = a * sg / ctx.n - c * mean
            gx = torch.addcmul(k[:, None], x, c[:, None]).mul_(w).neg_().addcmul_(gy, a[:, None])
        gw = sgx if weight is not None and ctx.needs_input_grad[2] else None
        gb = sg if ctx.has_bias and ctx.needs_input_grad[3] else None
        return gx, None, gw, gb, None


def _masked_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    "Batch norm of ``x (bs, C, L)`` with statistics over real steps only; updates running statistics likewise."
    xf = x.float()
    w = pad_mask[:, None].to(xf.dtype)
    n = w.sum()
    if n < 2: return type(bn).forward(bn, x)
    weight = bn.weight.float() if bn.affine else None
    bias = bn.bias.float() if bn.affine else None
    y, mean, var = _MaskedBatchNorm.apply(xf, w, weight, bias, bn.eps)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            mom = bn.momentum if bn.momentum is not None else 1. / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - mom).add_(mom * mean.detach().to(bn.running_mean.dtype))
            unbiased = var.detach() * (n / (n - 1))
            bn.running_var.mul_(1 - mom).add_(mom * unbiased.to(bn.running_var.dtype))
    return y if torch.is_autocast_enabled() else y.to(x.dtype)


class IgnorePadding(Callback):
    """fastai callback: a standard tsai classifier (or any model) ignores the right-padding of variable-length
    batches, during training, validation and `get_preds`.

    While a batch is processed, the model's time-mixing layers run under `PaddingAware` with the batch's padding
    mask, and global pooling layers (``nn.AdaptiveAvgPool1d``/``AdaptiveMaxPool1d`` to size 1, as in tsai's
    GAP1d/GACP1d heads and fastai's AdaptiveConcatPool1d) pool over real steps only. In eval mode a series then
    gets the prediction it gets alone, whatever it is batched with. Batches without padding are untouched.
    A pooling written as ``x.mean(-1)`` in a model's forward cannot be hooked: use ``nn.AdaptiveAvgPool1d(1)``.
    A `TSTPlus` or `TSiTPlus` classifier gets each batch right-padded to its ``seq_len`` with the padded positions
    masked in the attention (`tsai_ssl.transformer`), so it takes variable-length batches and `test_dl` series of any length up to
    its ``seq_len``. During pretraining the pretext model is covered too: a task made with ``pad_aware=False`` gets a padding-aware
    backbone while this callback is attached (its views' masks reach it through the pretext model's forward).

    Example:
        ```python
        clf = ts_learner(dls, ResNetPlus, metrics=accuracy, cbs=IgnorePadding())
        preds, _ = clf.get_preds(dl=dls.test_dl(X_new, exact=False))   # padded batches, same predictions as alone
        ```
    """
    order = -4  # after a pretext task's swap (-5)

    def __init__(self, batchnorm: bool = True):
        self.batchnorm = batchnorm
        self._pa, self._hooks, self._pretext, self._installed, self._spec, self._attn = None, [], None, False, None, None

    def _install(self):
        self._installed = True
        model = get_model(self.learn.model)
        if isinstance(model, PretextModel):  # the pretext model's forward sets the mask of its own inputs (views)
            if model.pa is None:
                self._pa = PaddingAware(model.backbone, self.batchnorm).__enter__()
                model.pa, self._pretext = self._pa, model
            return
        from .transformer import AttentionMasks, input_spec
        self._spec = input_spec(model)
        if self._spec is not None and self._spec.kind == 'TSiTPlus': self._attn = AttentionMasks(model).__enter__()
        self._pa = PaddingAware(model, self.batchnorm).__enter__()
        self._hooks = [m.register_forward_hook(self._pool_hook) for m in model.modules()
                       if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) and _to_one(m.output_size)]

    def _remove(self):
        for h in self._hooks: h.remove()
        if self._attn is not None: self._attn.__exit__(None, None, None)
        if self._pa is not None: self._pa.__exit__(None, None, None)
        if self._pretext is not None: self._pretext.pa = None
        self._pa, self._hooks, self._pretext, self._installed, self._spec, self._attn = None, [], None, False, None, None

    def before_fit(self): self._remove()  # left over from a fit that an exception ended (fastai ran no after_fit)

    def before_batch(self):
        if self._installed and self._pretext is not None and self._pretext is not get_model(self.learn.model):
            self._remove()  # another pretext model than the one covered
        if not self._installed: self._install()
        if self._pa is None or self._pretext is not None: return
        x = self.learn.xb[0]  # a classifier: this callback sets its mask
        inp, self._pa.pad_mask = self.model_input(x, batch_pad_mask(self.learn, x))
        if inp is not x: self.learn.xb = (inp,) + tuple(self.learn.xb[1:])

    def model_input(self, x, pad_mask):
        """What the classifier takes for the batch `x` with `pad_mask`, and the mask for its padding-aware layers:
        ``(x, pad_mask)`` for a CNN; for a TSTPlus ``((x padded to seq_len, key_padding_mask), real positions)``;
        for a TSiTPlus ``(x padded to seq_len, real positions)``, its attention layers getting the key padding mask
        of that input for the next forwards."""
        if self._spec is None or not torch.is_tensor(x): return x, pad_mask
        from .transformer import _with_token, pad_to_spec
        x, pos_real = pad_to_spec(x, pad_mask, self._spec)
        if self._attn is not None:
            self._attn.key_padding_mask = _with_token(~pos_real, self._spec)
            return x, pos_real
        return (x, ~pos_real), pos_real  # tsai: key_padding_mask True = padded; BatchNorm and pooling: real positions

    def after_pred(self):
        if self._pa is not None and self._pretext is None: self._pa.pad_mask = None
        if self._attn is not None: self._attn.key_padding_mask = None

    def _pool_hook(self, mod, args, out):
        m = self._pa._mask_for(args[0]) if self._pa is not None else None
        if m is None: return None
        pool = masked_mean if isinstance(mod, nn.AdaptiveAvgPool1d) else masked_max
        return pool(args[0], m)[..., None].to(out.dtype)

    # re-installed at the next batch: hooks never outlive the loop that needed them
    def after_validate(self): self._remove()
    def after_fit(self): self._remove()
    def after_cancel_fit(self): self._remove()


def _to_one(size) -> bool: return (size[0] if isinstance(size, (tuple, list)) else size) == 1
