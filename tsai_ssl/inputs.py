"""The data of an experiment: labeled training, held-out test and unlabeled series, from a file, the embedded
synthetic set or a UCR set (numpy only, so the CLI checks a file before importing torch).

    data = load_npz('data.npz')          # or synthetic_data(...), ucr_data('GunPoint'), split_data(X, y, ...)
    print(describe_data(data))
    data.name('train')(88)               # 'X[117]': where training series 88 sits in the user's file

Series follow the rules of `tsai_ssl.series` (trailing all-NaN steps are padding; any other NaN is an error naming
the series' index in the file and the step). Every problem is an `InputError`.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .labels import fmt_frac
from .series import Namer, as_series, check_series

__all__ = ['SplitData', 'split_data', 'load_npz', 'synthetic_data', 'demo_data', 'ucr_names', 'ucr_data', 'describe_data', 'scale_spread']


@dataclass
class SplitData:
    """Series split for an experiment: labeled training, held-out test, and unlabeled extras (pretraining only).

    ``origin`` maps 'train', 'test' and 'unlabeled' to ``(key, indices)``: where each series came from in the
    user's data (``key`` 'X' or 'X_test'), so messages can name ``X[117]`` rather than a position after the split;
    or to a function ``i -> name`` (unlabeled series from a store).
    """
    X_train: list
    y_train: np.ndarray
    X_test: list
    y_test: np.ndarray
    X_unlabeled: list = field(default_factory=list)
    source: str = ''
    notes: list = field(default_factory=list)
    origin: dict = field(default_factory=dict)

    @property
    def X_pretrain(self) -> list: return list(self.X_train) + list(self.X_unlabeled)

    def name(self, part: str) -> Namer:
        "``i -> 'X[j]'`` for series i of `part` ('train', 'test', 'unlabeled' or 'pretrain' = train + unlabeled)."
        if part == 'pretrain':
            n_tr, tr, unl = len(self.X_train), self.name('train'), self.name('unlabeled')
            return lambda i: tr(i) if i < n_tr else unl(i - n_tr)
        if part not in self.origin:
            label = {'train': 'training', 'test': 'test', 'unlabeled': 'unlabeled'}[part]
            return lambda i: f'{label} series {i}'
        if callable(self.origin[part]): return self.origin[part]  # a namer of its own (a store added by the CLI)
        key, idx = self.origin[part]
        return lambda i: f'{key}[{int(idx[i])}]'


def _unlabeled_mask(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind in 'iu': return y == -1
    if y.dtype.kind == 'f': return (y == -1) | np.isnan(y)
    if y.dtype.kind in 'OUS': return np.array([str(v).strip() in ('-1', '', 'None', 'nan') for v in y], dtype=bool)
    raise InputError(f'labels have dtype {y.dtype}: expected integers or strings')


def _clean_labels(y: np.ndarray) -> np.ndarray:
    "Float labels that are whole numbers become int64 (so 3.0 and 3 are one class)."
    if y.dtype.kind == 'f' and np.all(np.isfinite(y)) and np.array_equal(y, np.round(y)): return y.astype(np.int64)
    if y.dtype == object:
        try: return np.asarray(y.tolist())
        except Exception: return y.astype(str)
    return y


def _series(X, key: str) -> list[np.ndarray]:
    "`X` by the shared rules, each series checked (NaN inside, inf, channels) under its index in the user's data."
    series = as_series(X, key, allow_2d=True)
    check_series(series, what=key)
    return series


def split_data(X, y, test_size: float = 0.25, seed: int = 0, X_test=None, y_test=None, split=None,
               source: str = '') -> SplitData:
    """Build a `SplitData` from series and labels (``-1`` = unlabeled: used for pretraining only).

    The test set is ``X_test``/``y_test``, or ``split`` (per series 'train'/'test' or 0/1), or else a stratified
    ``test_size`` share of the labeled series (deterministic for ``seed``). Series are checked before the split, so
    an error names the series' index in `X` (or `X_test`) and the step.
    """
    notes = []
    series = _series(X, 'X')
    if y is None: raise InputError("labels are missing: give y (use -1 for unlabeled series)")
    y = np.asarray(y)
    if y.ndim != 1: raise InputError(f'y has shape {y.shape}: expected one label per series, shape ({len(series)},)')
    if len(y) != len(series):
        raise InputError(f'y has {len(y)} labels for {len(series)} series in X: one label per series (-1 = unlabeled)')
    unl = _unlabeled_mask(y)
    if split is not None and X_test is not None:
        raise InputError('give either split or X_test/y_test, not both')
    if X_test is not None:
        if y_test is None: raise InputError('X_test is given without y_test')
        test_series = _series(X_test, 'X_test')
        y_test = np.asarray(y_test)
        if y_test.ndim != 1 or len(y_test) != len(test_series):
            raise InputError(f'y_test has {y_test.size} labels for {len(test_series)} series in X_test')
        if _unlabeled_mask(y_test).any(): raise InputError('y_test has unlabeled entries (-1): every test series needs a label')
        tr, te = np.flatnonzero(~unl), np.arange(len(test_series))
        X_tr, y_tr, X_te, y_te = [series[i] for i in tr], y[tr], test_series, y_test
        test_key = 'X_test'
    elif y_test is not None:
        raise InputError('y_test is given without X_test')
    elif split is not None:
        split = np.asarray(split)
        if split.ndim != 1 or len(split) != len(series):
            raise InputError(f'split has {split.size} entries for {len(series)} series: one per series')
        is_test = _parse_split(split)
        tr, te = np.flatnonzero(~is_test & ~unl), np.flatnonzero(is_test & ~unl)
        if len(te) == 0: raise InputError("split marks no labeled series as 'test'")
        X_tr, y_tr, X_te, y_te = [series[i] for i in tr], y[tr], [series[i] for i in te], y[te]
        test_key = 'X'
    else:
        lab = np.flatnonzero(~unl)
        if len(lab) < 4: raise InputError(f'only {len(lab)} labeled series: too few to hold out a test split')
        hold = _stratified_holdout(y[lab], test_size, seed)
        is_te = np.zeros(len(lab), bool); is_te[hold] = True
        tr, te = lab[~is_te], lab[is_te]
        X_tr, y_tr, X_te, y_te = [series[i] for i in tr], y[tr], [series[i] for i in te], y[te]
        test_key = 'X'
        notes.append(f'no test split given: holding out {len(X_te)} of {len(lab)} labeled series '
                     f'({fmt_frac(test_size)}, stratified) for testing')
    unl_idx = np.flatnonzero(unl)
    X_unl = [series[i] for i in unl_idx]
    origin = dict(train=('X', tr), test=(test_key, te), unlabeled=('X', unl_idx))
    y_tr, y_te = _clean_labels(np.asarray(y_tr)), _clean_labels(np.asarray(y_te))
    if len(X_tr) == 0: raise InputError('no labeled training series (every training label is -1)')
    classes = np.unique(y_tr)
    if len(classes) < 2: raise InputError(f'the labeled training series have {len(classes)} class: need at least 2')
    unseen = sorted(set(np.unique(y_te).tolist()) - set(classes.tolist()))
    if unseen: raise InputError(f'test labels {unseen[:5]} do not occur among the labeled training series')
    c0 = X_tr[0].shape[0]
    for i, x in enumerate(X_te):
        if x.shape[0] != c0:
            raise InputError(f'{test_key}[{int(te[i])}] has {x.shape[0]} channels, the training series have {c0}')
    return SplitData(X_tr, y_tr, X_te, y_te, X_unl, source=source, notes=notes, origin=origin)


def _parse_split(split: np.ndarray) -> np.ndarray:
    if split.dtype.kind in 'biuf':
        vals = set(np.unique(split).tolist())
        if not vals <= {0, 1}: raise InputError(f'split values {sorted(vals)[:5]}: use 0 (train) and 1 (test)')
        return split.astype(int) == 1
    s = np.array([str(v).strip().lower() for v in split])
    bad = sorted(set(s.tolist()) - {'train', 'test'})
    if bad: raise InputError(f"split values {bad[:5]}: use 'train' and 'test' (or 0 and 1)")
    return s == 'test'


def _stratified_holdout(y: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_size * len(idx)))
        if len(idx) >= 2: k = min(max(k, 1), len(idx) - 1)
        else: k = 0
        out.append(idx[:k])
    return np.sort(np.concatenate(out))


def load_npz(path: str | os.PathLike, test_size: float = 0.25, seed: int = 0) -> SplitData:
    """Read an experiment file: ``X`` ((N, C, L) array, (N, L), or object array of (L_i,)/(C, L_i) series),
    ``y`` (N labels, -1 = unlabeled), and optionally ``split`` ('train'/'test' or 0/1 per series) or
    ``X_test`` + ``y_test``. Without a split, a stratified `test_size` share of the labeled series is the test set."""
    path = Path(path)
    if not path.exists(): raise InputError(f'data file not found: {path}')
    if path.is_dir(): raise InputError(f'{path} is a folder: expected an .npz file')
    try:
        npz = np.load(path, allow_pickle=True)  # object arrays (variable-length series) need pickle
    except Exception as e:
        raise InputError(f'cannot read {path} as an .npz file ({type(e).__name__}: {str(e)[:120]})') from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f'{path} holds a single array, not an .npz archive: save it with np.savez(path, X=..., y=...)')
    with npz:
        keys = set(npz.files)
        expected = "required keys 'X' and 'y'; optional 'split' or 'X_test' + 'y_test'"
        missing = [k for k in ('X', 'y') if k not in keys]
        if missing:
            raise InputError(f"{path} has keys {sorted(keys)}, missing {missing}: {expected}")
        unknown = keys - {'X', 'y', 'split', 'X_test', 'y_test'}
        if unknown:
            raise InputError(f"{path} has unexpected keys {sorted(unknown)}: {expected}")
        try:
            d = {k: npz[k] for k in keys}
        except Exception as e:
            raise InputError(f'cannot read the arrays in {path} ({type(e).__name__}: {str(e)[:120]})') from None
    return split_data(d['X'], d['y'], test_size=test_size, seed=seed, X_test=d.get('X_test'), y_test=d.get('y_test'),
                      split=d.get('split'), source=str(path))


def synthetic_data(n_train: int = 600, n_test: int = 600, n_classes: int = 4, min_len: int = 512,
                   max_len: int = 30720, seed: int = 0) -> SplitData:
    "The embedded synthetic data set (`tsai_ssl.datasets.make_synthetic_split`): integer counts 0..40, 4 classes."
    from .datasets import make_synthetic_split
    try:
        X_tr, y_tr, X_te, y_te = make_synthetic_split(n_train, n_test, n_classes=n_classes, min_len=min_len,
                                                      max_len=max_len, seed=seed)
    except ValueError as e:
        raise InputError(f'synthetic data: {e}') from None
    return SplitData(list(X_tr), np.asarray(y_tr), list(X_te), np.asarray(y_te), [],
                     source=f'synthetic (make_synthetic_split n_train={n_train} n_test={n_test} '
                            f'lengths {min_len}-{max_len} seed={seed})')


def demo_data(n_train: int = 200, n_unlabeled: int = 2000, n_test: int = 400, min_len: int = 256,
              max_len: int = 1024, seed: int = 0) -> SplitData:
    "The demo set (`tsai_ssl.datasets.make_demo_data`): counts 0..40, 4 classes, 10x more unlabeled than labeled."
    from .datasets import make_demo_data
    try: d = make_demo_data(n_train, n_unlabeled, n_test, min_len=min_len, max_len=max_len, seed=seed)
    except ValueError as e: raise InputError(f'demo data: {e}') from None
    return SplitData(list(d.X_train), d.y_train, list(d.X_test), d.y_test, list(d.X_unlabeled),
                     source=f'demo (make_demo_data n_train={n_train} n_unlabeled={n_unlabeled} n_test={n_test} '
                            f'lengths {min_len}-{max_len} seed={seed})')


def ucr_names() -> list[str]:
    "Classification data sets shipped inside the sktime wheel (no download needed); [] without sktime."
    if importlib.util.find_spec('sktime') is None: return []
    from .datasets import available_ucr
    return list(available_ucr())


def ucr_data(name: str) -> SplitData:
    "A UCR/UEA data set shipped with sktime, with its own train/test split."
    names = ucr_names()
    if not names: raise InputError('--ucr needs sktime (pip install sktime)')
    match = [n for n in names if n.lower() == str(name).lower()]
    if not match: raise InputError(f"unknown UCR data set {name!r}: shipped with sktime are {', '.join(names)}")
    from .datasets import load_ucr
    X_tr, y_tr, X_te, y_te, *_ = load_ucr(match[0])
    return split_data(list(X_tr), np.asarray(y_tr), X_test=list(X_te), y_test=np.asarray(y_te), source=f'UCR {match[0]}')


def _all_integers(series) -> bool:
    return all(np.issubdtype(x.dtype, np.integer) or np.array_equal(x, np.round(x)) for x in series)


def scale_spread(series) -> float:
    """How much the series' scales differ: the 90th over the 10th percentile of the per-series standard deviation
    (1 for z-normalized sets such as most of UCR; 1.3e5 for PLAID). Above `SCALE_SPREAD_HINT`, one mean and std for
    the whole set (``standardize='dataset'``) leaves the small series near-constant."""
    s = np.array([float(np.nanstd(x)) for x in series if x.size])
    if len(s) == 0: return 1.
    lo, hi = np.percentile(s, [10, 90])
    return float(hi / lo) if lo > 0 else (1. if hi == 0 else float('inf'))


SCALE_SPREAD_HINT = 100.


def describe_data(data: SplitData) -> str:
    "A few lines: counts, channels, lengths, values, classes."
    allx = data.X_train + data.X_test + list(data.X_unlabeled)
    lens = np.array([x.shape[-1] for x in allx])
    lo = min(float(x.min()) for x in allx if x.size); hi = max(float(x.max()) for x in allx if x.size)
    classes, counts = np.unique(data.y_train, return_counts=True)
    vals = f'integers {lo:.0f}..{hi:.0f}' if _all_integers(allx) else f'real values {lo:.4g}..{hi:.4g}'
    cls = ', '.join(f'{c}: {n}' for c, n in zip(classes[:12], counts[:12])) + (', ...' if len(classes) > 12 else '')
    lines = [f'data: {data.source}' if data.source else 'data:',
             f'  {len(data.X_train)} labeled training series, {len(data.X_unlabeled)} unlabeled, {len(data.X_test)} test; '
             f'{allx[0].shape[0]} channel(s)',
             f'  lengths {lens.min()}..{lens.max()} steps (median {int(np.median(lens))}); {vals}',
             f'  {len(classes)} classes (training counts {cls})']
    spread = scale_spread(allx)
    if spread > SCALE_SPREAD_HINT:
        lines.append(f'  series scales differ by a factor of {spread:.3g} (std, 10th to 90th percentile): '
                     f'--standardize series (standardize=\'series\') standardizes each series on its own')
    return '\n'.join(lines)
