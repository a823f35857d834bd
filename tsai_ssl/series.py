"""One set of rules for the series users give us, shared by every layer (numpy only: the CLI checks a file
without importing torch).

    series = as_series(X)                       # list of (C, L_i) arrays; trailing NaN padding trimmed
    check_series(series, y, min_len=8, n_values=41)
    n = infer_n_values(series)                  # 41 for integer counts 0..40, None for real values

The rules, the same for `tsai_ssl.data.get_ssl_dls`, the experiment functions, `tsai_ssl.datasets` and the CLI:

* accepted: an ``(N, C, L)`` array, an ``(N, L)`` array where the caller allows it (one channel), a sequence of
  ``(L,)`` / ``(C, L)`` arrays or tensors;
* padding: the trailing steps at which *every* channel is NaN are padding (tsai's NaN-padded arrays) and are cut;
* any other NaN, and any infinite value, is an error naming the series (its index in the user's data) and the step;
* nothing is clipped, cast or dropped. Every error is an `InputError` (a `ValueError`).

Messages name a series as ``X[i]`` (``what='X'``) or through ``name(i) -> str`` when the series came from
somewhere else (the CLI names positions in the user's file that way after a train/test split).
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Sequence

import numpy as np

from .errors import InputError

__all__ = ['as_series', 'trim_padding', 'check_series', 'check_n_values', 'infer_n_values', 'Namer']

Namer = Callable[[int], str]


def _namer(what: str, name: Namer | None) -> Namer:
    return name if name is not None else (lambda i: f'{what}[{i}]')


def as_series(X, what: str = 'X', allow_2d: bool = False, name: Namer | None = None) -> list[np.ndarray]:
    """`X` as a list of ``(C, L_i)`` numpy arrays (views where possible), trailing all-NaN steps cut.

    ``allow_2d``: an ``(N, L)`` array is N one-channel series (the experiment file format allows it; the data
    layer refuses it, since ``(C, L)`` would be just as plausible there).
    """
    name = _namer(what, name)
    if hasattr(X, 'detach'): X = X.detach().cpu().numpy()  # a torch tensor, without importing torch
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 2 and allow_2d: X = X[:, None, :]
        if X.ndim != 3:
            hint = f' For one channel use {what}[:, None, :].' if X.ndim == 2 else ''
            raise InputError(f'{what} has shape {X.shape}: expected a 3-D array (N, C, L) or a list of series.{hint}')
        if len(X) == 0: raise InputError(f'{what} is empty: no series given.')
        if not np.issubdtype(X.dtype, np.floating) or not np.isnan(X).any(): return list(X)
        return [trim_padding(x, i, name) for i, x in enumerate(X)]
    if isinstance(X, (str, bytes)) or not hasattr(X, '__len__') or not hasattr(X, '__getitem__'):
        raise InputError(f'{what} must be an array (N, C, L) or a list of series, got {type(X).__name__}.')
    if len(X) == 0: raise InputError(f'{what} is empty: no series given.')
    out = []
    for i in range(len(X)):
        x = X[i]
        if hasattr(x, 'detach'): x = x.detach().cpu().numpy()
        try: x = np.asarray(x)
        except Exception as e: raise InputError(f'{name(i)} is not an array of numbers ({e}).') from None
        if x.ndim == 1: x = x[None]
        if x.ndim != 2: raise InputError(f'{name(i)} has shape {x.shape}: expected (L,) or (C, L).')
        if x.dtype == object or x.dtype == bool or not np.issubdtype(x.dtype, np.number):
            raise InputError(f'{name(i)} has dtype {x.dtype}: expected numbers.')
        if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any(): x = trim_padding(x, i, name)
        out.append(x)
    return out


def trim_padding(x: np.ndarray, i: int = 0, name: Namer | None = None) -> np.ndarray:
    "``x (C, L)`` without its trailing all-NaN steps; `InputError` naming the step of any other NaN."
    nan = np.isnan(x)
    pad = nan.all(0)
    real = np.flatnonzero(~pad)
    n = int(real[-1]) + 1 if len(real) else 0
    inside = nan[:, :n]
    if inside.any():
        c, t = map(int, np.argwhere(inside)[0])
        where = f'step {t}' + (f' (channel {c})' if x.shape[0] > 1 else '')
        raise InputError(f'{_namer("X", name)(i)} has NaN at {where}, inside the series: NaN is allowed only as '
                         'trailing padding (every channel NaN from some step to the end).')
    return x[:, :n]


def check_n_values(n_values) -> int | None:
    "An int n (values 0..n-1, n >= 2), ``range(n)`` or None; `InputError` otherwise."
    if n_values is None: return None
    if isinstance(n_values, bool): raise InputError(f'n_values must be an int n (values 0..n-1) or None, not {n_values!r}.')
    if isinstance(n_values, Integral):
        if n_values < 2: raise InputError(f'n_values must be at least 2 (values 0..n-1) or None, got {n_values}.')
        return int(n_values)
    if isinstance(n_values, range) and n_values.start == 0 and n_values.step == 1 and len(n_values) >= 2:
        return len(n_values)
    raise InputError(f'n_values must be an int n (values 0..n-1), range(n) or None, not {n_values!r}.')


def check_series(series: Sequence[np.ndarray], y=None, min_len: int = 1, n_values=None, what: str = 'X',
                 name: Namer | None = None) -> None:
    """Check ``(C, L_i)`` series (as `as_series` returns them); `InputError` naming the series, step and value.

    Refuses: no series, non-numeric dtypes, NaN (padding is already cut by `as_series`) or infinite values,
    series shorter than `min_len`, channel counts that differ from the first series', a label count other than
    the series count and, with `n_values` (n: values 0..n-1), non-integer or out-of-range values.
    """
    name = _namer(what, name)
    if len(series) == 0: raise InputError(f'{what} is empty: no series given.')
    n = check_n_values(n_values)
    c0 = None
    for i, x in enumerate(series):
        c0 = x.shape[0] if c0 is None else c0
        if x.ndim != 2: raise InputError(f'{name(i)} has shape {x.shape}: expected (C, L).')
        if x.shape[0] != c0:
            raise InputError(f'{name(i)} has {x.shape[0]} channels but {name(0)} has {c0}: all series need the same channels.')
        if x.shape[-1] < min_len:
            raise InputError(f'{name(i)} has length {x.shape[-1]}, shorter than the minimum of {min_len} steps.')
        if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
            raise InputError(f'{name(i)} has dtype {x.dtype}: expected numbers.')
        if np.issubdtype(x.dtype, np.floating):
            bad = ~np.isfinite(x)
            if bad.any():
                c, t = map(int, np.argwhere(bad)[0])
                kind = 'NaN' if np.isnan(x[c, t]) else f'an infinite value ({x[c, t]})'
                raise InputError(f'{name(i)} has {kind} at step {t}' + (f' (channel {c})' if x.shape[0] > 1 else '') +
                                 ('' if kind != 'NaN' else ', inside the series: NaN is allowed only as trailing padding')
                                 + '.')
        if n is not None:
            bad = (x < 0) | (x >= n) | (x != np.round(x))
            if bad.any():
                c, t = map(int, np.argwhere(bad)[0])
                raise InputError(f'{name(i)} has value {x[c, t]:g} at step {t}' + (f' (channel {c})' if x.shape[0] > 1 else '')
                                 + f': with n_values={n} every value must be an integer in 0..{n - 1}.')
    if y is not None and len(y) != len(series):
        raise InputError(f'Got {len(y)} labels for {len(series)} series.')


def _first_outside(x: np.ndarray, n: int) -> tuple[int, int] | None:
    "(channel, step) of the first value of `x` that is not an integer in 0..n-1, or None."
    if np.issubdtype(x.dtype, np.integer):
        bad = (x < 0) | (x >= n)
    else:
        bad = ~np.isfinite(x) | (x < 0) | (x >= n) | (x != np.round(x))
    if not bad.any(): return None
    c, t = np.argwhere(bad)[0]
    return int(c), int(t)


def infer_n_values(series: Sequence[np.ndarray], n_values: int = 41, what: str = 'X', name: Namer | None = None,
                   share: float = 0.99, require: str = 'n_values=41', continuous: str = 'n_values=None') -> int | None:
    """`n_values` when every value is an integer in 0..n_values-1 (count data: categorical targets), None when the
    series are real-valued (continuous targets).

    Data that is almost all such integers (at least `share` of the values) but not quite, like counts with one
    3.5, is ambiguous: an `InputError` says where the first other value is and how to choose either way
    (`require` / `continuous`: how the caller spells the two choices, e.g. ``--n-values 41`` / ``--n-values 0``).
    """
    name = _namer(what, name)
    n_bad = n_all = 0
    first = None
    for i, x in enumerate(series):
        if x.size == 0: continue
        if not np.issubdtype(x.dtype, np.number) or x.dtype == bool: return None
        n_all += x.size
        pos = _first_outside(x, n_values)
        if pos is None: continue
        if first is None: first = (i, *pos)
        if np.issubdtype(x.dtype, np.integer): ok = (x >= 0) & (x < n_values)
        else: ok = np.isfinite(x) & (x >= 0) & (x < n_values) & (x == np.round(x))
        n_bad += int(x.size - ok.sum())
    if first is None: return n_values
    if n_bad > (1 - share) * n_all: return None  # clearly real-valued (or a wider range): continuous targets
    i, c, t = first
    v = series[i][c, t]
    chan = f' (channel {c})' if series[i].shape[0] > 1 else ''
    raise InputError(f'{name(i)} has value {v:g} at step {t}{chan}, but {100 * (1 - n_bad / n_all):.2f}% of the values '
                     f'are integers in 0..{n_values - 1} ({n_bad} are not): pass {require} to treat the data as integers '
                     f'0..{n_values - 1} (then fix these values), or {continuous} for continuous (real-valued) targets.')
