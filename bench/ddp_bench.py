"""Pretraining throughput in one process and in two (`learn.distrib_ctx()`, gloo on the CPU), with token-budget
batches, and what it predicts for a million series (run by hand).

    python bench/ddp_bench.py                       # 200 series, log-uniform 512..4096 steps, max_tokens 16384
    python bench/ddp_bench.py --n 400 --max-tokens 32768 --epochs 2

Both runs pretrain ResNetPlus (nf 32) with `MaskedValuePretrain` for the same epochs on the same data: one process
with all the machine's threads, then two processes with half the threads each (what two GPUs or two machines do,
with gloo instead of NCCL). Throughput is real (not padded) steps of series per second over the training epochs
after the first (warm-up). The prediction for 10^6 series of the same length distribution is that throughput
applied to one epoch; on GPUs the per-process rate is what to measure first, then the same arithmetic.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time

import numpy as np
import torch
import torch.multiprocessing as mp


def _series(n, lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 41, (1, int(np.exp(rng.uniform(np.log(lo), np.log(hi)))))).astype(np.uint8) for _ in range(n)]


def _run(rank: int, world: int, port: int, a, out: str) -> None:
    import warnings
    warnings.filterwarnings('ignore')
    if world > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME='lo')
    torch.set_num_threads(max(1, a.threads // world))
    from fastai.callback.core import Callback
    from fastai.distributed import DistributedDL
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    from tsai_ssl import MaskedValuePretrain, get_ssl_dls

    def broadcast_cpu(self, t, src):  # fastai broadcasts a CUDA tensor (NCCL); gloo takes a CPU one
        t = torch.LongTensor(t)
        torch.distributed.broadcast(t, src)
        return t.tolist()
    DistributedDL._broadcast = broadcast_cpu

    class Timer(Callback):
        order = 99
        def before_fit(self): self.epochs = []
        def before_train(self): self.t0, self.steps = time.perf_counter(), 0
        def after_batch(self):
            if self.training:
                pm = self.learn.dl.pad_mask if hasattr(self.learn.dl, 'pad_mask') else getattr(self.learn.dl.dl, 'pad_mask', None)
                x = self.learn.xb[0]
                self.steps += int(pm.sum()) if pm is not None else x.shape[0] * x.shape[-1]
        def after_train(self): self.epochs.append((time.perf_counter() - self.t0, self.steps))

    X = _series(a.n, a.min_len, a.max_len)
    n_val = max(8, len(X) // 10)  # fastai's DistributedDL fails on an empty validation set (ZeroDivisionError)
    dls = get_ssl_dls(X, splits=(range(len(X) - n_val), range(len(X) - n_val, len(X))), bs=64, max_tokens=a.max_tokens, seed=0)
    timer = Timer()
    learn = ts_learner(dls, ResNetPlus, nf=32, cbs=[MaskedValuePretrain(), timer])
    if world > 1:
        with learn.distrib_ctx(sync_bn=False, cpu=True):
            with learn.no_bar(), learn.no_logging(): learn.fit(a.epochs, 1e-3)
    else:
        with learn.no_bar(), learn.no_logging(): learn.fit(a.epochs, 1e-3)
    with open(os.path.join(out, f'{world}_{rank}.json'), 'w') as f: json.dump(timer.epochs, f)
    if world > 1: torch.distributed.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=200)
    p.add_argument('--min-len', type=int, default=512)
    p.add_argument('--max-len', type=int, default=4096)
    p.add_argument('--max-tokens', type=int, default=16384)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--threads', type=int, default=os.cpu_count() or 2)
    a = p.parse_args(argv)
    X = _series(a.n, a.min_len, a.max_len)
    mean_len = float(np.mean([x.shape[-1] for x in X]))
    with tempfile.TemporaryDirectory() as out:
        rates = {}
        for world in (1, 2):
            if world == 1: _run(0, 1, 0, a, out)
            else:
                with socket.socket() as s:
                    s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
                mp.spawn(_run, args=(world, port, a, out), nprocs=world, join=True)
            per_rank = [json.load(open(os.path.join(out, f'{world}_{r}.json'))) for r in range(world)]
            secs = max(sum(t for t, _ in ep[1:]) for ep in per_rank)  # the slowest process sets the pace
            steps = sum(sum(s for _, s in ep[1:]) for ep in per_rank)
            rates[world] = steps / secs
            print(f'{world} process(es) x {max(1, a.threads // world)} thread(s): {rates[world] / 1e3:8.1f} k real steps/s '
                  f'over epochs 2..{a.epochs}', flush=True)
    print(f'speed-up of 2 processes: {rates[2] / rates[1]:.2f}x')
    for world, r in rates.items():
        t = 1e6 * mean_len / r
        print(f'predicted epoch over 10^6 series of mean length {mean_len:.0f}: {t / 3600:.1f} h with {world} process(es)')


if __name__ == '__main__':
    main()
