"""Speed of the variable-length data layer and of the SSL callbacks' training steps (run by hand).

    python bench/speed_bench.py                 # both parts, CPU
    python bench/speed_bench.py --part steps --lengths 2048 30720 --bs 8

Part 'bucketing': one training epoch of ResNetPlus over the same series (log-uniform lengths 512..30720),
batched by length (tsai_ssl) vs padded to the longest series in the data (what a fixed-length array forces).
Part 'steps': time of one training step (forward, loss, backward, optimizer) of each SSL callback vs a plain
supervised step on the same backbone, batch and length. Ratios are what to read: both sides run in one process
on the same machine, alternating, median of `--reps` repetitions. A contrastive step runs two views of every
series through the backbone (MoCo and BYOL also through their EMA teacher, forward only); by default each view is
a random half of the series, so the two cost about one batch.
On request: 'contrastive 50-100% crops' (the earlier default views), 'supervised 2x' (a supervised step on twice the
batch, what two full-length views cost) and 'next-step pad' (`NextStepPretrain(causal='pad')`).
'+saver' rows add `MemorySaver()` ('flat': ``nested=False``): its cost in time. 'ts2vec' (`TS2VecPretrain`) first cuts
series longer than 1024 steps to a 1024-step window (its default ``window``), so from 2048 steps on it runs shorter
series than the supervised step it is compared with: the ratio is what a TS2Vec step costs, not a like-for-like
comparison of work.
``--arch TSTPlus``: the same on tsai's Transformer (`tsai_ssl.transformer`; max_seq_len 512, so 2048 steps are 512
patches of 4); compare its 'supervised' row with ResNetPlus's for the cost of attention.
Part 'mvp': one masked-value pretraining epoch of tsai_ssl's MaskedValuePretrain vs tsai's MVP callback on the
same fixed-length data, backbone and batch size (each with its own data pipeline: tsai's get_ts_dls for MVP).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from functools import partial

import numpy as np
import torch

warnings.filterwarnings('ignore')


ARCH = 'ResNetPlus'  # --arch


def _learner(dls, cbs=None):
    from tsai.learner import ts_learner
    if ARCH == 'TSTPlus':  # tsai's defaults (max_seq_len 512: patches beyond), a pooling head, any length up to seq_len
        from tsai.models.TSTPlus import TSTPlus

        from tsai_ssl import IgnorePadding
        return ts_learner(dls, TSTPlus, seq_len=dls.len, flatten=False, cbs=list(cbs or []) + [IgnorePadding()])
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


def step_times(L: int, bs: int, reps: int, only=None):
    from tsai_ssl import (
        BYOLPretrain,
        ContrastivePretrain,
        MaskedValuePretrain,
        MemorySaver,
        MoCoPretrain,
        NextStepPretrain,
        TS2VecPretrain,
        VAEPretrain,
        get_ssl_dls,
    )
    rng = np.random.default_rng(0)
    X = rng.integers(0, 41, (2 * bs, 1, L)).astype(np.uint8)
    from tsai_ssl.augment import Jitter, RandomCrop, Scaling, TimeMask
    full_views = [RandomCrop(0.5, 1.0, min_len=8), TimeMask(0.1, 5.), Scaling(0.1), Jitter(0.03)]  # the old default
    tasks = {'supervised': None, 'masked': MaskedValuePretrain, 'next-step': NextStepPretrain,
             'next-step pad': partial(NextStepPretrain, causal='pad'), 'contrastive': ContrastivePretrain,
             'contrastive 50-100% crops': partial(ContrastivePretrain, augs=full_views), 'ts2vec': TS2VecPretrain,
             'moco': MoCoPretrain, 'byol': BYOLPretrain, 'vae': VAEPretrain,
             'supervised 2x': None, 'supervised+saver': None, 'supervised+flat saver': None,
             'masked+saver': MaskedValuePretrain}
    only = only or ['masked', 'next-step', 'contrastive', 'ts2vec', 'moco', 'byol', 'vae']  # the other rows on request
    tasks = {k: v for k, v in tasks.items() if k == 'supervised' or k in only}
    learners = {}
    for name, task in tasks.items():
        b = 2 * bs if name == 'supervised 2x' else bs
        dls = get_ssl_dls(X[:b], rng.integers(0, 2, b) if task is None else None, bs=b)
        cbs = ([task()] if task else []) + ([MemorySaver(nested='flat' not in name)] if 'saver' in name else [])
        learn = _learner(dls, cbs=cbs)
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
        extra = ''
        if name == 'contrastive' and 'supervised 2x' in times:
            extra = f'  ({t / statistics.median(times["supervised 2x"][1:]):.2f}x a supervised step on 2x the batch)'
        print(f'L={L:6d} bs={bs}: {name:>13} step {t * 1000:8.1f} ms  ratio {t / base:5.2f}x{extra}', flush=True)
    for learn, _ in learners.values(): learn('after_fit')


def mvp_epoch(n: int, L: int, bs: int, reps: int):
    "One pretraining epoch: tsai_ssl's MaskedValuePretrain vs tsai's MVP, same data, backbone, batch size."
    from fastai.torch_core import set_seed
    from tsai.callback.MVP import MVP
    from tsai.data.core import get_ts_dls
    from tsai.data.preprocessing import TSStandardize

    from tsai_ssl import MaskedValuePretrain, get_ssl_dls
    rng = np.random.default_rng(0)
    X = rng.integers(0, 41, (n, 1, L)).astype(np.float32)
    splits = (list(range(n - bs)), list(range(n - bs, n)))
    set_seed(0)
    ours = _learner(get_ssl_dls(X, splits=splits, bs=bs, batch_tfms=[TSStandardize()]), cbs=MaskedValuePretrain())
    theirs = _learner(get_ts_dls(X, splits=splits, bs=bs, batch_tfms=[TSStandardize()]),
                      cbs=MVP(target_dir='/tmp', fname='mvp_speed', save_best=False))
    times = {'tsai_ssl MaskedValuePretrain': [], "tsai MVP": []}
    for _ in range(reps):
        for name, learn in zip(times, (ours, theirs)):
            t0 = time.perf_counter()
            with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        print(f'{n} series x {L} steps, bs={bs}: {name:>29} epoch {min(t):7.2f} s (best of {reps})', flush=True)
    print(f'MVP / MaskedValuePretrain epoch time: {min(times["tsai MVP"]) / min(times["tsai_ssl MaskedValuePretrain"]):.2f}x')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--part', choices=['bucketing', 'steps', 'mvp', 'all'], default='all')
    p.add_argument('--tasks', nargs='+', choices=['masked', 'next-step', 'next-step pad', 'contrastive',
                                                  'contrastive 50-100% crops', 'ts2vec', 'moco', 'byol', 'vae', 'supervised 2x',
                                                  'supervised+saver',
                                                  'supervised+flat saver', 'masked+saver'],
                   help='steps: only these (with the supervised reference)')
    p.add_argument('--mvp-len', type=int, default=4096, help='mvp: series length')
    p.add_argument('--n', type=int, default=96, help='series in the bucketing epoch')
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--lengths', type=int, nargs='+', default=[2048, 30720])
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--arch', choices=['ResNetPlus', 'TSTPlus'], default='ResNetPlus',
                   help="the classifier (TSTPlus: tsai's defaults, seq_len = the length, a pooling head)")
    a = p.parse_args(argv)
    global ARCH
    ARCH = a.arch
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    if a.part in ('bucketing', 'all'): bucketing(a.n, a.bs)
    if a.part in ('steps', 'all'):
        for L in a.lengths: step_times(L, a.bs, a.reps, a.tasks)
    if a.part in ('mvp', 'all'): mvp_epoch(a.n, a.mvp_len, a.bs, a.reps)


if __name__ == '__main__':
    main()
