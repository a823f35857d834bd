"""Speed of the variable-length data layer and of the SSL callbacks' training steps (run by hand).

    python bench/speed_bench.py                 # both parts, CPU
    python bench/speed_bench.py --part steps --lengths 2048 30720 --bs 8

Part 'bucketing': one training epoch of ResNetPlus over the same series (log-uniform lengths 512..30720),
batched by length (tsai_ssl) vs padded to the longest series in the data (what a fixed-length array forces).
Part 'steps': time of one training step (forward, loss, backward, optimizer) of each SSL callback vs a plain
supervised step on the same backbone, batch and length. Ratios are what to read: both sides run in one process
on the same machine, alternating, median of `--reps` repetitions.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings('ignore')


def _learner(dls, cbs=None):
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus
    learn = ts_learner(dls, ResNetPlus, cbs=cbs)
    return learn


def bucketing(n: int, bs: int, seed: int = 0):
    from tsai_ssl import get_ssl_dls
    rng = np.random.default_rng(seed)
    lens = np.exp(rng.uniform(np.log(512), np.log(30720), n)).astype(int)
    X = [rng.integers(0, 41, (1, L)).astype(np.uint8) for L in lens]
    y = rng.integers(0, 2, n)
    res = {}
    for name, kw in [('bucketed', dict(bucket=True)), ('padded to longest', dict(bucket=False))]:
        dls = get_ssl_dls(X, y, bs=bs, seed=seed, **kw)
        if name == 'padded to longest':  # every batch as long as the longest series: one fixed-length array
            dls.train.pad_value = 0.
            Lmax = int(lens.max())
            X_fixed = np.zeros((n, 1, Lmax), np.uint8)
            for i, s in enumerate(X): X_fixed[i, :, :s.shape[-1]] = s
            dls = get_ssl_dls(X_fixed, y, bs=bs, seed=seed, bucket=False)
        learn = _learner(dls)
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
        res[name] = (time.perf_counter() - t0, dls.train.padded_fraction() if kw['bucket'] else 1 - lens.sum() / (n * lens.max()))
        print(f'{name:>18}: epoch {res[name][0]:7.1f} s, padded positions {res[name][1]:.1%}', flush=True)
    print(f'bucketing speed-up: {res["padded to longest"][0] / res["bucketed"][0]:.2f}x')


def step_times(L: int, bs: int, reps: int):
    from tsai_ssl import ContrastivePretrain, MaskedValuePretrain, NextStepPretrain, get_ssl_dls
    rng = np.random.default_rng(0)
    X = rng.integers(0, 41, (bs, 1, L)).astype(np.uint8)
    tasks = {'supervised': None, 'masked': MaskedValuePretrain, 'next-step': NextStepPretrain,
             'contrastive': ContrastivePretrain}
    learners = {}
    for name, task in tasks.items():
        dls = get_ssl_dls(X, rng.integers(0, 2, bs) if task is None else None, bs=bs)
        learn = _learner(dls, cbs=[task()] if task else None)
        learn.create_opt()
        from fastai.callback.progress import ProgressCallback
        learn.remove_cb(ProgressCallback)
        learn.n_epoch, learn.epoch, learn.n_iter, learn.train_iter, learn.pct_train = 1, 0, 10 ** 6, 0, 0.
        learn('before_fit')  # attach the pretext head exactly as fit does (Recorder etc. set up too)
        learn.dl = dls.train
        learn.training = True
        learners[name] = (learn, dls.train.one_batch())
    times = {k: [] for k in tasks}
    for _ in range(reps + 1):  # first round is warm-up
        for name, (learn, b) in learners.items():
            learn.dl.one_batch()  # sets the loader's pad_mask/raw_input like iteration does
            t0 = time.perf_counter()
            learn.one_batch(0, b)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times['supervised'][1:])
    for name in tasks:
        t = statistics.median(times[name][1:])
        print(f'L={L:6d} bs={bs}: {name:>12} step {t * 1000:8.1f} ms  ratio {t / base:5.2f}x', flush=True)
    for learn, _ in learners.values(): learn('after_fit')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--part', choices=['bucketing', 'steps', 'all'], default='all')
    p.add_argument('--n', type=int, default=96, help='series in the bucketing epoch')
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--lengths', type=int, nargs='+', default=[2048, 30720])
    p.add_argument('--reps', type=int, default=3)
    a = p.parse_args(argv)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    if a.part in ('bucketing', 'all'): bucketing(a.n, a.bs)
    if a.part in ('steps', 'all'):
        for L in a.lengths: step_times(L, a.bs, a.reps)


if __name__ == '__main__':
    main()
