"""Peak memory (and time) of one training step at long lengths, with and without `MemorySaver` (run by hand).

    python bench/memory_bench.py                                   # ResNetPlus + InceptionTimePlus, L=30720, bs=8
    python bench/memory_bench.py --archs ResNetPlus --tasks supervised masked --L 8192

Every configuration runs in its own fresh Python process (so one cannot inherit another's memory high-water
mark): it builds the Learner and the batch, runs one warm-up step at a short length (allocator, optimizer state),
then one training step (forward, loss, backward, optimizer) of the given task at the given length. On CPU the
figure is the process's peak resident memory during that step minus its resident memory just before it (with
MALLOC_MMAP_THRESHOLD_ fixed, freed tensors go back to the OS, so this is the step's own peak); on CUDA it is
torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

warnings.filterwarnings('ignore')


def _rss_mb() -> float:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def child(arch: str, task: str, L: int, bs: int, saver: bool, device: str, nested: bool = True) -> dict:
    import numpy as np
    import torch
    import tsai.models.InceptionTimePlus as itp
    import tsai.models.ResNetPlus as rnp
    from fastai.callback.progress import ProgressCallback
    from tsai.learner import ts_learner

    from tsai_ssl import ContrastivePretrain, MaskedValuePretrain, MemorySaver, NextStepPretrain, get_ssl_dls
    model = {'ResNetPlus': rnp.ResNetPlus, 'InceptionTimePlus': itp.InceptionTimePlus}[arch]
    tasks = {'supervised': None, 'masked': MaskedValuePretrain, 'next': NextStepPretrain, 'contrastive': ContrastivePretrain}
    from fastai.torch_core import set_seed
    set_seed(0, reproducible=True)  # same weights, masks and views in both processes: the losses must match
    rng = np.random.default_rng(0)
    X = rng.integers(0, 41, (bs, 1, L)).astype(np.uint8)
    y = rng.integers(0, 2, bs) if tasks[task] is None else None
    dls = get_ssl_dls(X, y, bs=bs, device=torch.device(device), seed=0)
    cbs = ([tasks[task]()] if tasks[task] else []) + ([MemorySaver(nested=nested)] if saver else [])
    learn = ts_learner(dls, model, cbs=cbs)
    learn.remove_cb(ProgressCallback)
    learn.create_opt()
    learn.n_epoch, learn.epoch, learn.n_iter, learn.train_iter, learn.pct_train = 1, 0, 10 ** 6, 0, 0.
    learn('before_fit')
    learn.dl, learn.training = dls.train, True
    b = dls.train.one_batch()
    learn.one_batch(0, tuple(t[..., :256] for t in b[:1]) + tuple(b[1:]))  # warm-up: optimizer state, allocator
    dls.train.one_batch()  # the loader's pad mask / raw input for the full-length batch
    if device == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    before = _rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    learn.one_batch(0, b)
    if device == 'cuda': torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if device == 'cuda': peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else: peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    learn('after_fit')
    return dict(arch=arch, task=task, L=L, bs=bs, saver=saver, peak_mb=round(peak, 1), step_s=round(dt, 2),
                loss=float(learn.loss), rss_before_mb=round(before, 1), maxrss_before_mb=round(peak_before, 1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['ResNetPlus', 'InceptionTimePlus'])
    p.add_argument('--tasks', nargs='+', default=['supervised', 'masked'], choices=['supervised', 'masked', 'next', 'contrastive'])
    p.add_argument('--L', type=int, default=30720)
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--device', default='cuda' if _has_cuda() else 'cpu')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--saver', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--flat', action='store_true', help='also measure MemorySaver(nested=False)')
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.archs[0], a.tasks[0], a.L, a.bs, a.saver, a.device, not a.flat))); return
    print(f'L={a.L} bs={a.bs} device={a.device}; peak = the training step\'s own peak memory', flush=True)
    for arch in a.archs:
        for task in a.tasks:
            res = {}
            for saver in (['off', 'nested', 'flat'] if a.flat else ['off', 'nested']):
                cmd = [sys.executable, __file__, '--child', '--archs', arch, '--tasks', task, '--L', str(a.L),
                       '--bs', str(a.bs), '--device', a.device] + ([] if saver == 'off' else ['--saver'])
                cmd += ['--flat'] if saver == 'flat' else []
                # glibc would keep freed blocks up to 32 MB in its heap (RSS never shrinks); a fixed mmap threshold
                # gives every large tensor back to the OS when freed, so the RSS high-water mark is torch's real peak
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode: sys.exit(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
                res[saver] = json.loads(out.stdout.strip().splitlines()[-1])
            r0 = res['off']
            for name, r1 in res.items():
                if name == 'off': continue
                label = 'MemorySaver()' if name == 'nested' else 'MemorySaver(nested=False)'
                print(f'{arch:>18} {task:>11}: peak {r0["peak_mb"]:8.0f} MB -> {r1["peak_mb"]:7.0f} MB with {label} '
                      f'({r0["peak_mb"] / r1["peak_mb"]:.2f}x less); step {r0["step_s"]:6.2f} s -> {r1["step_s"]:6.2f} s '
                      f'({r1["step_s"] / r0["step_s"]:.2f}x); loss {r0["loss"]:.6f} / {r1["loss"]:.6f}', flush=True)


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception: return False


if __name__ == '__main__':
    main()
