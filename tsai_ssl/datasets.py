"""Datasets for tsai-ssl: a synthetic stand-in for the user's data, UCR loaders, quantization.

Every series is a numpy array of shape (C, L); a dataset is a list of such arrays
(lengths may differ) plus an int64 label vector.

    X, y = make_synthetic(600)                            # list of (1, L) uint8, labels 0..3
    X_train, y_train, X_test, y_test = make_synthetic_split(200, 400)
    X_train, y_train, X_test, y_test, classes = load_ucr("PLAID")
    q = Quantizer(41).fit(X_train); X_train, X_test = q.transform(X_train), q.transform(X_test)
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .series import as_series, check_series

# -----------------------------------------------------------------------------
# synthetic integer sequences
#
# Background (shared by all classes): Poisson counts whose log-rate is a per-series
# level plus an AR(1) process, so the local level is predictable from the recent past,
# plus occasional bursts (jump, then exponential decay) like the ones in the user's data.
# Class signal: short motifs at random positions. A motif is k linear pieces, each
# rising 0 -> 1 or falling 1 -> 0, scaled by a random amplitude; the class picks the
# up/down pattern (k=2: up-up, up-down, down-up, down-down). For a given piece length and
# amplitude every pattern takes the same values, so all classes share the value histogram,
# mean, std and max: only the order of values within a motif tells them apart. Some motifs
# in each series belong to other classes (distractors), so a label needs several motifs.

_BASE_RATE = 2.5      # median background rate (mean count comes out near 3)
_LEVEL_STD = 0.3      # std of the per-series log-rate offset
_AR_PHI = 0.97        # AR(1) coefficient of the log-rate
_AR_STD = 0.4         # stationary std of the AR(1) part of the log-rate
_BURST_EVERY = 1500   # mean spacing (steps) of shared bursts
_MOTIF_EVERY = 2048   # mean spacing (steps) of class motifs; every series gets at least 2
_PIECE_LEN = (6, 13)  # length range of one motif piece, [low, high)
_MOTIF_AMP = (6.0, 14.0)
_PURITY = 0.7         # probability that a motif is the series' own class


def _ar1(rng: np.random.Generator, size: int, phi: float, std: float) -> np.ndarray:
    """Stationary AR(1) sample: white noise convolved with the impulse response phi**j,
    truncated where phi**j < 1e-4."""
    kernel = phi ** np.arange(int(math.log(1e-4) / math.log(phi)))
    noise = rng.standard_normal(size + len(kernel) - 1) * (std * math.sqrt(1 - phi**2))
    return np.convolve(noise, kernel, mode="valid")


def _paint(total: int, starts: np.ndarray, lengths: np.ndarray, value) -> np.ndarray:
    """Sum of events on a stream of `total` steps; event e covers starts[e]:starts[e]+lengths[e]
    and `value(event_index, step_within_event)` gives its (vectorized) values."""
    event = np.repeat(np.arange(len(starts)), lengths)
    step = np.arange(len(event)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.bincount(starts[event] + step, weights=value(event, step), minlength=total)


def _place(rng: np.random.Generator, lengths: np.ndarray, offsets: np.ndarray, every: int,
           min_count: int, event_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Events at random positions: min_count + Poisson(L / every) per series, each of
    length event_len[series] and fully inside its series. Returns (owner series, start on the stream)."""
    owner = np.repeat(np.arange(len(lengths)), min_count + rng.poisson(lengths / every))
    room = lengths[owner] - event_len[owner] + 1
    return owner, offsets[owner] + (rng.random(len(owner)) * room).astype(np.int64)


def make_synthetic(n: int = 600, n_classes: int = 4, min_len: int = 512, max_len: int = 30720,
                   n_values: int = 41, seed: int = 0,
                   labeled: bool = True) -> tuple[list[np.ndarray], np.ndarray | None]:
    """n one-channel integer series shaped like the user's data, with class-specific local motifs.

    Returns (X, y): X is a list of n uint8 arrays of shape (1, L_i) with values in 0..n_values-1
    and L_i log-uniform in [min_len, max_len]; y is int64 (n,) with balanced classes (counts
    differ by at most one). y is None when labeled=False; the series are generated the same way.
    """
    return _synthetic(np.random.default_rng(seed), n, n_classes, min_len, max_len, n_values, labeled)


def make_synthetic_split(n_train: int = 600, n_test: int = 600, n_classes: int = 4,
                         min_len: int = 512, max_len: int = 30720, n_values: int = 41,
                         seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """(X_train, y_train, X_test, y_test) from two independent random streams of one seed."""
    kw = dict(n_classes=n_classes, min_len=min_len, max_len=max_len, n_values=n_values, labeled=True)
    X_train, y_train = _synthetic(np.random.default_rng([seed, 0]), n_train, **kw)
    X_test, y_test = _synthetic(np.random.default_rng([seed, 1]), n_test, **kw)
    return X_train, y_train, X_test, y_test


def _synthetic(rng: np.random.Generator, n: int, n_classes: int, min_len: int, max_len: int, n_values: int,
               labeled: bool) -> tuple[list[np.ndarray], np.ndarray | None]:
    if not 2 <= n_classes <= 16:
        raise ValueError(f"n_classes must be in 2..16, got {n_classes}")
    pieces = math.ceil(math.log2(n_classes))  # up/down pieces per motif: 2**pieces >= n_classes
    max_motif = pieces * (_PIECE_LEN[1] - 1)
    if not max_motif <= min_len <= max_len:
        raise ValueError(f"need {max_motif} <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if not 2 <= n_values <= 256:
        raise ValueError(f"n_values must be in 2..256 (uint8), got {n_values}")

    lengths = np.exp(rng.uniform(np.log(min_len), np.log(max_len + 1), n)).astype(np.int64)
    y = rng.permutation(np.arange(n) % n_classes)
    # all series are cut from one stream at the end, so neighbours share AR(1) state at
    # their boundary; levels, bursts, motifs and labels are drawn per series
    offsets = np.cumsum(lengths) - lengths
    total = int(lengths.sum())

    log_rate = math.log(_BASE_RATE) + _ar1(rng, total, _AR_PHI, _AR_STD)
    log_rate += np.repeat(rng.normal(0, _LEVEL_STD, n), lengths)
    rate = np.exp(log_rate)

    # shared bursts: jump to amp, then decay with time constant tau (tail cut at 4 tau);
    # tau is per series, so each series has a consistent burst style
    tau = rng.uniform(2, 8, n)
    burst_len = np.minimum(np.ceil(4 * tau).astype(np.int64), lengths)
    owner, start = _place(rng, lengths, offsets, _BURST_EVERY, 0, burst_len)
    amp = rng.uniform(5, 30, len(owner))
    rate += _paint(total, start, burst_len[owner], lambda e, t: amp[e] * np.exp(-t / tau[owner[e]]))

    # class motifs: bit b of a motif's pattern says whether piece b rises (1) or falls (0)
    owner, start = _place(rng, lengths, offsets, _MOTIF_EVERY, 2, np.full(n, max_motif))
    own = rng.random(len(owner)) < _PURITY
    other = (y[owner] + rng.integers(1, n_classes, len(owner))) % n_classes  # uniform over the other classes
    pattern = np.where(own, y[owner], other)
    piece_len = rng.integers(*_PIECE_LEN, len(owner))
    amp = rng.uniform(*_MOTIF_AMP, len(owner))

    def motif(e, t):
        p = piece_len[e]
        up = (pattern[e] >> (pieces - 1 - t // p)) & 1
        u = (t % p + 0.5) / p  # midpoints, so rising and falling pieces take the same values
        return amp[e] * np.where(up == 1, u, 1 - u)

    rate += _paint(total, start, pieces * piece_len, motif)

    x = np.minimum(rng.poisson(rate), n_values - 1).astype(np.uint8)
    X = [s[None] for s in np.split(x, offsets[1:])]
    return X, (y.astype(np.int64) if labeled else None)


# -----------------------------------------------------------------------------
# the demo set: the regime self-supervision is for
#
# A shared vocabulary of short count patterns ("words": a bump, a ramp up, a ramp down, two peaks, a plateau,
# ...) occurs all over every series, on a slowly drifting Poisson background. The class is which words a series
# uses most: class c draws words 2c and 2c+1 with probability 0.4 each and the others share 0.2. Words, their
# amplitude (per series) and the background are the same for every class, so a classifier has to learn what the
# words look like and count them. Unlabeled series show the words as often as labeled ones: masked-value and
# next-step prediction must learn them to fill in or continue a series, and two crops of one series share its
# mix of words. A handful of labels does not teach the words; a few thousand series without labels do.

_DEMO_WORD_LEN = 24
_DEMO_WORD_EVERY = 30   # mean spacing (steps) of words
_DEMO_PEAK = 12.        # mean height a word adds to the rate
_DEMO_BACKGROUND = 3.   # median background rate
_DEMO_OTHERS = 0.2      # share of words that are not the class's own two


def _demo_words(n_words: int) -> np.ndarray:
    "(n_words, _DEMO_WORD_LEN) non-negative shapes of mean 0.5; the first 8 distinct, further ones shifted copies."
    t = np.linspace(0, 1, _DEMO_WORD_LEN)
    base = [np.sin(np.pi * t), t, 1 - t, np.sin(2 * np.pi * t) ** 2, ((t > 0.3) & (t < 0.7)).astype(float),
            np.abs(np.sin(3 * np.pi * t)), np.exp(-((t - 0.2) / 0.08) ** 2) + np.exp(-((t - 0.8) / 0.08) ** 2),
            0.5 + 0.5 * np.cos(4 * np.pi * t)]
    w = np.stack([np.roll(base[k % 8], 3 * (k // 8)) for k in range(n_words)])
    return w * (0.5 / w.mean(1, keepdims=True))  # one area: a word adds the same counts whatever its shape


def _demo_series(rng: np.random.Generator, n: int, n_classes: int, min_len: int, max_len: int,
                 labeled: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    from scipy.signal import lfilter  # scipy comes with scikit-learn
    words = _demo_words(2 * n_classes)
    n_words = len(words)
    lengths = np.exp(rng.uniform(np.log(min_len), np.log(max_len + 1), n)).astype(np.int64)
    y = rng.permutation(np.arange(n) % n_classes)
    X = []
    for L, c in zip(lengths, y):
        p = np.full(n_words, _DEMO_OTHERS / (n_words - 2)); p[2 * c] = p[2 * c + 1] = (1 - _DEMO_OTHERS) / 2
        drift = lfilter([1.], [1., -0.99], rng.normal(0, 0.3 * np.sqrt(1 - 0.99 ** 2), L))  # AR(1) log-rate
        rate = _DEMO_BACKGROUND * np.exp(rng.normal(0, 0.3) + drift)
        k = rng.poisson(L / _DEMO_WORD_EVERY)
        amp = _DEMO_PEAK * rng.uniform(0.6, 1.4)
        for s0, w in zip(rng.integers(0, L - _DEMO_WORD_LEN, k), rng.choice(n_words, k, p=p)):
            rate[s0:s0 + _DEMO_WORD_LEN] += amp * words[w]
        X.append(np.minimum(rng.poisson(rate), 40).astype(np.uint8)[None])
    return X, y.astype(np.int64)


class DemoData(NamedTuple):
    """The demo set (`make_demo_data`): few labeled series, many unlabeled, a test split."""
    X_train: list[np.ndarray]      # uint8 (1, L_i), values 0..40
    y_train: np.ndarray            # int64 0..n_classes-1, balanced
    X_unlabeled: list[np.ndarray]  # drawn like X_train, labels dropped
    X_test: list[np.ndarray]
    y_test: np.ndarray


def make_demo_data(n_train: int = 200, n_unlabeled: int = 2000, n_test: int = 400, n_classes: int = 4,
                   min_len: int = 256, max_len: int = 1024, seed: int = 0) -> DemoData:
    """Integer counts 0..40 in the regime self-supervised pretraining is for: the class is which of a shared
    vocabulary of short patterns a series uses most (see the comment above), and the unlabeled series outnumber
    the labeled ones 10 to 1. Lengths log-uniform in [min_len, max_len]; three independent streams of one seed."""
    if not 2 <= n_classes <= 8: raise ValueError(f'n_classes must be in 2..8, got {n_classes}')
    if min_len < 2 * _DEMO_WORD_LEN or max_len < min_len:
        raise ValueError(f'need {2 * _DEMO_WORD_LEN} <= min_len <= max_len, got {min_len}, {max_len}')
    parts = [_demo_series(np.random.default_rng([seed, k]), m, n_classes, min_len, max_len)
             for k, m in enumerate((n_train, n_unlabeled, n_test))]
    return DemoData(parts[0][0], parts[0][1], parts[1][0], parts[2][0], parts[2][1])


# -----------------------------------------------------------------------------
# UCR/UEA classification sets shipped inside sktime's wheel (no download)

class UCRData(NamedTuple):
    """A UCR/UEA train/test split; unpacks as (X_train, y_train, X_test, y_test, classes),
    or take the first four with `load_ucr(name)[:4]`."""
    X_train: list[np.ndarray]  # float32 (C, L_i), lengths as in the file
    y_train: np.ndarray        # int64 in 0..K-1
    X_test: list[np.ndarray]
    y_test: np.ndarray
    classes: list[str]         # classes[k]: the label of class k in the file (sktime lowercases it)


def _ucr_dir() -> Path:
    spec = importlib.util.find_spec("sktime")  # locates sktime without importing it (~2 s)
    if spec is None:
        raise ImportError("UCR loading needs sktime: pip install sktime (it is in tsai-ssl's dev extra)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def _is_classification(folder: Path) -> bool:
    """True when folder holds NAME_TRAIN.ts and NAME_TEST.ts and the header says @classLabel true."""
    train, test = (folder / f"{folder.name}_{split}.ts" for split in ("TRAIN", "TEST"))
    if not (train.is_file() and test.is_file()):
        return False
    with open(train, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.lower().split()
            if words and words[0] == "@classlabel":
                return words[1:2] == ["true"]
            if words and words[0] == "@data":
                return False
    return False


def available_ucr() -> list[str]:
    """Names of the classification sets shipped with the installed sktime."""
    return sorted(d.name for d in _ucr_dir().iterdir() if _is_classification(d))


def _read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    from sktime.datasets import load_from_tsfile_to_dataframe  # lazy: importing sktime takes ~2 s

    # nested DataFrame: one row per series, one pd.Series cell per channel; keeps unequal lengths
    df, labels = load_from_tsfile_to_dataframe(str(path))
    X = [np.stack([np.asarray(cell, dtype=np.float32) for cell in row]) for row in df.itertuples(index=False)]
    return X, [str(label) for label in labels]


def _sorted_labels(labels) -> list[str]:
    """Numeric order when every label is a number ('2' before '10'), else string order."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def load_ucr(name: str) -> UCRData:
    """Load the UCR/UEA classification set `name` (see available_ucr()) from sktime's wheel.

        X_train, y_train, X_test, y_test = load_ucr("ArrowHead")[:4]

    Series are float32 (C, L_i), not padded. Labels are int64 0..K-1 by sorted class label,
    one mapping for train and test; the labels themselves are in .classes.
    """
    names = {n.lower(): n for n in available_ucr()}
    if name.lower() not in names:
        raise ValueError(f"unknown UCR dataset {name!r}; available: {', '.join(names.values())}")
    name = names[name.lower()]
    X_train, labels_train = _read_ts(_ucr_dir() / name / f"{name}_TRAIN.ts")
    X_test, labels_test = _read_ts(_ucr_dir() / name / f"{name}_TEST.ts")
    classes = _sorted_labels(set(labels_train) | set(labels_test))
    code = {c: k for k, c in enumerate(classes)}
    y_train = np.array([code[c] for c in labels_train], dtype=np.int64)
    y_test = np.array([code[c] for c in labels_test], dtype=np.int64)
    return UCRData(X_train, y_train, X_test, y_test, classes)


# -----------------------------------------------------------------------------
# quantization: real-valued series -> integer tokens 0..n_levels-1

def _as_series(X: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """X (list of (C, L_i) arrays or an (N, C, L) array) as a list of (C, L_i) arrays, by the shared rules of
    `tsai_ssl.series`: trailing all-NaN steps are padding (cut), other NaN or inf is an `InputError` naming the
    series and step, and every series needs the channels of the first."""
    series = as_series(X)
    check_series(series)
    return series


class Quantizer:
    """Bins each channel into n_levels integer levels 0..n_levels-1, fitted on training data.

    method='quantile': equal-count bins (tied values share a level, so some levels may stay empty);
    method='uniform': equal-width bins between the fitted min and max.
    Values outside the fitted range map to level 0 or n_levels-1.
    """

    def __init__(self, n_levels: int = 41, method: str = "quantile"):
        if n_levels < 2:
            raise ValueError(f"n_levels must be >= 2, got {n_levels}")
        if method not in ("quantile", "uniform"):
            raise ValueError(f"method must be 'quantile' or 'uniform', got {method!r}")
        self.n_levels, self.method = n_levels, method
        self.dtype = np.uint8 if n_levels <= 256 else np.int64
        self.edges: np.ndarray | None = None  # (C, n_levels - 1) inner bin edges, set by fit

    def fit(self, X: list[np.ndarray] | np.ndarray) -> Quantizer:
        values = np.concatenate(_as_series(X), axis=1).astype(np.float64)  # (C, total length)
        levels = np.arange(1, self.n_levels) / self.n_levels
        if self.method == "quantile":
            self.edges = np.quantile(values, levels, axis=1).T
        else:
            lo, hi = values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
            self.edges = lo + (hi - lo) * levels
        return self

    def transform(self, X: list[np.ndarray] | np.ndarray) -> list[np.ndarray] | np.ndarray:
        """Same structure as X (list in, list out; array in, array out; a NaN-padded array gives a list of the
        trimmed series), integer levels of self.dtype."""
        if self.edges is None:
            raise RuntimeError("Quantizer.transform called before fit")
        series = _as_series(X)
        if series[0].shape[0] != len(self.edges):
            raise ValueError(f"fitted on {len(self.edges)} channels, got {series[0].shape[0]}")
        if isinstance(X, np.ndarray) and all(x.shape[-1] == X.shape[-1] for x in series):
            return self._levels(X)  # an array without NaN padding: an array back (padded arrays give the trimmed list)
        return [self._levels(x) for x in series]

    def _levels(self, x: np.ndarray) -> np.ndarray:
        # level = number of edges strictly below the value, so the fitted minimum is level 0
        return np.stack([np.searchsorted(e, x[..., c, :], side="left") for c, e in enumerate(self.edges)],
                        axis=-2).astype(self.dtype)


def quantize(X: list[np.ndarray] | np.ndarray, n_levels: int = 41, method: str = "quantile",
             fit_on: list[np.ndarray] | np.ndarray | None = None) -> list[np.ndarray] | np.ndarray:
    """Quantize X with bins fitted on fit_on (default X): Quantizer(n_levels, method).fit(fit_on).transform(X)."""
    return Quantizer(n_levels, method).fit(X if fit_on is None else fit_on).transform(X)
