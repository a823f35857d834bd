import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tsai_ssl.datasets import Quantizer, available_ucr, load_ucr, make_synthetic, make_synthetic_split, quantize

# -----------------------------------------------------------------------------
# make_synthetic


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(600, seed=0)


@pytest.fixture(scope="module")
def synth_split():
    return make_synthetic_split(600, 600, seed=0)


def test_synthetic_shapes_dtypes_ranges(synth):
    X, y = synth
    assert len(X) == 600 and y.shape == (600,) and y.dtype == np.int64
    for x in X:
        assert x.dtype == np.uint8 and x.ndim == 2 and x.shape[0] == 1
        assert 512 <= x.shape[1] <= 30720
    values = np.concatenate([x[0] for x in X])
    assert values.max() <= 40
    assert 1.5 < values.mean() < 5  # small counts, like the user's data
    assert set(np.unique(y)) == {0, 1, 2, 3}
    assert np.all(np.bincount(y) == 150)


def test_synthetic_lengths_log_uniform(synth):
    log_len = np.log([x.shape[1] for x in synth[0]])
    edges = np.linspace(np.log(512), np.log(30721), 5)
    frac = np.histogram(log_len, edges)[0] / len(log_len)
    assert np.all(np.abs(frac - 0.25) < 0.07), frac


def test_synthetic_deterministic():
    X1, y1 = make_synthetic(20, seed=3, max_len=4096)
    X2, y2 = make_synthetic(20, seed=3, max_len=4096)
    X3, y3 = make_synthetic(20, seed=4, max_len=4096)
    assert np.array_equal(y1, y2) and all(np.array_equal(a, b) for a, b in zip(X1, X2))
    assert [x.shape for x in X1] != [x.shape for x in X3]


def test_synthetic_options():
    X, y = make_synthetic(30, n_classes=3, min_len=100, max_len=200, n_values=8, seed=1, labeled=False)
    assert y is None and len(X) == 30
    assert all(100 <= x.shape[1] <= 200 and x.max() <= 7 for x in X)
    _, y = make_synthetic(30, n_classes=3, min_len=100, max_len=200, seed=1)
    assert np.all(np.bincount(y) == 10)
    with pytest.raises(ValueError):
        make_synthetic(10, min_len=10)
    with pytest.raises(ValueError):
        make_synthetic(10, n_values=300)


def test_synthetic_split_independent(synth_split):
    X_train, y_train, X_test, y_test = synth_split
    assert len(X_train) == len(y_train) == 600 and len(X_test) == len(y_test) == 600
    assert [x.shape for x in X_train] != [x.shape for x in X_test]


def test_synthetic_local_level_is_predictable(synth):
    # the mean of the previous 16 values predicts the next one better than the series mean does
    err_local = err_global = 0.0
    for x in synth[0][:100]:
        s = x[0].astype(np.float64)
        past = np.convolve(s, np.ones(16) / 16, mode="valid")[:-1]
        err_local += ((s[16:] - past) ** 2).sum()
        err_global += ((s[16:] - s.mean()) ** 2).sum()
    assert err_local < 0.9 * err_global


def _global_stats(X):
    return np.array([[x.mean(), x.std(), np.log(x.shape[1]), x.max(), (x == 0).mean()] for x in X])


def _slope_patterns(X, w=4, gap=4, thr=2.0):
    """Bag of local shapes: each step's smoothed slope is rising/flat/falling, and we count
    the 27 patterns of three slopes `gap` steps apart, per unit length."""
    feats = []
    for x in X:
        s = np.convolve(x[0].astype(np.float64), np.ones(w) / w, mode="valid")
        d = s[w:] - s[:-w]
        sym = 1 + (d > thr).astype(np.int64) - (d < -thr)
        code = 9 * sym[:-2 * gap] + 3 * sym[gap:-gap] + sym[2 * gap:]
        feats.append(np.bincount(code, minlength=27) / len(code))
    return np.array(feats)


def test_synthetic_classes_need_local_structure(synth_split):
    # Global statistics carry no class information; local shape statistics do.
    X_train, y_train, X_test, y_test = synth_split

    def accuracy(features):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        return clf.fit(features(X_train), y_train).score(features(X_test), y_test)

    acc_global, acc_local = accuracy(_global_stats), accuracy(_slope_patterns)
    assert acc_global < 0.35, acc_global  # chance is 0.25; 600 test series
    assert acc_local > 0.42, acc_local


# -----------------------------------------------------------------------------
# load_ucr

def _n_cases(name, split):
    """Number of series in the .ts file: the lines after @data, read without sktime."""
    data_dir = Path(importlib.util.find_spec("sktime").submodule_search_locations[0]) / "datasets" / "data"
    lines = (data_dir / name / f"{name}_{split}.ts").read_text(encoding="utf-8", errors="replace").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data")
    return sum(1 for line in lines[start + 1:] if line.strip())


def test_available_ucr():
    names = available_ucr()
    assert {"ArrowHead", "PLAID", "GunPoint", "BasicMotions", "JapaneseVowels"} <= set(names)
    assert "Tecator" not in names  # regression set


def test_load_ucr_equal_length():
    X_train, y_train, X_test, y_test = load_ucr("ArrowHead")[:4]
    assert (len(X_train), len(X_test)) == (_n_cases("ArrowHead", "TRAIN"), _n_cases("ArrowHead", "TEST")) == (36, 175)
    assert all(x.shape == (1, 251) and x.dtype == np.float32 for x in X_train + X_test)
    assert y_train.dtype == y_test.dtype == np.int64
    assert set(y_train) == set(y_test) == {0, 1, 2}


def test_load_ucr_variable_length():
    data = load_ucr("PLAID")
    assert (len(data.X_train), len(data.X_test)) == (_n_cases("PLAID", "TRAIN"), _n_cases("PLAID", "TEST")) == (537, 537)
    assert all(x.ndim == 2 and x.shape[0] == 1 and x.dtype == np.float32 for x in data.X_train + data.X_test)
    assert len({x.shape[1] for x in data.X_train}) > 10
    assert data.classes == [str(k) for k in range(11)]  # numeric order: '10' last
    for y in (data.y_train, data.y_test):
        assert y.dtype == np.int64 and y.min() == 0 and y.max() == 10


def test_load_ucr_multivariate_string_labels():
    X_train, y_train, X_test, y_test, classes = load_ucr("basicmotions")  # name is case-insensitive
    assert X_train[0].shape == (6, 100)
    assert classes == sorted(classes) and len(classes) == 4
    assert np.all(np.bincount(y_train) == 10)


def test_load_ucr_unknown_name():
    with pytest.raises(ValueError, match="ArrowHead"):
        load_ucr("NoSuchSet")


def test_load_ucr_without_sktime(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sktime" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install sktime"):
        load_ucr("ArrowHead")


# -----------------------------------------------------------------------------
# quantize

def test_quantize_range_dtype_monotone():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2, 100)).astype(np.float32)
    X[:, 1] *= 100  # channels are binned separately
    for method in ("quantile", "uniform"):
        Q = quantize(X, 41, method)
        assert isinstance(Q, np.ndarray) and Q.shape == X.shape and Q.dtype == np.uint8
        assert Q.min() == 0 and Q.max() == 40
        for c in range(2):
            order = np.argsort(X[:, c].ravel())
            assert np.all(np.diff(Q[:, c].ravel()[order].astype(int)) >= 0)
    counts = np.bincount(quantize(X, 10)[:, 0].ravel(), minlength=10)
    assert np.all(np.abs(counts - 500) <= 1)  # quantile bins hold equal counts
    assert quantize(X, 300).dtype == np.int64


def test_quantize_fit_on_train_apply_to_test():
    rng = np.random.default_rng(1)
    X_train = [rng.normal(size=(1, n)) for n in (50, 80, 120)]
    X_test = [rng.normal(size=(1, n)) * 3 for n in (30, 60)]  # wider range than train
    q = Quantizer(16).fit(X_train)
    Q = q.transform(X_test)
    assert isinstance(Q, list) and [x.shape for x in Q] == [(1, 30), (1, 60)]
    assert all(x.dtype == np.uint8 and x.min() >= 0 and x.max() <= 15 for x in Q)
    assert any(x.min() == 0 for x in Q) and any(x.max() == 15 for x in Q)  # out-of-range values clip
    assert all(np.array_equal(a, b) for a, b in zip(Q, quantize(X_test, 16, fit_on=X_train)))


def test_quantize_nan_names_sample():
    X = [np.zeros((1, 10)), np.ones((1, 10)), np.ones((1, 10))]
    X[2][0, 4] = np.nan
    with pytest.raises(ValueError, match=r"X\[2\] has NaN at step 4"):
        quantize(X)
    with pytest.raises(ValueError, match=r"X\[2\] has NaN at step 4"):
        Quantizer().fit(X[:2]).transform(X)



def test_quantize_nan_padded_array_gives_trimmed_series():
    "The shared NaN rules: trailing all-NaN steps are padding, so a padded array quantizes to the trimmed series."
    X = np.random.default_rng(0).normal(size=(3, 1, 12))
    X[1, :, 8:] = np.nan
    Q = quantize(X, 4)
    assert isinstance(Q, list) and [q.shape for q in Q] == [(1, 12), (1, 8), (1, 12)]
    assert isinstance(quantize(np.nan_to_num(X), 4), np.ndarray)  # no padding: an array back


# -----------------------------------------------------------------------------
# the demo set

def test_demo_data_shapes_balance_determinism():
    from tsai_ssl.datasets import make_demo_data
    d = make_demo_data(n_train=40, n_unlabeled=80, n_test=20, min_len=64, max_len=256, seed=3)
    assert (len(d.X_train), len(d.X_unlabeled), len(d.X_test)) == (40, 80, 20)
    for X in (d.X_train, d.X_unlabeled, d.X_test):
        assert all(x.dtype == np.uint8 and x.shape[0] == 1 and 64 <= x.shape[1] <= 256 and x.max() <= 40 for x in X)
    assert np.bincount(d.y_train).tolist() == [10] * 4
    e = make_demo_data(n_train=40, n_unlabeled=80, n_test=20, min_len=64, max_len=256, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(d.X_unlabeled, e.X_unlabeled))
    with pytest.raises(ValueError, match='n_classes'): make_demo_data(n_classes=9)


def test_demo_classes_are_in_the_words_not_in_global_statistics():
    "Counting the words (a matched filter per word) tells the classes apart; the value histogram hardly does."
    from tsai_ssl.datasets import _demo_words, make_demo_data
    d = make_demo_data(n_train=300, n_unlabeled=0, n_test=300, seed=1)
    words = _demo_words(8) - 0.5

    def word_counts(X):
        out = []
        for x in X:
            v = x[0].astype(float) - x[0].mean()
            r = np.stack([np.correlate(v, w, 'valid') for w in words])  # (8, L'): which word fits each window
            out.append(np.r_[np.bincount(r.argmax(0)[r.max(0) > 10], minlength=8) / len(v), np.maximum(r, 0).mean(1) / (v.std() + 1)])
        return np.array(out)

    def histogram(X):
        return np.array([np.r_[np.bincount(x[0], minlength=41)[:41] / x.shape[1], x.std(), x.max()] for x in X])

    def accuracy(features):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        return clf.fit(features(d.X_train), d.y_train).score(features(d.X_test), d.y_test)

    acc_words, acc_hist = accuracy(word_counts), accuracy(histogram)
    assert acc_words > 0.65, acc_words  # 0.75 measured: a crude filter, a CNN does better
    assert acc_hist < 0.4, acc_hist  # 0.29 measured; chance is 0.25
