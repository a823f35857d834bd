import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings('ignore', category=FutureWarning)


@pytest.fixture(autouse=True, scope='session')
def _one_thread():
    "Tiny tensors: one intra-op thread is fastest and avoids OpenMP oversubscription on a 2-core machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_and_tmp_cwd(tmp_path, monkeypatch):
    "Every test in its own folder (fastai writes models/ under the Learner's path) with fixed seeds."
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def ar_counts(n: int, min_len: int = 60, max_len: int = 160, seed: int = 0, n_classes: int = 0):
    """Integer series 0..40 with local dynamics (a rounded AR(1) around 20), variable length; labels when n_classes."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, n)
    X = []
    for L in lens:
        e = rng.normal(0, 2, L)
        v = np.zeros(L)
        for t in range(1, L): v[t] = 0.9 * v[t - 1] + e[t]
        X.append(np.clip(np.round(v + 20), 0, 40).astype(np.uint8)[None])
    y = rng.integers(0, n_classes, n) if n_classes else None
    return X, y


@pytest.fixture
def counts():
    return ar_counts(48)


def poisson_series(n: int, lo: int, hi: int, seed: int = 0):
    "Count series (Poisson, mean 3) of random lengths in [lo, hi)."
    rng = np.random.default_rng(seed)
    return [rng.poisson(3, size=(1, int(rng.integers(lo, hi)))).astype(np.float32) for _ in range(n)]
