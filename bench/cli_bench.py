"""How fast the tsai-ssl command answers when it trains nothing, next to `python -c "import tsai.basics"`.

    python bench/cli_bench.py            # 5 repetitions of each command, medians in seconds and as a ratio

Each command runs in a fresh interpreter (as a user runs it). The target (issue 14): --help, --version and input
errors answer in at most 0.3x the time of importing tsai.basics, measured side by side on the same machine.
Run by hand; not a test (timings depend on the machine and its load).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _files(d: Path) -> dict[str, Path]:
    "Small input files with one problem each."
    rng = np.random.default_rng(0)
    keys = d / 'keys.npz'; np.savez(keys, series=np.zeros((8, 1, 32)), labels=np.zeros(8))
    X = rng.poisson(3, (40, 1, 64)).astype(np.float32); X[17, 0, 5] = np.nan
    nan = d / 'nan.npz'; np.savez(nan, X=X, y=np.arange(40) % 4)
    ok = d / 'ok.npz'; np.savez(ok, X=np.nan_to_num(X), y=np.arange(40) % 4)
    return dict(keys=keys, nan=nan, ok=ok, missing=d / 'missing.npz')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=5)
    a = p.parse_args(argv)
    py, cli = sys.executable, [sys.executable, '-m', 'tsai_ssl.cli']
    with tempfile.TemporaryDirectory() as tmp:
        f = _files(Path(tmp))
        cases = {
            'python -c "import tsai.basics"': [py, '-c', 'import tsai.basics'],
            'python -c "import tsai_ssl"': [py, '-c', 'import tsai_ssl'],
            'tsai-ssl --help': cli + ['--help'],
            'tsai-ssl compare --help': cli + ['compare', '--help'],
            'tsai-ssl --version': cli + ['--version'],
            'compare: missing file': cli + ['compare', str(f['missing'])],
            'compare: bad keys': cli + ['compare', str(f['keys'])],
            'compare: bad fractions': cli + ['compare', str(f['ok']), '--fractions', '5%'],
            'compare: NaN inside a series': cli + ['compare', str(f['nan'])],
        }
        times = {k: [] for k in cases}
        for _ in range(a.reps):  # interleaved, so a change in the machine's load hits every command alike
            for k, cmd in cases.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, capture_output=True)
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times['python -c "import tsai.basics"'])
    print(f'{"command":40s} {"median s":>9s} {"x tsai.basics":>14s}   ({a.reps} runs each)')
    for k, v in times.items():
        m = statistics.median(v)
        print(f'{k:40s} {m:9.2f} {m / base:14.3f}')


if __name__ == '__main__':
    main()
