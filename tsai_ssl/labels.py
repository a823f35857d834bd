"""Label fractions and stratified labeled subsets (numpy only).

    check_fractions([0.05, 1])        # (0.05, 1.0); InputError outside (0, 1]
    idx = label_subset(y, 0.05, seed=0)   # sorted indices, at least one label per class, nested across fractions
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError

__all__ = ['DEFAULT_FRACTIONS', 'check_fractions', 'label_subset', 'min_fraction', 'n_labels', 'fmt_frac']

DEFAULT_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 1.0)


def fmt_frac(f: float) -> str:
    "A fraction as a percentage for tables and messages ('5%', '0.5%')."
    p = 100 * f
    return f'{p:.0f}%' if abs(p - round(p)) < 1e-9 else f'{p:.3g}%'


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    "Sorted unique fractions; `InputError` unless each is in (0, 1]."
    out = []
    for f in fractions:
        try: f = float(f)
        except (TypeError, ValueError): raise InputError(f'label fraction {f!r} is not a number') from None
        if not (0 < f <= 1) or math.isnan(f):
            raise InputError(f'label fraction {f:g} is outside (0, 1]: use e.g. 0.05 for 5% of the labels')
        if f not in out: out.append(f)
    if not out: raise InputError('no label fractions given')
    return tuple(sorted(out))


def n_labels(n: int, fraction: float) -> int:
    "How many of `n` labeled series a fraction keeps (rounded, at least 1)."
    return min(n, max(1, int(math.floor(fraction * n + 0.5))))


def _allocate(counts: np.ndarray, k: int) -> np.ndarray:
    "k labels over classes proportionally to `counts` (largest remainder), then at least one per class."
    quota = counts * k / counts.sum()
    alloc = np.minimum(np.floor(quota).astype(np.int64), counts)
    order = np.lexsort((np.arange(len(counts)), -(quota - np.floor(quota))))  # largest remainder first
    i = 0
    while alloc.sum() < k:
        c = order[i % len(order)]
        if alloc[c] < counts[c]: alloc[c] += 1
        i += 1
    for c in np.flatnonzero(alloc == 0):  # take from the largest allocation, which stays >= 1
        donor = int(np.argmax(alloc))
        alloc[donor] -= 1; alloc[c] = 1
    return alloc


def label_subset(y, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified subset of ``round(fraction * len(y))`` labeled series, at least one per class.

    Deterministic for a given seed; for one seed the subsets of growing fractions are nested (each class is
    drawn in one fixed random order). Raises `InputError` when the fraction is not in (0, 1] or when it
    leaves a class without a label (fewer labels than classes).
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0: raise InputError('label_subset needs a non-empty 1-D label vector')
    f = check_fractions([fraction])[0]
    classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    k = n_labels(len(y), f)
    if k < len(classes):
        need = len(classes) / len(y)
        raise InputError(
            f'label fraction {fmt_frac(f)} leaves a class without a label: {fmt_frac(f)} of {len(y)} labeled series '
            f'is {k} series for {len(classes)} classes; use a fraction of at least {math.ceil(need * 1000) / 1000:g}')
    alloc = _allocate(counts, k)
    rng = np.random.default_rng(seed)
    idxs = [rng.permutation(np.flatnonzero(inv == c))[:alloc[c]] for c in range(len(classes))]
    return np.sort(np.concatenate(idxs))


def min_fraction(y) -> float:
    "The smallest label fraction that gives every class a label."
    y = np.asarray(y)
    n_cls = len(np.unique(y))
    f = n_cls / len(y)
    while n_labels(len(y), f) < n_cls: f += 1 / (2 * len(y))
    return f
