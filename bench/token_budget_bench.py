"""Token-budget batches against fixed batches: padding, batch count, and the cost of a training step at the shortest
and the longest bucket (run by hand).

    python bench/token_budget_bench.py                       # 80 series, log-uniform 512..30720 steps
    python bench/token_budget_bench.py --n 80 --bs 16 --max-tokens 32768

For each loader (fixed ``bs``; ``max_tokens`` with ``bs`` as a cap) it plans one training epoch, reports the padded
share and the number of batches, and runs one ResNetPlus training step (forward, backward, Adam) on its shortest and
on its longest batch, each in a fresh process, reporting the step time and the process's peak resident memory
above what it held before the step. With a token budget both buckets should cost about the same; with a fixed
batch the longest costs about ``longest / shortest`` times more.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

_STEP = '''
import json, resource, sys, time, warnings
warnings.filterwarnings('ignore')
import torch
from tsai.models.ResNetPlus import ResNetPlus
torch.set_num_threads(int(sys.argv[4]))
n, L, nf = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = ResNetPlus(1, 2, nf=nf)
opt = torch.optim.Adam(model.parameters())
x, y = torch.randn(n, 1, L), torch.randint(0, 2, (n,))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
loss = torch.nn.functional.cross_entropy(model(x), y)
loss.backward(); opt.step()
t = time.time() - t0
print(json.dumps(dict(seconds=t, peak_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)))
'''


def _series(n: int, lo: int, hi: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 41, (1, int(np.exp(rng.uniform(np.log(lo), np.log(hi)))))).astype(np.uint8) for _ in range(n)]


def _step(n: int, L: int, nf: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, '-c', _STEP, str(n), str(L), str(nf), str(threads)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=80)
    p.add_argument('--min-len', type=int, default=512)
    p.add_argument('--max-len', type=int, default=30720)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--max-tokens', type=int, default=32768)
    p.add_argument('--nf', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    a = p.parse_args(argv)
    from tsai_ssl.data import get_ssl_dls
    X = _series(a.n, a.min_len, a.max_len)
    print(f'{a.n} series, log-uniform {a.min_len}..{a.max_len} steps; ResNetPlus nf={a.nf}, {a.threads} threads')
    for name, kw in ((f'fixed bs={a.bs}', dict(bs=a.bs)),
                     (f'max_tokens={a.max_tokens}, bs<={4 * a.bs}', dict(bs=4 * a.bs, max_tokens=a.max_tokens))):
        dl = get_ssl_dls(X, seed=0, **kw).train
        pad, sizes = dl.padded_fraction(), dl.batch_sizes()
        shapes = [(len(b[2]), b[1]) for b in ((None, bb[0].shape[-1], dl.batch_idxs) for bb in dl)]
        (n0, L0), (n1, L1) = min(shapes, key=lambda s: s[1]), max(shapes, key=lambda s: s[1])
        s0, s1 = _step(n0, L0, a.nf, a.threads), _step(n1, L1, a.nf, a.threads)
        print(f'{name:>28}: {len(sizes)} batches, padded {pad:.1%}; shortest batch {n0} x {L0} = {n0 * L0} steps: '
              f'{s0["seconds"]:.2f} s, +{s0["peak_mb"]:.0f} MB; longest batch {n1} x {L1} = {n1 * L1} steps: '
              f'{s1["seconds"]:.2f} s, +{s1["peak_mb"]:.0f} MB', flush=True)


if __name__ == '__main__':
    main()
