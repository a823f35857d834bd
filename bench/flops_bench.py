"""Achieved model FLOP/s of a training step against this machine's float32 matmul peak, measured in one run.

    python bench/flops_bench.py                      # ResNetPlus, L=8192 and 30720, bs=8
    python bench/flops_bench.py --L 8192 --bs 16 --arch InceptionTimePlus

FLOPs of one training step (forward + backward) are counted by torch's own `FlopCounterMode` (convolutions and
matmuls: the work a model FLOP/s figure counts; BatchNorm, ReLU and the optimizer are memory-bound extras not
counted). The peak is the best of a few large float32 matmuls (4096 x 4096) with the same threads. Both
are timed in the same process, so the ratio is what to read.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

warnings.filterwarnings('ignore')


def matmul_peak(n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float('inf')
    for _ in range(reps):
        t0 = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(model, x, y) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad()
    return fc.get_total_flops()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='ResNetPlus', choices=['ResNetPlus', 'InceptionTimePlus'])
    p.add_argument('--L', type=int, nargs='+', default=[8192, 30720])
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--reps', type=int, default=3)
    a = p.parse_args(argv)
    import tsai.models.InceptionTimePlus as itp
    import tsai.models.ResNetPlus as rnp
    arch = {'ResNetPlus': rnp.ResNetPlus, 'InceptionTimePlus': itp.InceptionTimePlus}[a.arch]
    torch.manual_seed(0)
    model = arch(1, 2).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads', flush=True)
    peak = matmul_peak()
    print(f'float32 matmul peak: {peak / 1e9:.1f} GFLOP/s', flush=True)
    for L in a.L:
        x, y = torch.randn(a.bs, 1, L), torch.randint(0, 2, (a.bs,))
        flops = step_flops(model, x, y)
        times = []
        for _ in range(a.reps + 1):  # first: warm-up
            t0 = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        t = sorted(times[1:])[len(times[1:]) // 2]
        peak_again = matmul_peak()  # the machine may be busier now: take the better of both
        pk = max(peak, peak_again)
        print(f'{a.arch} L={L} bs={a.bs}: {flops / 1e9:.1f} GFLOP per step, {t:.2f} s -> {flops / t / 1e9:.1f} GFLOP/s '
              f'= {flops / t / pk:.0%} of the matmul peak ({pk / 1e9:.1f} GFLOP/s)', flush=True)


if __name__ == '__main__':
    main()
