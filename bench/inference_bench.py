"""Cost of batching-independent inference: `dls.test_dl(X)` (exact-length batches, the default) against padded
batches with and without `IgnorePadding`, on a variable-length test set.

    python bench/inference_bench.py                 # PLAID test split (lengths 100..1344), ResNetPlus
    python bench/inference_bench.py --ucr GunPoint  # equal lengths: exact batches are ordinary batches

For each way it reports the time of `learn.get_preds` over the test set (median of --reps) and the largest change
in a predicted probability between batch size 1 and --bs (0 = independent of batching).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ucr', default='PLAID')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    warnings.simplefilter('ignore')
    import torch
    from fastai.metrics import accuracy
    from tsai.data.preprocessing import TSStandardize
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    from tsai_ssl import IgnorePadding, get_ssl_dls
    from tsai_ssl.datasets import load_ucr
    torch.set_num_threads(a.threads)
    X_tr, y_tr, X_te, y_te, *_ = load_ucr(a.ucr)
    lens = np.array([x.shape[-1] for x in X_te])
    print(f'{a.ucr}: {len(X_te)} test series, lengths {lens.min()}..{lens.max()}, {len(np.unique(lens))} distinct; '
          f'torch threads {a.threads}')
    dls = get_ssl_dls(list(X_tr), np.asarray(y_tr), bs=16, batch_tfms=[TSStandardize()], seed=0)
    learn = ts_learner(dls, ResNetPlus, metrics=accuracy, seed=0)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)  # BatchNorm statistics off their init

    def preds(bs, exact, ignore):
        if ignore: learn.add_cb(IgnorePadding())
        try:
            with learn.no_bar(): return learn.get_preds(dl=learn.dls.test_dl(list(X_te), bs=bs, exact=exact))[0]
        finally:
            if ignore: learn.remove_cb(IgnorePadding)

    rows = []
    for label, exact, ignore in [('exact-length batches (default)', True, False),
                                 ('padded batches + IgnorePadding', False, True),
                                 ('padded batches', False, False)]:
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter(); p_bs = preds(a.bs, exact, ignore); times.append(time.perf_counter() - t0)
        p_1 = preds(1, exact, ignore)
        rows.append((label, statistics.median(times), float((p_bs - p_1).abs().max())))
    base = rows[-1][1]
    print(f"{'inference':34} {'get_preds s':>11} {'vs padded':>9} {'max |p(bs) - p(1)|':>19}")
    for label, t, d in rows: print(f'{label:34} {t:11.2f} {t / base:8.2f}x {d:19.2e}')


if __name__ == '__main__':
    main()
