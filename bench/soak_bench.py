"""Soak: a long pretraining over many small epochs of variable-length series; does memory grow? (run by hand)

    python bench/soak_bench.py                        # 300 epochs, masked-value task, checkpoint every epoch
    python bench/soak_bench.py --epochs 100 --task contrastive

Each epoch is a handful of batches of series of random lengths (a new bucketing order each epoch), with the
task's fixed validation batches, `Checkpoint` writing a resumable checkpoint after every epoch and the task saving
its best backbone. The process's resident memory (RSS) and the epoch time are read after every epoch. What to
read: RSS after the first 10% of epochs (allocator warm-up) vs at the end, the fitted slope over the rest, and
the epoch time at the start vs the end. glibc's mmap threshold is fixed (MALLOC_MMAP_THRESHOLD_) so freed large
tensors go back to the OS and RSS reflects live memory; set when this script re-executes itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

warnings.filterwarnings('ignore')


def _rss_mb() -> float:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--epochs', type=int, default=300)
    p.add_argument('--n', type=int, default=40, help='series (32 train, 8 valid at n=40)')
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--min-len', type=int, default=64)
    p.add_argument('--max-len', type=int, default=2048)
    p.add_argument('--task', default='masked', choices=['masked', 'next', 'contrastive'])
    p.add_argument('--workdir', default='/tmp/tsai_ssl_soak')
    a = p.parse_args(argv)
    if os.environ.get('MALLOC_MMAP_THRESHOLD_') is None:
        os.environ['MALLOC_MMAP_THRESHOLD_'] = '131072'
        os.execv(sys.executable, [sys.executable, __file__] + (argv if argv is not None else sys.argv[1:]))

    import numpy as np
    import torch
    from fastai.callback.core import Callback
    from tsai.data.preprocessing import TSStandardize
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    from tsai_ssl import Checkpoint, ContrastivePretrain, MaskedValuePretrain, NextStepPretrain, get_ssl_dls

    class Probe(Callback):
        order = 99
        def before_fit(self): self.rss, self.times, self._t = [], [], time.perf_counter()
        def after_epoch(self):
            now = time.perf_counter()
            self.times.append(now - self._t); self._t = now
            self.rss.append(_rss_mb())

    rng = np.random.default_rng(0)
    lens = np.exp(rng.uniform(np.log(a.min_len), np.log(a.max_len), a.n)).astype(int)
    X = [rng.integers(0, 41, (1, L)).astype(np.uint8) for L in lens]
    n_val = max(2, a.n // 5)
    dls = get_ssl_dls(X, splits=(range(a.n - n_val), range(a.n - n_val, a.n)), bs=a.bs, batch_tfms=[TSStandardize()],
                      n_values=41, seed=0, path=a.workdir)
    task = {'masked': MaskedValuePretrain, 'next': NextStepPretrain, 'contrastive': ContrastivePretrain}[a.task]
    probe = Probe()
    learn = ts_learner(dls, ResNetPlus, cbs=[task(save_as='soak_bb'), Checkpoint('soak_ck'), probe], seed=0)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; {a.task}, {a.epochs} epochs of '
          f'{len(dls.train)} batches (bs {a.bs}, lengths {lens.min()}..{lens.max()})', flush=True)
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.epochs, 1e-3)
    total = time.perf_counter() - t0
    rss, times = np.array(probe.rss), np.array(probe.times)
    k = max(1, a.epochs // 10)
    slope = np.polyfit(np.arange(k, a.epochs), rss[k:], 1)[0] if a.epochs - k > 2 else float('nan')
    print(f'RSS after epoch {k}: {rss[k - 1]:.0f} MB; at the end: {rss[-1]:.0f} MB; max {rss.max():.0f} MB; '
          f'fitted slope over epochs {k}..{a.epochs}: {slope * 100:+.2f} MB per 100 epochs', flush=True)
    print(f'epoch time: first 10% median {np.median(times[:k]):.2f} s, last 10% median {np.median(times[-k:]):.2f} s; '
          f'total {total:.0f} s', flush=True)
    print(f'train loss first/last epoch: {learn.recorder.values[0][0]:.4f} / {learn.recorder.values[-1][0]:.4f}')


if __name__ == '__main__':
    main()
