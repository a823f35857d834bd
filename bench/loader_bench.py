"""Does loading from a memory-mapped store keep up with training? Batches per second of `get_ssl_dls` over a
`RaggedStore` (uint8 counts) against the ResNetPlus training-step rate, with a cold and a warm page cache (run by hand).

    python bench/loader_bench.py                          # 2048 and 30720 steps, bs 8, num_workers 0 and 2
    python bench/loader_bench.py --lengths 2048 --n 4000 --workers 0 1 2

For each length: a store of `--n` series (fewer at 30720 so the file stays near 100 MB) is written with
`RaggedStore.create`, its pages are dropped from the page cache (``posix_fadvise(DONTNEED)``: the first epoch of a
corpus that was never read), and one epoch of the training loader is timed, then a second one (warm cache). The
step rate is one ResNetPlus (default width) training step on a batch of the same shape, median of 3. Goal: the
loader at least 5x faster than the step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings('ignore')


def _drop_cache(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
        try: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally: os.close(fd)
        return True
    except (AttributeError, OSError):
        return False


def _epoch(dl) -> tuple[float, int]:
    t0, n = time.perf_counter(), 0
    for _ in dl: n += 1
    return time.perf_counter() - t0, n


def _step_time(bs: int, L: int) -> float:
    from tsai.models.ResNetPlus import ResNetPlus
    model = ResNetPlus(1, 2)
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(bs, 1, L), torch.randint(0, 2, (bs,))
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--lengths', type=int, nargs='+', default=[2048, 30720])
    p.add_argument('--n', type=int, default=0, help='series per store (0: about 100 MB of uint8)')
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    a = p.parse_args(argv)
    from tsai_ssl.data import RaggedStore, get_ssl_dls
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, bs {a.bs}')
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        for L in a.lengths:
            n = a.n or max(64, 100 * 2 ** 20 // L)
            path = os.path.join(d, f'c{L}')
            with RaggedStore.create(path, dtype=np.uint8, n_values=41) as w:
                for _ in range(n): w.append(rng.integers(0, 41, L, dtype=np.uint8))
            step = _step_time(a.bs, L)
            for nw in a.workers:
                store = RaggedStore.load(path, mmap=True)
                dl = get_ssl_dls(store, bs=a.bs, num_workers=nw, seed=0).train
                cold = _drop_cache(f'{path}.data.npy')
                t_cold, nb = _epoch(dl)
                t_warm, _ = _epoch(dl)
                per_cold, per_warm = t_cold / nb, t_warm / nb
                print(f'L={L:6d}, {n} series, num_workers={nw}: {1 / per_cold:8.1f} batches/s '
                      f'({"cold" if cold else "cache not dropped"}), {1 / per_warm:8.1f} batches/s warm; training step '
                      f'{step * 1000:.0f} ms = {1 / step:.2f} steps/s: the loader is {step / per_cold:.0f}x (cold) / '
                      f'{step / per_warm:.0f}x (warm) faster', flush=True)


if __name__ == '__main__':
    main()
