"""Writing a RaggedStore series by series: peak memory and speed against the corpus size (run by hand).

    python bench/store_bench.py                      # 10k and 100k series, log-uniform 512..4096 steps, uint8
    python bench/store_bench.py --sizes 1000 1000000 --min-len 512 --max-len 30720

Each size runs in a fresh process, which generates the series one at a time (counts 0..40) and appends them with
`StoreWriter(..., dtype=np.uint8, n_values=41)` (what `RaggedStore.create` returns); the peak resident memory of
that process (``ru_maxrss``) is what to read: it should not grow with the number of series. The store is then
opened memory-mapped, checked against the offsets, and deleted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

_CHILD = '''
import json, resource, sys, time, numpy as np
from tsai_ssl.store import StoreWriter  # numpy only: the process holds what writing costs, not torch
n, lo, hi, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
steps = 0
with StoreWriter(path, dtype=np.uint8, n_values=41) as w:
    for _ in range(n):
        L = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        w.append(rng.integers(0, 41, L, dtype=np.uint8))
        steps += L
t = time.time() - t0
data, off = np.load(path + '.data.npy', mmap_mode='r'), np.load(path + '.offsets.npy')
ok = len(off) == n + 1 and off[-1] == steps == data.shape[1]
print(json.dumps(dict(n=n, steps=steps, seconds=round(t, 1), peak_rss_mb=round(resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, 1), rss_after_imports_mb=round(base / 1024, 1), ok=ok)))
'''


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000])
    p.add_argument('--min-len', type=int, default=512)
    p.add_argument('--max-len', type=int, default=4096)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        for n in a.sizes:
            path = os.path.join(d, f'corpus{n}')
            out = subprocess.run([sys.executable, '-c', _CHILD, str(n), str(a.min_len), str(a.max_len), path],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            size = os.path.getsize(f'{path}.data.npy') / 2 ** 20
            print(f"{r['n']:>8} series, {r['steps'] / 1e6:8.1f} M steps: {r['seconds']:6.1f} s "
                  f"({r['steps'] / r['seconds'] / 1e6:.0f} M steps/s), store {size:8.1f} MiB, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB (after imports {r['rss_after_imports_mb']:.0f} MB), read back: {r['ok']}",
                  flush=True)
            for f in os.listdir(d): os.remove(os.path.join(d, f))
    print(f'(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; {time.strftime("%Y-%m-%d")})')


if __name__ == '__main__':
    main()
