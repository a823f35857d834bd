"""One pretraining on a large unlabeled corpus, several labeled tasks (run by hand; resumable).

    python bench/corpus_bench.py                       # 10^5 series, two tasks, seeds 0 1
    python bench/corpus_bench.py --report              # the table from the cached cells

The corpus: `--corpus` unlabeled series of the demo's kind (`tsai_ssl.datasets.make_demo_data`: counts 0..40,
256..1024 steps, a shared vocabulary of 8 short patterns), written series by series into a memory-mapped
`RaggedStore` (`StoreWriter`, uint8) and read back with `open_store_series`, as `tsai-ssl store build` and
`--unlabeled STORE` do. The labeled tasks, 200 training and 400 test series each, are not drawn from the corpus:
*A* is the demo's 4-class task (which two of the 8 patterns a series uses most), *B* a 2-class task over only the
first 4 patterns, on another seed.

Per task and seed, three ways to reach a classifier, all with the same fine-tuning budget: from scratch; from
one pretraining on the corpus (shared by both tasks); from a pretraining of the same budget on the task's own 200
series. With a step budget shorter than an epoch of the corpus, `pretrain` draws the series it needs at random, so
the corpus pretraining costs what the own-series one costs: the difference is how many distinct series it sees.
Cells are cached in bench/results/corpus.jsonl, keyed by task, method, fraction, seed, corpus size and pretraining
budget (delete it to start over after changing anything else); weights in runs/corpus_weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / 'bench' / 'results' / 'corpus.jsonl'
WORK = ROOT / 'runs' / 'corpus_weights'
TASKS = {'A': dict(n_classes=4, seed=11), 'B': dict(n_classes=2, seed=12)}


def build_corpus(n: int, path: Path, chunk: int = 10_000) -> dict:
    "Write n demo-kind unlabeled series into the store at `path` (skipped when it exists); its size and time."
    from tsai_ssl.datasets import make_demo_data
    from tsai_ssl.store import StoreWriter
    if Path(f'{path}.offsets.npy').exists():
        return dict(n=n, seconds=None, note='reused')
    t0 = time.time()
    with StoreWriter(path, dtype=np.uint8, n_values=41) as w:
        for k in range(0, n, chunk):  # chunks of a fixed size: memory does not grow with n
            m = min(chunk, n - k)
            w.extend(make_demo_data(n_train=2, n_unlabeled=m, n_test=2, seed=1000 + k // chunk).X_unlabeled)
    return dict(n=n, seconds=round(time.time() - t0, 1))


def key(r: dict) -> tuple:
    "A cell: scratch depends on neither the corpus nor the pretraining budget, so its cells serve every one."
    if r['method'] == 'scratch': return r['task'], r['method'], r['fraction'], r['seed'], None, None
    return r['task'], r['method'], r['fraction'], r['seed'], r.get('pretrain_steps', 600), r['corpus']


def cached() -> list[dict]:
    return [json.loads(x) for x in CACHE.read_text().splitlines() if x.strip()] if CACHE.exists() else []


def run(a) -> None:
    import torch

    from tsai_ssl.datasets import make_demo_data
    from tsai_ssl.experiment import RunConfig, finetune, label_subset, pretrain
    from tsai_ssl.store import open_store_series
    torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    store = WORK / f'corpus{a.corpus}'
    info = build_corpus(a.corpus, store)
    print(f'corpus of {a.corpus} series: {info}', file=sys.stderr)
    corpus = open_store_series(store)
    cfg = RunConfig(arch_config={'nf': a.nf}, pretrain_steps=a.pretrain_steps, finetune_steps=a.steps, bs=a.bs,
                    max_len=a.max_len, lr=1e-3, device='cpu', n_values=41)
    done = {key(r) for r in cached()}

    def weights(tag: str, X, seed: int) -> tuple[Path, float, int]:
        w = WORK / f'{a.pretext}_{tag}_seed{seed}_pt{a.pretrain_steps}.pth'
        side = w.with_name(w.name + '.info.json')
        if not side.exists():
            t0 = time.time()
            _, inf = pretrain(X, a.pretext, cfg.replace(seed=seed), path=w, return_info=True)
            side.write_text(json.dumps(dict(seconds=round(time.time() - t0, 1), n_train=inf['n_train'])))
        s = json.loads(side.read_text())
        return w, s['seconds'], s['n_train']

    for seed in a.seeds:
        for name, spec in TASKS.items():
            d = make_demo_data(n_train=200, n_unlabeled=0, n_test=400, n_classes=spec['n_classes'], seed=spec['seed'])
            for frac in a.fractions:
                idx = label_subset(d.y_train, frac, seed)
                for method in ('scratch', 'corpus', 'own'):
                    if key(dict(task=name, method=method, fraction=frac, seed=seed,
                                pretrain_steps=a.pretrain_steps, corpus=a.corpus)) in done: continue
                    kw, pre_s, n_pre = {}, 0.0, 0
                    if method == 'corpus': kw['weights'], pre_s, n_pre = weights(f'corpus{a.corpus}', corpus, seed)
                    if method == 'own': kw['weights'], pre_s, n_pre = weights(f'own{name}', d.X_train, seed)
                    t0 = time.time()
                    acc = finetune([d.X_train[i] for i in idx], d.y_train[idx], d.X_test, d.y_test,
                                   cfg.replace(seed=seed), **kw)
                    row = dict(task=name, method=method, fraction=frac, seed=seed, n_labeled=len(idx), accuracy=acc,
                               finetune_seconds=round(time.time() - t0, 1), pretrain_seconds=pre_s,
                               pretrain_series=n_pre, corpus=a.corpus, pretext=a.pretext,
                               pretrain_steps=a.pretrain_steps)
                    with open(CACHE, 'a') as fh: fh.write(json.dumps(row) + '\n')
                    print(json.dumps(row), flush=True)


def report(pretrain_steps: int = 600, corpus: int = 100_000) -> str:
    "The table for one corpus and pretraining budget: mean ± std over seeds, paired differences [95% CI] in points."
    from tsai_ssl.report import paired_ci
    rows = [r for r in cached() if key(r)[-2:] in ((None, None), (pretrain_steps, corpus))]

    def diff(d: np.ndarray) -> str:
        ci = paired_ci(d)
        return f'{d.mean():+.1f}' + (f' [{ci[0]:+.1f}, {ci[1]:+.1f}]' if ci else '')

    out = [f'{pretrain_steps} pretraining steps. Accuracy %, mean ± std over seeds; in brackets the paired '
           'difference to scratch [95% CI] in points.', '',
           '| task | labels (seeds) | from scratch | pretrained on the corpus | pretrained on its own 200 series '
           '| corpus − own |', '|---|---|---|---|---|---|']
    for name in TASKS:
        for frac in sorted({r['fraction'] for r in rows if r['task'] == name}):
            cell = {m: {r['seed']: r for r in rows if (r['task'], r['method'], r['fraction']) == (name, m, frac)}
                    for m in ('scratch', 'corpus', 'own')}
            seeds = sorted(set.intersection(*(set(c) for c in cell.values())))
            if not seeds: continue
            acc = {m: np.array([cell[m][s]['accuracy'] for s in seeds]) * 100 for m in cell}
            sd = {m: f' ± {acc[m].std(ddof=1):.1f}' if len(seeds) > 1 else '' for m in acc}
            txt = [f'{acc["scratch"].mean():.1f}{sd["scratch"]}']
            txt += [f'{acc[m].mean():.1f}{sd[m]} ({diff(acc[m] - acc["scratch"])})' for m in ('corpus', 'own')]
            txt.append(diff(acc['corpus'] - acc['own']))
            n_lab = cell['scratch'][seeds[0]]['n_labeled']
            out.append(f'| {name} | {n_lab} ({len(seeds)}) | ' + ' | '.join(txt) + ' |')
    times = [r for r in rows if r['method'] != 'scratch']
    if times: out.append('')
    for m in ('corpus', 'own'):
        t = [r['pretrain_seconds'] for r in times if r['method'] == m]
        n = [r['pretrain_series'] for r in times if r['method'] == m]
        if t: out.append(f'{m}: pretraining {np.mean(t):.0f} s on {int(np.mean(n))} drawn training series')
    ft = [r['finetune_seconds'] for r in rows]
    if ft: out.append(f'fine-tuning: {np.mean(ft):.0f} s per run')
    return '\n'.join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--corpus', type=int, default=100_000, help='unlabeled series in the store')
    p.add_argument('--pretext', default='contrastive')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--fractions', type=float, nargs='+', default=[0.1, 1.0])
    p.add_argument('--nf', type=int, default=32)
    p.add_argument('--steps', type=int, default=400, help='fine-tuning (and scratch) optimizer steps')
    p.add_argument('--pretrain-steps', type=int, default=600)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--max-len', type=int, default=512)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--report', action='store_true')
    a = p.parse_args(argv)
    if a.report: print(report(a.pretrain_steps, a.corpus))
    else: run(a)


if __name__ == '__main__':
    main()
