"""Does self-supervised pretraining help, and at which amount of labels? Importable experiment functions.

    data = load_npz('data.npz')                      # or synthetic_data(...), ucr_data('GunPoint')
    rows = compare(data.X_train, data.y_train, data.X_test, data.y_test, X_unlabeled=data.X_unlabeled,
                   tasks=('masked', 'next'), fractions=(0.05, 0.2, 1.0), seeds=(0, 1))
    table, sentence = summarize(rows)
    plot_results(rows, 'accuracy.png')

The pieces:

* `label_subset(y, fraction, seed)`: stratified indices of a labeled subset (at least one per class).
* `pretrain(X, task, arch, epochs, ...) -> path`: one pretext task on unlabeled series; writes the backbone
  weights (``learn.load(path_without_suffix, strict=False)`` / `load_pretrained` accept them).
* `finetune(X_train, y_train, X_test, y_test, arch, weights=None, ...) -> accuracy`: the classifier from
  scratch (``weights=None``) or from pretrained weights, evaluated on the test series.
* `compare(...)`: pretrain each task once per seed on all training series (labels ignored, unlabeled
  extras added), fine-tune on each label fraction, train the same classifier from scratch with the same
  budget, evaluate on test. Returns one dict per (method, fraction, seed).
* `summarize(rows) -> (table, sentence)`, `aggregate(rows)`, `plot_results(rows, path)`, `save_results(...)`.

Only numpy is imported at module level, so checking inputs (the CLI does it before any training) is fast;
torch, fastai and tsai are imported by the functions that train.
"""
from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ['ExperimentError', 'TASKS', 'ARCHS', 'DEFAULT_FRACTIONS', 'SplitData', 'normalize_task', 'task_available',
           'available_tasks', 'get_task', 'normalize_arch', 'get_arch', 'resolve_device', 'infer_vocab',
           'check_fractions', 'label_subset', 'min_fraction', 'evaluate', 'load_npz', 'synthetic_data', 'ucr_data', 'ucr_names', 'split_data',
           'describe_data', 'pretrain', 'finetune', 'epochs_for_steps', 'compare', 'aggregate', 'summarize', 'plot_results',
           'save_results', 'Progress']


class ExperimentError(ValueError):
    "A problem with the user's input or settings; the message says what and how to fix it."


# ----------------------------------------------------------------------------------------------------
# Registries: tasks (looked up lazily: a task module may not exist yet) and architectures
# ----------------------------------------------------------------------------------------------------
# name -> (module under tsai_ssl.tasks, callback class, label used in tables)
TASKS: dict[str, tuple[str, str, str]] = {
    'masked': ('masked', 'MaskedValuePretrain', 'masked-value'),
    'next': ('next_step', 'NextStepPretrain', 'next-step'),
    'contrastive': ('contrastive', 'ContrastivePretrain', 'contrastive'),
    'ts2vec': ('contrastive', 'TS2VecPretrain', 'TS2Vec'),
}
_TASK_ALIASES = {'mask': 'masked', 'masked-value': 'masked', 'masked_value': 'masked', 'mvp': 'masked',
                 'next-step': 'next', 'next_step': 'next', 'nextstep': 'next', 'contrast': 'contrastive'}

# tsai classifiers `split_backbone` supports (their time axis is kept until global pooling)
ARCHS = ('ResNet', 'ResNetPlus', 'InceptionTime', 'InceptionTimePlus', 'XceptionTime', 'XceptionTimePlus',
         'FCN', 'FCNPlus', 'ResCNN', 'TCN')
DEFAULT_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 1.0)
SCRATCH = 'scratch'


def normalize_task(name: str) -> str:
    "Canonical task name ('masked', 'next', 'contrastive'); `ExperimentError` for an unknown one."
    key = str(name).strip().lower()
    key = _TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise ExperimentError(f"unknown task {name!r}: choose from {', '.join(TASKS)}")
    return key


def _task_file(name: str) -> Path:
    import tsai_ssl  # the package only (cheap): tsai_ssl.tasks would import torch and fastai
    return Path(tsai_ssl.__file__).parent / 'tasks' / f'{TASKS[name][0]}.py'


def task_available(name: str) -> bool:
    "Whether the task's module ships with this installation (checked without importing torch)."
    return _task_file(normalize_task(name)).exists()


def available_tasks() -> list[str]:
    return [t for t in TASKS if task_available(t)]


def get_task(name: str) -> type:
    "The callback class of a task, imported on demand; `ExperimentError` 'task X is not available' if it is missing."
    key = normalize_task(name)
    module, cls, _ = TASKS[key]
    if not task_available(key):
        raise ExperimentError(f'task {key} is not available in this installation (no module tsai_ssl.tasks.{module}); '
                              f"available: {', '.join(available_tasks()) or 'none'}")
    try:
        mod = importlib.import_module(f'tsai_ssl.tasks.{module}')
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith('tsai_ssl.tasks'):
            raise ExperimentError(f'task {key} is not available ({e})') from None
        raise
    if not hasattr(mod, cls):
        raise ExperimentError(f'task {key} is not available: tsai_ssl.tasks.{module} has no {cls}')
    return getattr(mod, cls)


def _task_label(name: str) -> str:
    return 'from scratch' if name == SCRATCH else TASKS[name][2] if name in TASKS else name


def normalize_arch(name: str) -> str:
    "Canonical architecture name (case-insensitive); `ExperimentError` listing the supported ones."
    if not isinstance(name, str):
        return getattr(name, '__name__', type(name).__name__)
    for a in ARCHS:
        if a.lower() == name.strip().lower(): return a
    raise ExperimentError(f"unknown architecture {name!r}: choose from {', '.join(ARCHS)}")


def get_arch(name):
    "The tsai model class for an architecture name (an nn.Module class or instance passes through)."
    if not isinstance(name, str): return name
    a = normalize_arch(name)
    return getattr(importlib.import_module(f'tsai.models.{a}'), a)


def resolve_device(device: str | None = 'auto'):
    "'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N' -> torch.device."
    import torch
    d = (device or 'auto').strip().lower()
    if d == 'auto': return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if d == 'cpu': return torch.device('cpu')
    if d.startswith('cuda'):
        if not torch.cuda.is_available(): raise ExperimentError(f'device {device!r} requested but CUDA is not available')
        return torch.device(d)
    raise ExperimentError(f"unknown device {device!r}: use cpu, cuda or auto")


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def _to_series(X, what: str = 'X') -> list[np.ndarray]:
    """Normalise user input to a list of (C, L_i) numpy arrays without importing torch (mirrors
    `tsai_ssl.data.to_series_list`, which validates again later)."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 2: X = X[:, None, :]
        if X.ndim != 3:
            raise ExperimentError(f'{what} has shape {X.shape}: expected (N, C, L), (N, L) or an object array of series')
        if len(X) == 0: raise ExperimentError(f'{what} holds no series')
        if np.issubdtype(X.dtype, np.floating) and np.isnan(X).any():
            return [_trim_nan(x) for x in X]
        return list(X)
    if isinstance(X, (str, bytes)) or not hasattr(X, '__len__'):
        raise ExperimentError(f'{what} must be an array (N, C, L) or a sequence of series, got {type(X).__name__}')
    out = []
    for i, x in enumerate(X):
        if hasattr(x, 'detach'): x = x.detach().cpu().numpy()
        try: x = np.asarray(x)
        except Exception as e: raise ExperimentError(f'{what}[{i}] is not an array of numbers ({e})') from None
        if x.ndim == 1: x = x[None]
        if x.ndim != 2: raise ExperimentError(f'{what}[{i}] has shape {x.shape}: expected (L,) or (C, L)')
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise ExperimentError(f'{what}[{i}] has dtype {x.dtype}: expected numbers')
        out.append(x)
    if not out: raise ExperimentError(f'{what} holds no series')
    return out


def _trim_nan(x: np.ndarray) -> np.ndarray:
    real = ~np.isnan(x).any(0)
    n = int(np.flatnonzero(real)[-1]) + 1 if real.any() else 0
    return x[:, :n]


def infer_vocab(*series_lists, vocab: int = 41) -> int | None:
    "`vocab` (41) when every value is an integer in 0..vocab-1 (count data), else None (real-valued series)."
    for series in series_lists:
        for x in series or ():
            if x.size == 0: continue
            if np.issubdtype(x.dtype, np.integer):
                if x.min() < 0 or x.max() >= vocab: return None
            elif np.issubdtype(x.dtype, np.floating):
                if not np.isfinite(x).all() or x.min() < 0 or x.max() >= vocab or not np.array_equal(x, np.round(x)):
                    return None
            else:
                return None
    return vocab


def _fmt_frac(f: float) -> str:
    p = 100 * f
    return f'{p:.0f}%' if abs(p - round(p)) < 1e-9 else f'{p:.3g}%'


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    "Sorted unique fractions; `ExperimentError` unless each is in (0, 1]."
    out = []
    for f in fractions:
        try: f = float(f)
        except (TypeError, ValueError): raise ExperimentError(f'label fraction {f!r} is not a number') from None
        if not (0 < f <= 1) or math.isnan(f):
            raise ExperimentError(f'label fraction {f:g} is outside (0, 1]: use e.g. 0.05 for 5% of the labels')
        if f not in out: out.append(f)
    if not out: raise ExperimentError('no label fractions given')
    return tuple(sorted(out))


def _n_labels(n: int, fraction: float) -> int:
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
    drawn in one fixed random order). Raises `ExperimentError` when the fraction is not in (0, 1] or when it
    leaves a class without a label (fewer labels than classes).
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0: raise ExperimentError('label_subset needs a non-empty 1-D label vector')
    f = check_fractions([fraction])[0]
    classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    k = _n_labels(len(y), f)
    if k < len(classes):
        need = len(classes) / len(y)
        raise ExperimentError(
            f'label fraction {_fmt_frac(f)} leaves a class without a label: {_fmt_frac(f)} of {len(y)} labeled series '
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
    while _n_labels(len(y), f) < n_cls: f += 1 / (2 * len(y))
    return f


@dataclass
class SplitData:
    "Series split for an experiment: labeled training, held-out test, and unlabeled extras (pretraining only)."
    X_train: list
    y_train: np.ndarray
    X_test: list
    y_test: np.ndarray
    X_unlabeled: list = field(default_factory=list)
    source: str = ''
    notes: list = field(default_factory=list)

    @property
    def X_pretrain(self) -> list: return list(self.X_train) + list(self.X_unlabeled)


def _unlabeled_mask(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind in 'iu': return y == -1
    if y.dtype.kind == 'f': return (y == -1) | np.isnan(y)
    if y.dtype.kind in 'OUS': return np.array([str(v).strip() in ('-1', '', 'None', 'nan') for v in y], dtype=bool)
    raise ExperimentError(f'labels have dtype {y.dtype}: expected integers or strings')


def _clean_labels(y: np.ndarray) -> np.ndarray:
    "Float labels that are whole numbers become int64 (so 3.0 and 3 are one class)."
    if y.dtype.kind == 'f' and np.all(np.isfinite(y)) and np.array_equal(y, np.round(y)): return y.astype(np.int64)
    if y.dtype == object:
        try: return np.asarray(y.tolist())
        except Exception: return y.astype(str)
    return y


def split_data(X, y, test_size: float = 0.25, seed: int = 0, X_test=None, y_test=None, split=None,
               source: str = '') -> SplitData:
    """Build a `SplitData` from series and labels (``-1`` = unlabeled: used for pretraining only).

    The test set is ``X_test``/``y_test``, or ``split`` (per series 'train'/'test' or 0/1), or else a stratified
    ``test_size`` share of the labeled series (deterministic for ``seed``).
    """
    notes = []
    series = _to_series(X, 'X')
    if y is None: raise ExperimentError("labels are missing: give y (use -1 for unlabeled series)")
    y = np.asarray(y)
    if y.ndim != 1: raise ExperimentError(f'y has shape {y.shape}: expected one label per series, shape ({len(series)},)')
    if len(y) != len(series): raise ExperimentError(f'y has {len(y)} labels for {len(series)} series in X: one label per series (-1 = unlabeled)')
    unl = _unlabeled_mask(y)
    if split is not None and X_test is not None:
        raise ExperimentError('give either split or X_test/y_test, not both')
    if X_test is not None:
        if y_test is None: raise ExperimentError('X_test is given without y_test')
        test_series = _to_series(X_test, 'X_test')
        y_test = np.asarray(y_test)
        if y_test.ndim != 1 or len(y_test) != len(test_series):
            raise ExperimentError(f'y_test has {y_test.size} labels for {len(test_series)} series in X_test')
        if _unlabeled_mask(y_test).any(): raise ExperimentError('y_test has unlabeled entries (-1): every test series needs a label')
        tr = np.flatnonzero(~unl)
        X_tr, y_tr, X_te, y_te = [series[i] for i in tr], y[tr], test_series, y_test
    elif y_test is not None:
        raise ExperimentError('y_test is given without X_test')
    elif split is not None:
        split = np.asarray(split)
        if split.ndim != 1 or len(split) != len(series):
            raise ExperimentError(f'split has {split.size} entries for {len(series)} series: one per series')
        is_test = _parse_split(split)
        tr, te = np.flatnonzero(~is_test & ~unl), np.flatnonzero(is_test & ~unl)
        if len(te) == 0: raise ExperimentError("split marks no labeled series as 'test'")
        X_tr, y_tr, X_te, y_te = [series[i] for i in tr], y[tr], [series[i] for i in te], y[te]
    else:
        lab = np.flatnonzero(~unl)
        if len(lab) < 4: raise ExperimentError(f'only {len(lab)} labeled series: too few to hold out a test split')
        te = _stratified_holdout(y[lab], test_size, seed)
        is_te = np.zeros(len(lab), bool); is_te[te] = True
        X_tr, y_tr = [series[i] for i in lab[~is_te]], y[lab[~is_te]]
        X_te, y_te = [series[i] for i in lab[is_te]], y[lab[is_te]]
        notes.append(f'no test split given: holding out {len(X_te)} of {len(lab)} labeled series '
                     f'({_fmt_frac(test_size)}, stratified) for testing')
    X_unl = [series[i] for i in np.flatnonzero(unl)]
    y_tr, y_te = _clean_labels(np.asarray(y_tr)), _clean_labels(np.asarray(y_te))
    if len(X_tr) == 0: raise ExperimentError('no labeled training series (every training label is -1)')
    classes = np.unique(y_tr)
    if len(classes) < 2: raise ExperimentError(f'the labeled training series have {len(classes)} class: need at least 2')
    unseen = sorted(set(np.unique(y_te).tolist()) - set(classes.tolist()))
    if unseen: raise ExperimentError(f'test labels {unseen[:5]} do not occur among the labeled training series')
    c0 = X_tr[0].shape[0]
    for name, lst in (('test', X_te), ('unlabeled', X_unl)):
        for i, x in enumerate(lst):
            if x.shape[0] != c0:
                raise ExperimentError(f'{name} series {i} has {x.shape[0]} channels, training series have {c0}')
    return SplitData(X_tr, y_tr, X_te, y_te, X_unl, source=source, notes=notes)


def _parse_split(split: np.ndarray) -> np.ndarray:
    if split.dtype.kind in 'biuf':
        vals = set(np.unique(split).tolist())
        if not vals <= {0, 1}: raise ExperimentError(f'split values {sorted(vals)[:5]}: use 0 (train) and 1 (test)')
        return split.astype(int) == 1
    s = np.array([str(v).strip().lower() for v in split])
    bad = sorted(set(s.tolist()) - {'train', 'test'})
    if bad: raise ExperimentError(f"split values {bad[:5]}: use 'train' and 'test' (or 0 and 1)")
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
    if not path.exists(): raise ExperimentError(f'data file not found: {path}')
    if path.is_dir(): raise ExperimentError(f'{path} is a folder: expected an .npz file')
    try:
        npz = np.load(path, allow_pickle=True)  # object arrays (variable-length series) need pickle
    except Exception as e:
        raise ExperimentError(f'cannot read {path} as an .npz file ({type(e).__name__}: {str(e)[:120]})') from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ExperimentError(f'{path} holds a single array, not an .npz archive: save it with np.savez(path, X=..., y=...)')
    with npz:
        keys = set(npz.files)
        expected = "required keys 'X' and 'y'; optional 'split' or 'X_test' + 'y_test'"
        missing = [k for k in ('X', 'y') if k not in keys]
        if missing:
            raise ExperimentError(f"{path} has keys {sorted(keys)}, missing {missing}: {expected}")
        unknown = keys - {'X', 'y', 'split', 'X_test', 'y_test'}
        if unknown:
            raise ExperimentError(f"{path} has unexpected keys {sorted(unknown)}: {expected}")
        try:
            d = {k: npz[k] for k in keys}
        except Exception as e:
            raise ExperimentError(f'cannot read the arrays in {path} ({type(e).__name__}: {str(e)[:120]})') from None
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
        raise ExperimentError(f'synthetic data: {e}') from None
    return SplitData(list(X_tr), np.asarray(y_tr), list(X_te), np.asarray(y_te), [],
                     source=f'synthetic (make_synthetic_split n_train={n_train} n_test={n_test} '
                            f'lengths {min_len}-{max_len} seed={seed})')


def ucr_names() -> list[str]:
    "Classification data sets shipped inside the sktime wheel (no download needed)."
    from . import datasets
    if hasattr(datasets, 'available_ucr'):
        try: return list(datasets.available_ucr())
        except Exception: return []
    spec = importlib.util.find_spec('sktime')
    if spec is None or not spec.submodule_search_locations: return []
    root = Path(list(spec.submodule_search_locations)[0]) / 'datasets' / 'data'
    return sorted(p.name for p in root.iterdir() if (p / f'{p.name}_TRAIN.ts').exists()) if root.exists() else []


def ucr_data(name: str) -> SplitData:
    "A UCR/UEA data set shipped with sktime, with its own train/test split."
    names = ucr_names()
    if not names: raise ExperimentError('--ucr needs sktime (pip install sktime)')
    match = [n for n in names if n.lower() == str(name).lower()]
    if not match: raise ExperimentError(f"unknown UCR data set {name!r}: shipped with sktime are {', '.join(names)}")
    name = match[0]
    from . import datasets
    if hasattr(datasets, 'load_ucr'):
        X_tr, y_tr, X_te, y_te, *_ = datasets.load_ucr(name)
    else:  # fallback while datasets.load_ucr does not exist
        X_tr, y_tr, X_te, y_te = _load_ucr_sktime(name)
    return split_data(list(X_tr), np.asarray(y_tr), X_test=list(X_te), y_test=np.asarray(y_te), source=f'UCR {name}')


def _load_ucr_sktime(name: str):
    from sktime.datasets import load_UCR_UEA_dataset
    out = []
    for part in ('TRAIN', 'TEST'):
        X, y = load_UCR_UEA_dataset(name, split=part, return_type='nested_univ')
        series = [np.stack([np.asarray(X.iloc[i, c], dtype=np.float32) for c in range(X.shape[1])])
                  for i in range(len(X))]
        out += [series, np.asarray(y)]
    return tuple(out)


def describe_data(data: SplitData) -> str:
    "A few lines: counts, channels, lengths, values, classes."
    allx = data.X_train + data.X_test + list(data.X_unlabeled)
    lens = np.array([x.shape[-1] for x in allx])
    lo = min(float(x.min()) for x in allx); hi = max(float(x.max()) for x in allx)
    ints = infer_vocab(allx) is not None
    classes, counts = np.unique(data.y_train, return_counts=True)
    vals = f'integers {lo:.0f}..{hi:.0f}' if ints else f'real values {lo:.4g}..{hi:.4g}'
    cls = ', '.join(f'{c}: {n}' for c, n in zip(classes[:12], counts[:12])) + (', ...' if len(classes) > 12 else '')
    lines = [f'data: {data.source}' if data.source else 'data:',
             f'  {len(data.X_train)} labeled training series, {len(data.X_unlabeled)} unlabeled, {len(data.X_test)} test; '
             f'{allx[0].shape[0]} channel(s)',
             f'  lengths {lens.min()}..{lens.max()} steps (median {int(np.median(lens))}); {vals}',
             f'  {len(classes)} classes (training counts {cls})']
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------
# Progress: one bar on stderr with ETA, advanced in work units (series x steps) per epoch
# ----------------------------------------------------------------------------------------------------
def _hms(s: float) -> str:
    s = int(max(0, s))
    return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60}:{s % 60:02d}'


class Progress:
    "A minimal progress bar with ETA on stderr (redrawn in place on a terminal, a line every `log_every` s otherwise)."

    def __init__(self, total: float, desc: str = '', file=None, enabled: bool = True, width: int = 28,
                 log_every: float = 20.):
        self.total, self.desc, self.file, self.enabled = max(float(total), 1e-9), desc, file or sys.stderr, enabled
        self.width, self.log_every, self.done, self.note = width, log_every, 0., ''
        self.t0 = self._last = time.time()
        self.tty = hasattr(self.file, 'isatty') and self.file.isatty()
        self._draw(force=True)

    def advance(self, units: float = 0., note: str | None = None):
        self.done = min(self.total, self.done + units)
        if note is not None: self.note = note
        self._draw()

    def _line(self) -> str:
        frac = self.done / self.total
        el = time.time() - self.t0
        eta = f'ETA {_hms(el / frac - el)}' if frac > 0.01 else 'ETA ?'
        bar = '#' * int(round(frac * self.width)) + '-' * (self.width - int(round(frac * self.width)))
        return f'{self.desc} [{bar}] {100 * frac:3.0f}% {_hms(el)} elapsed, {eta}  {self.note}'

    def _draw(self, force: bool = False):
        if not self.enabled: return
        now = time.time()
        if self.tty:
            if force or now - self._last > 0.2:
                self.file.write('\r' + self._line()[:150].ljust(150)); self.file.flush(); self._last = now
        elif force or now - self._last >= self.log_every:
            self.file.write(self._line() + '\n'); self.file.flush(); self._last = now

    def close(self):
        if not self.enabled: return
        self.done = self.total
        self.note = f'done in {_hms(time.time() - self.t0)}'
        if self.tty: self.file.write('\r' + self._line()[:150].ljust(150) + '\n')
        else: self.file.write(self._line() + '\n')
        self.file.flush()


def _tick_callback(progress: Progress | None, units_per_epoch: float, log: bool = False):
    "Advances `progress` after each epoch; with `log`, writes one line per epoch (losses, metrics) to stderr."
    from fastai.callback.core import Callback

    class _Tick(Callback):
        order = 90
        _trained = False
        def before_fit(self): self.t0 = time.time()
        def after_train(self): self._trained = True
        def after_epoch(self):
            if not self._trained: return  # get_preds/validate run epoch events too, without a training phase
            self._trained = False
            if progress is not None: progress.advance(units_per_epoch)
            rec = getattr(self.learn, 'recorder', None)
            if not log or rec is None: return
            vals = rec.log[1:-1] if len(rec.log) > 2 else []
            names = [n for n in rec.metric_names[1:-1]]
            parts = [f'{n} {v:.4g}' for n, v in zip(names, vals) if isinstance(v, (int, float)) and v == v]
            print(f'  epoch {self.epoch + 1}/{self.n_epoch}: ' + ', '.join(parts) + f' ({_hms(time.time() - self.t0)})',
                  file=sys.stderr, flush=True)
    return _Tick()


# ----------------------------------------------------------------------------------------------------
# Training pieces
# ----------------------------------------------------------------------------------------------------
_STEPS_PER_BATCH = 2 ** 17  # cap on bs * length for full-length (uncropped) validation/test batches


def _eval_bs(series: list, bs: int) -> int:
    L = max(x.shape[-1] for x in series) if series else 1
    return int(max(1, min(bs, _STEPS_PER_BATCH // max(L, 1))))


def _drop_last(n: int, bs: int) -> bool:
    "A last batch of one series breaks BatchNorm in training: drop it."
    return n > bs and n % bs == 1


def _quiet(learn, verbose: bool = False):
    "No fastai progress bars or tables (verbose fits log one line per epoch to stderr instead, see `_tick_callback`)."
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(learn.no_bar()); stack.enter_context(learn.no_logging())
    return stack


def _make_learner(dls, arch, seed: int, device, metrics=None, cbs=None, path='.', arch_config: dict | None = None):
    from tsai.learner import ts_learner
    try:
        learn = ts_learner(dls, get_arch(arch), metrics=metrics, cbs=cbs, seed=seed, path=path, **(arch_config or {}))
    except TypeError as e:
        if arch_config and 'argument' in str(e):
            raise ExperimentError(f'{normalize_arch(arch)} does not accept arch_config {arch_config}: {e}') from None
        raise
    if device is not None and device.type == 'cuda': learn.to_fp16()
    return learn


def _standardize():
    from tsai.data.preprocessing import TSStandardize
    return TSStandardize()


def pretrain(X, task: str = 'masked', arch='ResNetPlus', epochs: int = 10, lr: float = 1e-3, bs: int = 64,
             max_len: int | None = None, seed: int = 0, valid_pct: float = 0.1, path: str | os.PathLike | None = None,
             vocab: int | None | str = 'auto', device='auto', task_kwargs: dict | None = None, verbose: bool = False,
             progress: Progress | None = None, return_info: bool = False, arch_config: dict | None = None):
    """Pretrain `arch` with one pretext task on the series `X` (labels are not used) and write the backbone.

    About `valid_pct` of the series (at least one, when there are 10 or more) are held out to keep the epoch with
    the lowest validation loss. ``vocab='auto'``: 41 when all values are integers 0..40, else None (continuous).
    Returns the path of the ``.pth`` file (``learn.load(str(path.with_suffix('')), strict=False)`` and
    `tsai_ssl.transfer.load_pretrained` accept it); with ``return_info=True`` also a dict (valid loss, seconds).
    ``arch_config``: keyword arguments of the architecture (e.g. ``{'nf': 32}``); ``task_kwargs``: extra arguments
    of the task callback (``save_as``, ``seed`` and, for tasks that take it, ``vocab`` are set here).
    """
    import torch
    from .data import get_ssl_dls
    task = normalize_task(task)
    Task = get_task(task)
    series = _to_series(X, 'X')
    if vocab == 'auto': vocab = infer_vocab(series)
    dev = resolve_device(device) if not hasattr(device, 'type') else device
    path = Path(path) if path is not None else Path('models') / f'ssl_{task}_{normalize_arch(arch)}.pth'
    if not path.suffix: path = path.with_suffix('.pth')
    n = len(series)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(valid_pct * n)) if n >= 10 else 0
    n_val = max(1, n_val) if n >= 10 else 0
    splits = (np.sort(perm[n_val:]), np.sort(perm[:n_val]))
    n_tr = n - n_val
    dls = get_ssl_dls(series, splits=splits, bs=bs, val_bs=_eval_bs([series[i] for i in splits[1]] or series, bs),
                      batch_tfms=_standardize(), max_len=max_len, input_vocab=vocab, seed=seed, device=dev,
                      drop_last=_drop_last(n_tr, min(bs, n_tr)))
    kw = dict(save_as=str(path), seed=seed, **(task_kwargs or {}))
    params = inspect.signature(Task).parameters
    if 'vocab' in params: kw.setdefault('vocab', vocab)
    if 'save' in params: kw.setdefault('save', 'best')
    kw = {k: v for k, v in kw.items() if k in params or any(p.kind == p.VAR_KEYWORD for p in params.values())}
    cb = Task(**kw)
    L_tr = np.array([series[i].shape[-1] for i in splits[0]])
    units = float(np.minimum(L_tr, max_len).sum() if max_len else L_tr.sum()) * _task_cost(task)
    cbs = [cb, _tick_callback(progress, units, log=verbose)]
    learn = _make_learner(dls, arch, seed, dev, cbs=cbs, arch_config=arch_config)
    if path.exists(): path.unlink()  # a stale file must not pass for this run's result
    t0 = time.time()
    with _quiet(learn, verbose):
        learn.fit_one_cycle(epochs, lr)
    secs = time.time() - t0
    if not path.exists():
        raise ExperimentError(f'pretraining {task} produced no weights (the validation loss was never finite); '
                              'try a lower --lr')
    best = getattr(cb, 'best', None)
    info = dict(task=task, arch=normalize_arch(arch), arch_config=arch_config or {}, path=str(path), epochs=epochs, n_series=n, n_valid=n_val,
                vocab=vocab, best_valid_loss=None if best is None or not math.isfinite(best) else float(best),
                seconds=round(secs, 2))
    del learn
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return (path, info) if return_info else path


def _task_cost(task: str) -> float:
    """Relative cost of one pretraining epoch per step of data: TS2Vec's two overlapping crops are padded to the
    longest crop of the batch (about the series' length); the contrastive task's two views are halves."""
    return 2. if task == 'ts2vec' else 1.


def finetune(X_train, y_train, X_test, y_test, arch='ResNetPlus', weights: str | os.PathLike | None = None,
             epochs: int = 10, lr: float = 1e-3, bs: int = 64, max_len: int | None = None, seed: int = 0,
             device='auto', export: str | os.PathLike | None = None, verbose: bool = False,
             progress: Progress | None = None, return_learner: bool = False, arch_config: dict | None = None,
             min_steps: int = 0):
    """Train the classifier `arch` on the labeled series (from scratch, or from pretrained backbone `weights`
    loaded and verified with `load_pretrained`), then return its accuracy on the test series.

    Scratch and pretrained runs with the same arguments use the same seed, batch order, epochs and learning
    rate; only the backbone's initial weights differ. No validation during training. ``export``: write the
    trained Learner with ``learn.export`` (load with ``fastai.learner.load_learner``; predict on new series of any
    length with ``learn.dls.test_dl(series)``). ``return_learner=True`` returns ``(accuracy, learn)``.
    ``arch_config``: keyword arguments of the architecture (e.g. ``{'nf': 32}``; must match the pretraining).
    ``min_steps``: raise `epochs` so that training takes at least this many optimizer steps (see `epochs_for_steps`).
    """
    import torch
    from .data import get_ssl_dls
    from .transfer import load_pretrained
    from fastai.metrics import accuracy as acc_metric
    X_tr, X_te = _to_series(X_train, 'X_train'), _to_series(X_test, 'X_test')
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    if len(y_tr) != len(X_tr): raise ExperimentError(f'{len(y_tr)} training labels for {len(X_tr)} series')
    if len(y_te) != len(X_te): raise ExperimentError(f'{len(y_te)} test labels for {len(X_te)} series')
    dev = resolve_device(device) if not hasattr(device, 'type') else device
    n = len(X_tr)
    dls = get_ssl_dls(X_tr, y_tr, bs=bs, batch_tfms=_standardize(), max_len=max_len, seed=seed, device=dev,
                      drop_last=_drop_last(n, min(bs, n)))
    epochs = epochs_for_steps(n, epochs, bs, min_steps)
    L_tr = np.array([x.shape[-1] for x in X_tr])
    units = float(np.minimum(L_tr, max_len).sum() if max_len else L_tr.sum())
    learn = _make_learner(dls, arch, seed, dev, metrics=acc_metric, cbs=[_tick_callback(progress, units, log=verbose)],
                          arch_config=arch_config)
    if weights is not None:
        try:
            load_pretrained(learn, Path(weights))
        except FileNotFoundError as e:
            raise ExperimentError(str(e)) from None
    with _quiet(learn, verbose):
        learn.fit_one_cycle(epochs, lr)
    acc = evaluate(learn, X_te, y_te, bs=bs)
    if progress is not None: progress.advance(_eval_units(X_te))
    if export is not None: _export(learn, export)
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return (acc, learn) if return_learner else acc


def epochs_for_steps(n_labeled: int, epochs: int, bs: int, min_steps: int = 0) -> int:
    "`epochs`, raised so that training takes at least `min_steps` optimizer steps (few labels: few batches per epoch)."
    bs = min(bs, n_labeled)
    per_epoch = n_labeled // bs if _drop_last(n_labeled, bs) else math.ceil(n_labeled / bs)
    return max(epochs, math.ceil(min_steps / max(per_epoch, 1))) if min_steps else epochs


def evaluate(learn, X_test, y_test, bs: int = 64) -> float:
    "Accuracy of a classifier Learner on test series (full length, any length)."
    X_te = _to_series(X_test, 'X_test')
    dl = learn.dls.test_dl(X_te, y=np.asarray(y_test), with_labels=True, bs=_eval_bs(X_te, bs))
    with learn.no_bar():
        preds, targs = learn.get_preds(dl=dl)
    return float((preds.argmax(-1) == targs).float().mean())


def _eval_units(X_test) -> float:
    return float(sum(x.shape[-1] for x in X_test)) / 3  # forward only: about a third of a training step


def _export(learn, fname):
    fname = Path(fname).absolute()
    fname.parent.mkdir(parents=True, exist_ok=True)
    learn.export(fname)
    return fname


# ----------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------
def compare(X_train, y_train, X_test, y_test, X_unlabeled=None, tasks: Sequence[str] = ('masked', 'next', 'contrastive'),
            fractions: Sequence[float] = DEFAULT_FRACTIONS, seeds: Sequence[int] = (0, 1, 2), arch='ResNetPlus',
            pretrain_epochs: int = 10, finetune_epochs: int = 10, lr: float = 1e-3, bs: int = 64,
            max_len: int | None = None, device='auto', workdir: str | os.PathLike = 'runs/compare',
            vocab: int | None | str = 'auto', progress: bool | Progress = True,
            on_result: Callable[[dict], None] | None = None, arch_config: dict | None = None,
            finetune_min_steps: int = 0) -> list[dict]:
    """Pretraining vs training from scratch at several label fractions; returns one dict per run:

    ``{'method': 'scratch' | task, 'fraction', 'n_labeled', 'seed', 'accuracy', 'seconds'}``
    (``seconds``: fine-tuning and test time; pretraining runs appear with ``fraction=None``, ``accuracy=None``
    and ``best_valid_loss``). For each seed, each task is pretrained once on all training series plus
    `X_unlabeled` (labels ignored) and reused for every fraction; the labeled subset of a fraction is the same
    for every method of a seed. Weights go to ``workdir/weights``. ``arch_config`` (architecture keyword
    arguments) and ``finetune_min_steps`` (see `epochs_for_steps`) apply to every fit alike. ``progress``: True for
    a bar with ETA on stderr, or a `Progress`; ``on_result(row)`` is called as each run finishes.
    """
    dev = resolve_device(device) if not hasattr(device, 'type') else device
    tasks = [normalize_task(t) for t in tasks]
    for t in tasks: get_task(t)  # fail before any training
    arch = normalize_arch(arch)
    fractions = check_fractions(fractions)
    X_tr, X_te = _to_series(X_train, 'X_train'), _to_series(X_test, 'X_test')
    X_unl = _to_series(X_unlabeled, 'X_unlabeled') if X_unlabeled is not None and len(X_unlabeled) else []
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    subsets = {(f, s): label_subset(y_tr, f, s) for s in seeds for f in fractions}  # errors before training
    X_pre = X_tr + X_unl
    if vocab == 'auto': vocab = infer_vocab(X_pre)
    weights_dir = Path(workdir) / 'weights'

    crop = (lambda L: np.minimum(L, max_len)) if max_len else (lambda L: L)
    L_pre = crop(np.array([x.shape[-1] for x in X_pre])).sum() * 0.9
    L_tr = crop(np.array([x.shape[-1] for x in X_tr]))
    total = 0.
    for s in seeds:
        total += sum(pretrain_epochs * L_pre * _task_cost(t) for t in tasks)
        for f in fractions:
            n_f = len(subsets[f, s])
            ep_f = epochs_for_steps(n_f, finetune_epochs, bs, finetune_min_steps)
            total += (1 + len(tasks)) * (ep_f * L_tr[subsets[f, s]].sum() + _eval_units(X_te))
    bar = progress if isinstance(progress, Progress) else Progress(total, 'compare', enabled=bool(progress))

    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        if on_result is not None: on_result(row)

    common = dict(arch=arch, epochs=finetune_epochs, lr=lr, bs=bs, max_len=max_len, device=dev, progress=bar,
                  arch_config=arch_config, min_steps=finetune_min_steps)
    try:
        for s in seeds:
            for f in fractions:
                idx = subsets[f, s]
                bar.advance(0, f'seed {s}: scratch, {_fmt_frac(f)} labels')
                t0 = time.time()
                acc = finetune([X_tr[i] for i in idx], y_tr[idx], X_te, y_te, seed=s, **common)
                emit(dict(method=SCRATCH, fraction=f, n_labeled=int(len(idx)), seed=s, accuracy=acc,
                          seconds=round(time.time() - t0, 2)))
            for t in tasks:
                bar.advance(0, f'seed {s}: pretrain {t}')
                wpath, info = pretrain(X_pre, t, arch, epochs=pretrain_epochs, lr=lr, bs=bs, max_len=max_len, seed=s,
                                       path=weights_dir / f'{t}_{arch}_seed{s}.pth', vocab=vocab, device=dev,
                                       progress=bar, return_info=True, arch_config=arch_config)
                emit(dict(method=t, fraction=None, n_labeled=0, seed=s, accuracy=None, seconds=info['seconds'],
                          best_valid_loss=info['best_valid_loss'], weights=str(wpath)))
                for f in fractions:
                    idx = subsets[f, s]
                    bar.advance(0, f'seed {s}: {t}, {_fmt_frac(f)} labels')
                    t0 = time.time()
                    acc = finetune([X_tr[i] for i in idx], y_tr[idx], X_te, y_te, weights=wpath, seed=s, **common)
                    emit(dict(method=t, fraction=f, n_labeled=int(len(idx)), seed=s, accuracy=acc,
                              seconds=round(time.time() - t0, 2)))
    finally:
        if not isinstance(progress, Progress): bar.close()
    return rows


# ----------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------
def _methods(rows) -> list[str]:
    seen = []
    for r in rows:
        if r.get('accuracy') is not None and r['method'] not in seen: seen.append(r['method'])
    return ([SCRATCH] if SCRATCH in seen else []) + [m for m in seen if m != SCRATCH]


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Mean and (sample) std of the test accuracy per method and fraction, with the gain over training from
    scratch in accuracy points (None for scratch or when scratch is missing). ``std`` is None for one seed."""
    fit_rows = [r for r in rows if r.get('accuracy') is not None and r.get('fraction') is not None]
    out = []
    fracs = sorted({r['fraction'] for r in fit_rows})
    for m in _methods(fit_rows):
        for f in fracs:
            accs = np.array([r['accuracy'] for r in fit_rows if r['method'] == m and r['fraction'] == f], dtype=float)
            if not len(accs): continue
            nl = sorted({r['n_labeled'] for r in fit_rows if r['method'] == m and r['fraction'] == f})
            out.append(dict(method=m, fraction=f, n_labeled=nl[0] if len(nl) == 1 else nl, n_seeds=len(accs),
                            mean=float(accs.mean()), std=float(accs.std(ddof=1)) if len(accs) > 1 else None))
    base = {a['fraction']: a for a in out if a['method'] == SCRATCH}
    for a in out:
        b = base.get(a['fraction'])
        a['gain_points'] = None if a['method'] == SCRATCH or b is None else round(100 * (a['mean'] - b['mean']), 2)
    return out


def summarize(rows: Sequence[dict], threshold: float = 1.0) -> tuple[str, str]:
    """A text table (test accuracy %, mean ± std over seeds; rows = methods, columns = label fractions) and one
    plain sentence saying which pretraining helped at which fraction and by how much (a gain counts when the
    mean accuracy is at least `threshold` points above training from scratch)."""
    agg = aggregate(rows)
    if not agg: return '(no results)', 'No results to summarize.'
    fracs = sorted({a['fraction'] for a in agg})
    methods = _methods(rows)
    cell = {(a['method'], a['fraction']): a for a in agg}
    n_seeds = max(a['n_seeds'] for a in agg)
    heads = []
    for f in fracs:
        nl = cell.get((methods[0], f), {}).get('n_labeled', '?')
        heads.append(f'{_fmt_frac(f)} (n={nl})')
    def fmt(a):
        if a is None: return '-'
        s = f"{100 * a['mean']:.1f}"
        return s + (f" ± {100 * a['std']:.1f}" if a['std'] is not None else '')
    w0 = max(len('labeled fraction'), *(len(_task_label(m)) for m in methods))
    cells = [[fmt(cell.get((m, f))) for f in fracs] for m in methods]
    ws = [max(len(h), *(len(c[j]) for c in cells)) for j, h in enumerate(heads)]
    lines = [f"test accuracy (%), mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''}",
             'labeled fraction'.ljust(w0) + '  ' + '  '.join(h.rjust(w) for h, w in zip(heads, ws))]
    lines.append('-' * len(lines[-1]))
    for m, c in zip(methods, cells):
        lines.append(_task_label(m).ljust(w0) + '  ' + '  '.join(v.rjust(w) for v, w in zip(c, ws)))
    return '\n'.join(lines), _sentence(agg, fracs, threshold, n_seeds)


def _sentence(agg, fracs, threshold, n_seeds) -> str:
    tasks = [m for m in dict.fromkeys(a['method'] for a in agg) if m != SCRATCH]
    seeds = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
    if not tasks: return 'Only training from scratch was run, so there is no pretraining to compare.'
    if not any(a['method'] == SCRATCH for a in agg): return 'Training from scratch was not run, so gains cannot be measured.'
    gains = [a for a in agg if a['gain_points'] is not None]
    helped = [a for a in gains if a['gain_points'] >= threshold]
    if not gains: return 'No labeled fraction has results both with pretraining and from scratch yet.'
    if not helped:
        best = max(gains, key=lambda a: a['gain_points'])
        return (f"No pretraining improved test accuracy over training from scratch by {threshold:g} point or more at any "
                f"labeled fraction (closest: {_task_label(best['method'])} at {_fmt_frac(best['fraction'])} labels, "
                f"{best['gain_points']:+.1f} points; {seeds}).")
    best = max(helped, key=lambda a: a['gain_points'])
    scratch = {a['fraction']: a['mean'] for a in agg if a['method'] == SCRATCH}
    noise = ''
    if best['std'] is not None:
        sd = max(best['std'], next(a['std'] for a in agg if a['method'] == SCRATCH and a['fraction'] == best['fraction']) or 0)
        noise = ', more than the seed-to-seed std' if best['gain_points'] > 100 * sd else ', within the seed-to-seed std'
    parts = [f"{_task_label(best['method'])} pretraining helped most at {_fmt_frac(best['fraction'])} labels "
             f"(+{best['gain_points']:.1f} accuracy points: {100 * best['mean']:.1f}% vs "
             f"{100 * scratch[best['fraction']]:.1f}% from scratch{noise})"]
    for t in tasks:
        hs = [a for a in helped if a['method'] == t and a is not best]
        if hs:
            where = _join([f"{_fmt_frac(a['fraction'])} (+{a['gain_points']:.1f})" for a in hs])
            also = ' also' if t == best['method'] else ''
            parts.append(f'{_task_label(t)}{also} helped at {where}')
        elif t != best['method']:
            parts.append(f'{_task_label(t)} did not help at any fraction')
    measured = {a['fraction'] for a in gains}
    not_helped = [f for f in fracs if f in measured and not any(a['fraction'] == f for a in helped)]
    if not_helped:
        worst = min((a for a in gains if a['fraction'] in not_helped), key=lambda a: a['gain_points'], default=None)
        hurt = (f", where pretraining lowered accuracy by up to {-worst['gain_points']:.1f} points"
                if worst is not None and worst['gain_points'] <= -threshold else '')
        parts.append(f"no task helped at {_join([_fmt_frac(f) for f in not_helped], 'or')}{hurt}")
    return '; '.join(parts) + f' (mean test accuracy over {seeds}; a gain counts from {threshold:g} point).'


def _join(items: list[str], word: str = 'and') -> str:
    return items[0] if len(items) == 1 else ', '.join(items[:-1]) + f' {word} {items[-1]}'


def plot_results(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                 chance: float | None = None) -> Path:
    """PNG of test accuracy vs labeled fraction (log x axis): one line per method, error bars = std over seeds;
    `chance` (e.g. 1 / n_classes) adds a dotted reference line."""
    from matplotlib.figure import Figure  # no pyplot: never changes a notebook's backend or opens a window
    agg = aggregate(rows)
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    fracs = sorted({a['fraction'] for a in agg})
    for k, m in enumerate(_methods(rows)):
        pts = sorted((a for a in agg if a['method'] == m), key=lambda a: a['fraction'])
        x = np.array([a['fraction'] for a in pts]) * (1 + 0.015 * (k - 1.5))  # small offsets: error bars stay visible
        yv = [100 * a['mean'] for a in pts]
        err = [100 * (a['std'] or 0) for a in pts]
        ax.errorbar(x, yv, yerr=err, marker='o', capsize=3, lw=2 if m != SCRATCH else 1.5,
                    ls='--' if m == SCRATCH else '-', color='0.35' if m == SCRATCH else None, label=_task_label(m))
    if chance is not None:
        ax.axhline(100 * chance, color='0.6', ls=':', lw=1, label='chance')
    if fracs:
        ax.set_xscale('log')
        ax.set_xticks(fracs); ax.set_xticklabels([_fmt_frac(f) for f in fracs]); ax.minorticks_off()
    ax.set_xlabel('labeled fraction of the training series')
    ax.set_ylabel('test accuracy (%)')
    n_seeds = max((a['n_seeds'] for a in agg), default=0)
    ax.set_title(title or f"accuracy vs labels (mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=10)
    ax.grid(alpha=0.3); ax.legend(fontsize=9)
    fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _csv_value(v):
    if v is None: return ''
    if isinstance(v, float): return f'{v:.6g}'
    if isinstance(v, (list, tuple)): return ' '.join(map(str, v))
    return v


def save_results(rows: Sequence[dict], out: str | os.PathLike, config: dict | None = None,
                 plot: bool = True, title: str | None = None, chance: float | None = None) -> dict[str, Path]:
    """Write ``results.json`` (config, every run, the aggregate, table and sentence), ``results.csv`` (one row per
    run), ``summary.csv`` (mean/std/gain per method and fraction) and ``accuracy.png`` into folder `out`."""
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    table, sentence = summarize(rows)
    agg = aggregate(rows)
    paths = dict(json=out / 'results.json', csv=out / 'results.csv', summary_csv=out / 'summary.csv')
    if plot: paths['png'] = out / 'accuracy.png'
    doc = dict(config=config or {}, runs=list(rows), summary=agg, table=table, sentence=sentence,
               files={k: str(v) for k, v in paths.items()})
    paths['json'].write_text(json.dumps(doc, indent=1, default=_json_default))
    keys = ['method', 'fraction', 'n_labeled', 'seed', 'accuracy', 'seconds', 'best_valid_loss', 'weights']
    with open(paths['csv'], 'w', newline='') as fh:
        w = csv.writer(fh); w.writerow(keys)
        for r in rows: w.writerow([_csv_value(r.get(k)) for k in keys])
    keys = ['method', 'fraction', 'n_labeled', 'n_seeds', 'mean', 'std', 'gain_points']
    with open(paths['summary_csv'], 'w', newline='') as fh:
        w = csv.writer(fh); w.writerow(keys)
        for a in agg: w.writerow([_csv_value(a.get(k)) for k in keys])
    if plot: plot_results(rows, paths['png'], title=title, chance=chance)
    return paths


def _json_default(o):
    if isinstance(o, np.generic): return o.item()
    if isinstance(o, np.ndarray): return o.tolist()
    if isinstance(o, Path): return str(o)
    return str(o)
