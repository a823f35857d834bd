"""Frozen representations: padding-aware pooled backbone features, a linear probe, and a probe callback.

    emb = get_embeddings(learn, X)                 # (N, nf), rows in the order of X, any lengths
    acc = linear_probe(emb_train, y_train, emb_test, y_test)
    learn = ts_learner(dls, ResNetPlus, cbs=[ContrastivePretrain(), LinearProbe(X_lab, y_lab, every=2)])

Padding invariance: the backbone runs under `tsai_ssl.padding.padding_aware` (see there).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.learner import Learner, Metric
from fastai.torch_core import get_model

from .backbone import Backbone, PretextModel, masked_max, masked_mean, split_backbone
from .data import BucketedDL, SeriesDataset, SSLDataLoaders, batch_pad_mask, to_series_list, validate_series
from .padding import clean_input, padding_aware

__all__ = ['backbone_of', 'pool_features', 'get_embeddings',
           'linear_probe', 'LinearProbe']

_POOLS = ('mean', 'max', 'meanmax')


# ----------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------
def backbone_of(learn_or_model) -> Backbone:
    """The per-timestep backbone of a Learner or model: the pretext model's backbone during pretraining,
    the classifier's (`split_backbone`) otherwise; (Distributed)DataParallel wrappers are unwrapped."""
    model = learn_or_model.model if isinstance(learn_or_model, Learner) else learn_or_model
    model = get_model(model)  # fastai's: without a (Distributed)DataParallel wrapper
    if isinstance(model, PretextModel): return model.backbone
    return split_backbone(model)


def pool_features(h: torch.Tensor, pad_mask: torch.Tensor | None, pool: str | Callable = 'mean') -> torch.Tensor:
    "Pool backbone features ``(bs, nf, L)`` over real steps: 'mean', 'max', 'meanmax' (concatenated) or a callable."
    if callable(pool): return pool(h, pad_mask)
    if pool == 'mean': return masked_mean(h, pad_mask)
    if pool == 'max': return masked_max(h, pad_mask)
    if pool == 'meanmax': return torch.cat([masked_mean(h, pad_mask), masked_max(h, pad_mask)], 1)
    raise ValueError(f'pool must be one of {_POOLS} or a callable, not {pool!r}')


def _loader_for(learn: Learner | None, data, bs: int, device) -> tuple[object, list[int] | None]:
    """A loader over `data` (in a length-sorted order) and the dataset index of each row it yields (None: in order)."""
    from fastai.data.load import DataLoader as FastaiDL
    if isinstance(data, torch.utils.data.DataLoader): return data, None
    if isinstance(data, FastaiDL):
        kw = dict(shuffle=False, drop_last=False)
        if isinstance(data, BucketedDL): kw['crop'] = False
        dl = data.new(**kw)
        return dl, [int(i) for i in dl.get_idxs()]
    dls = getattr(learn, 'dls', None) if learn is not None else None
    if isinstance(dls, SSLDataLoaders):
        dl = dls.test_dl(data, bs=bs)
    else:
        series = to_series_list(data)
        validate_series(series)
        kw = {}
        valid = getattr(dls, 'valid', None) if dls is not None else None
        if valid is not None and getattr(valid, 'after_batch', None) is not None and len(valid.after_batch.fs):
            kw = dict(after_batch=valid.after_batch, do_setup=False)  # the learner's (fitted) batch transforms
        dl = BucketedDL(SeriesDataset(series, split_idx=1), bs=bs, shuffle=False, device=device, **kw)
    return dl, [int(i) for i in dl.get_idxs()]


def get_embeddings(learn_or_model, data, bs: int = 64, pool: str | Callable = 'mean', progress: bool = True,
                   pad_aware: bool = True) -> np.ndarray:
    """Pooled backbone features ``(N, nf)`` (``2 * nf`` for 'meanmax') of series of any length, rows in input order.

    Args:
        learn_or_model: a Learner (its dls' batch transforms are applied), a classifier, a `PretextModel` or a
            `Backbone`.
        data: a list of ``(L_i,)`` / ``(C, L_i)`` series, an ``(N, C, L)`` array (trailing NaN = padding), a
            `RaggedStore`, or a DataLoader (a fastai one is re-made unshuffled and uncropped; a plain torch one is
            used as it is and must yield batches ``x`` or ``(x, ...)`` in order).
        bs: batch size (series are bucketed by length, so little padding).
        pool: 'mean', 'max', 'meanmax' or ``f(h, pad_mask) -> (bs, d)``; over real steps only.
        progress: show a fastprogress bar when there are more than a few batches.
        pad_aware: run the backbone under `padding_aware`, so a series gets the same embedding alone as padded
            in a batch with longer ones.

    The model runs in eval mode without gradients, on its own device; its train/eval mode is restored.

    Example:
        ```python
        emb = get_embeddings(learn, X)               # (N, nf) numpy array, rows in the order of X
        emb2 = get_embeddings(learn, X, pool='meanmax')   # (N, 2 * nf)
        ```
    """
    learn = learn_or_model if isinstance(learn_or_model, Learner) else None
    bb = backbone_of(learn_or_model)
    dl, order = _loader_for(learn, data, bs, next(bb.parameters()).device)
    return _embed_loader(bb, dl, order, pool, progress, pad_aware)


@torch.no_grad()
def _embed_loader(bb: nn.Module, dl, order, pool, progress: bool, pad_aware: bool) -> np.ndarray:
    p = next(bb.parameters())
    n_batches = len(dl) if hasattr(dl, '__len__') else 0
    it = dl
    if progress and n_batches > 8:
        from fastprogress.fastprogress import progress_bar
        it = progress_bar(dl, total=n_batches, leave=False)
    modes = [(m, m.training) for m in bb.modules()]  # restored module by module (e.g. frozen BatchNorm stays frozen)
    bb.eval()
    outs = []
    try:
        with (padding_aware(bb) if pad_aware else contextlib.nullcontext()) as pa:
            for b in it:
                x = b[0] if isinstance(b, (tuple, list)) else b
                x = torch.as_tensor(x).as_subclass(torch.Tensor)
                pad_mask = batch_pad_mask(dl, x)
                x, pad_mask = clean_input(x.to(p.device, p.dtype), None if pad_mask is None else pad_mask.to(p.device))
                if pa is not None: pa.pad_mask = pad_mask
                h = bb(x)
                outs.append(pool_features(h, pad_mask, pool).float().cpu())
    finally:
        for m, training in modes: m.training = training
    emb = torch.cat(outs).numpy() if outs else np.zeros((0, getattr(bb, 'nf', 0) or 0), dtype=np.float32)
    if order is None: return emb
    if len(order) != len(emb): raise RuntimeError(f'The loader yielded {len(emb)} rows for {len(order)} series.')
    out = np.empty_like(emb)
    out[np.asarray(order, dtype=np.int64)] = emb
    return out


# ----------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------
def _probe_model(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def linear_probe(train_emb, y_train, test_emb, y_test, C: float = 1.0, max_iter: int = 1000) -> float:
    """Accuracy on ``(test_emb, y_test)`` of a logistic regression fitted on standardized ``train_emb`` (frozen
    features: the standard measure of representation quality).

    Example:
        ```python
        acc = linear_probe(get_embeddings(learn, X_tr), y_tr, get_embeddings(learn, X_te), y_te)
        ```
    """
    clf = _probe_model(C, max_iter).fit(np.asarray(train_emb), np.asarray(y_train))
    return float((clf.predict(np.asarray(test_emb)) == np.asarray(y_test)).mean())


def _cv_probe(emb, y, n_splits: int, C: float, max_iter: int, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return float(cross_val_score(_probe_model(C, max_iter), emb, y, cv=cv).mean())


class _ProbeMetric(Metric):
    "Carries the probe accuracy into the Recorder's table (None on epochs without a probe)."

    def __init__(self, name: str): self._name, self._value = name, None
    def reset(self): self._value = None
    def accumulate(self, learn): pass
    @property
    def value(self): return self._value
    @property
    def name(self): return self._name


class LinearProbe(Callback):
    """fastai callback: every `every` epochs (and after the last), linear-probe accuracy of the current backbone.

    The embeddings (`get_embeddings`, mean pooling, the learner's batch transforms) of a small labeled set are
    classified by a standardized logistic regression: fitted on ``X_labeled`` and scored on ``X_eval`` when given,
    else `cv`-fold stratified cross-validation on ``X_labeled``. The value appears as a column ``name`` in the
    training table (a validation metric; None on epochs without a probe) and in ``self.history`` as
    ``(epoch, accuracy)``; without a Recorder it is printed. Works during any pretext task (it probes the task's
    backbone) and with ordinary training.

    Args:
        X_labeled: series, in any form `get_embeddings` takes.
        y_labeled: their labels.
        X_eval: optional held-out series (scored instead of the cross-validation).
        y_eval: their labels.
        every: probe every this many epochs.
        cv: folds of the cross-validation (capped by the smallest class count).
        bs: batch size of the embedding pass (see `get_embeddings`).
        pool: pooling over time (see `get_embeddings`).
        C: inverse regularisation strength of the logistic regression.
        max_iter: iterations of the logistic regression.

    Example:
        ```python
        probe = LinearProbe(X_few, y_few)             # 5-fold CV accuracy of a logistic regression on embeddings
        learn = ts_learner(dls_u, ResNetPlus, cbs=[MaskedValuePretrain(save_as='ssl'), probe])
        learn.fit_one_cycle(10, 1e-3)                # a 'probe_acc' column in the training table
        probe.history                                # [(0, 0.41), ..., (9, 0.63)]
        ```
    """
    order = 47  # before_fit after a PretextTask's swap (45) and before the Recorder (50) reads the metric names

    def __init__(self, X_labeled, y_labeled, X_eval=None, y_eval=None, every: int = 1, cv: int = 5, bs: int = 64,
                 pool: str = 'mean', C: float = 1.0, max_iter: int = 1000, name: str = 'probe_acc', seed: int = 0):
        if every < 1: raise ValueError(f'every must be >= 1, got {every}')
        if (X_eval is None) != (y_eval is None): raise ValueError('Pass both X_eval and y_eval, or neither.')
        self.X, self.y = X_labeled, np.asarray(y_labeled)
        self.X_eval, self.y_eval = X_eval, None if y_eval is None else np.asarray(y_eval)
        if len(self.y) != len(to_series_list(X_labeled)): raise ValueError('X_labeled and y_labeled differ in length.')
        _, counts = np.unique(self.y, return_counts=True)
        if len(counts) < 2: raise ValueError('The linear probe needs at least 2 classes.')
        self.n_splits = min(cv, int(counts.min()))
        if X_eval is None and self.n_splits < 2:
            raise ValueError('Cross-validation needs at least 2 labeled series per class (or pass X_eval, y_eval).')
        self.every, self.bs, self.pool, self.C, self.max_iter, self.metric_name, self.seed = every, bs, pool, C, max_iter, name, seed
        self.metric = _ProbeMetric(name)
        self.history: list[tuple[int, float]] = []

    def before_fit(self):
        self._loaders = None  # built on first use, with this fit's dls (batch transforms)
        self.learn.metrics = list(self.learn.metrics) + [self.metric]
        self._in_fit, self._probed_epoch = True, None

    def after_fit(self):
        self._in_fit = False
        self.learn.metrics = [m for m in self.learn.metrics if m is not self.metric]

    def _due(self) -> bool:
        return (self.epoch + 1) % self.every == 0 or self.epoch + 1 == self.n_epoch

    def after_validate(self):
        if getattr(self, '_in_fit', False) and self._due() and self._probed_epoch != self.epoch:
            acc = self.probe()
            self._probed_epoch = self.epoch
            self.metric._value = acc
            self.history.append((self.epoch, acc))
            if getattr(self.learn, 'recorder', None) is None: print(f"epoch {self.epoch}: {self.metric_name} {acc:.4f}")

    def probe(self) -> float:
        "The probe accuracy of the learner's current backbone (the pretext model's during pretraining)."
        bb = backbone_of(self.learn)
        if getattr(self, '_loaders', None) is None:
            dev = next(bb.parameters()).device
            self._loaders = [_loader_for(self.learn, X, self.bs, dev) for X in (self.X, self.X_eval) if X is not None]
        embs = [_embed_loader(bb, dl, order, self.pool, False, True) for dl, order in self._loaders]
        if self.X_eval is None: return _cv_probe(embs[0], self.y, self.n_splits, self.C, self.max_iter, self.seed)
        return linear_probe(embs[0], self.y, embs[1], self.y_eval, self.C, self.max_iter)
