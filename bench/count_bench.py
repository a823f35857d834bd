"""Issue 20: do masked-value and next-step pretraining hurt on integer count data? Scratch vs each task on the
synthetic counts (0..40), with raw integers into the model or standardized, at several label fractions and seeds.

    python bench/count_bench.py                          # 3 seeds, 5% / 20% / 100% labels, raw and standardized
    python bench/count_bench.py --seeds 0 --modes raw    # a quick look

Setup: `make_synthetic_split` (4 classes, lengths --min-len..--max-len), --n-labeled labeled training series and
--n-unlabeled more without labels; pretraining sees all of them (labels ignored), fine-tuning sees the labeled
subset of a fraction (the same subset for every method of a seed), test on --n-test series at full length.
ResNetPlus(nf=32), training crops of --crop steps, Adam one-cycle. Fine-tuning runs at least --min-steps optimizer
steps. Every finished cell is cached in --out (JSON lines), so an interrupted run continues where it stopped.
The table: mean ± std over seeds of test accuracy, and the paired per-seed difference to scratch.
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--fractions', type=float, nargs='+', default=[0.05, 0.2, 1.0])
    p.add_argument('--modes', nargs='+', default=['raw', 'standardized'], choices=['raw', 'standardized'])
    p.add_argument('--tasks', nargs='+', default=['masked', 'next'])
    p.add_argument('--n-labeled', type=int, default=200)
    p.add_argument('--n-unlabeled', type=int, default=400)
    p.add_argument('--n-test', type=int, default=200)
    p.add_argument('--min-len', type=int, default=512)
    p.add_argument('--max-len', type=int, default=2048)
    p.add_argument('--crop', type=int, default=512)
    p.add_argument('--pretrain-epochs', type=int, default=10)
    p.add_argument('--finetune-epochs', type=int, default=20)
    p.add_argument('--min-steps', type=int, default=100)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='runs/count_bench.jsonl')
    a = p.parse_args()
    warnings.simplefilter('ignore')
    import torch
    torch.set_num_threads(a.threads)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line); done[_key(r)] = r
    for mode in a.modes:
        for seed in a.seeds:
            data = _data(a, seed)
            for frac in a.fractions:
                cell = dict(mode=mode, seed=seed, fraction=frac, method='scratch')
                if _key(cell) not in done: done[_key(cell)] = _write(out, cell, _finetune(a, data, mode, seed, frac, None))
            for task in a.tasks:
                w = None
                for frac in a.fractions:
                    cell = dict(mode=mode, seed=seed, fraction=frac, method=task)
                    if _key(cell) in done: continue
                    if w is None: w = _pretrain(a, data, mode, seed, task)
                    done[_key(cell)] = _write(out, cell, _finetune(a, data, mode, seed, frac, w))
    _table(a, done)


def _key(r): return (r['mode'], r['seed'], r['fraction'], r['method'])


def _write(out, cell, res):
    row = dict(cell, **res)
    with open(out, 'a') as f: f.write(json.dumps(row) + '\n')
    print(json.dumps(row), flush=True)
    return row


def _data(a, seed):
    from tsai_ssl.datasets import make_synthetic_split
    X, y, Xt, yt = make_synthetic_split(a.n_labeled + a.n_unlabeled, a.n_test, min_len=a.min_len, max_len=a.max_len,
                                        seed=seed)
    return dict(X_lab=X[:a.n_labeled], y_lab=y[:a.n_labeled], X_pool=X, X_test=Xt, y_test=yt)


def _tfms(mode):
    from tsai.data.preprocessing import TSStandardize
    return [TSStandardize()] if mode == 'standardized' else None


def _learner(dls, seed, cbs=None, metrics=None):
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus
    return ts_learner(dls, ResNetPlus, nf=32, seed=seed, cbs=cbs, metrics=metrics)


def _pretrain(a, data, mode, seed, task):
    from tsai_ssl import get_ssl_dls
    from tsai_ssl.tasks import make_task
    X = data['X_pool']
    n_val = len(X) // 10
    dls = get_ssl_dls(X, splits=(range(n_val, len(X)), range(n_val)), bs=a.bs, max_len=a.crop,
                      batch_tfms=_tfms(mode), n_values=41, seed=seed, drop_last=True)
    path = (Path(a.out).parent / 'count_bench_weights' / f'{mode}_{task}_{seed}.pth').absolute()
    learn = _learner(dls, seed, cbs=make_task(task, save_as=str(path), seed=seed))
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.pretrain_epochs, a.lr)
    print(f'pretrained {task} ({mode}, seed {seed}) in {time.time() - t0:.0f} s', flush=True)
    return path


def _finetune(a, data, mode, seed, frac, weights):
    from fastai.metrics import accuracy

    from tsai_ssl import get_ssl_dls, load_pretrained
    from tsai_ssl.labels import label_subset
    idx = label_subset(data['y_lab'], frac, seed)
    X = [data['X_lab'][i] for i in idx]
    y = data['y_lab'][idx]
    dls = get_ssl_dls(X, y, splits=(range(len(X)), []), bs=min(a.bs, len(X)), max_len=a.crop,
                      batch_tfms=_tfms(mode), seed=seed, drop_last=len(X) > a.bs)
    learn = _learner(dls, seed, metrics=accuracy)
    if weights is not None: load_pretrained(learn, weights)
    per_epoch = max(1, len(X) // min(a.bs, len(X)))
    epochs = max(a.finetune_epochs, math.ceil(a.min_steps / per_epoch))
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, a.lr)
    dl = learn.dls.test_dl(data['X_test'], y=data['y_test'], with_labels=True, bs=32)
    with learn.no_bar(): preds, targs = learn.get_preds(dl=dl)
    return dict(n_labeled=int(len(idx)), epochs=epochs, accuracy=float((preds.argmax(-1) == targs).float().mean()),
                seconds=round(time.time() - t0, 1))


def _table(a, done):
    print('\ntest accuracy (%), mean ± std over seeds; in brackets the paired difference to scratch (mean ± std)')
    for mode in a.modes:
        print(f'\n{mode}: ' + '  '.join(f'{100 * f:g}% labels'.rjust(26) for f in a.fractions))
        for m in ['scratch'] + a.tasks:
            cells = []
            for f in a.fractions:
                acc = {s: done[(mode, s, f, m)]['accuracy'] for s in a.seeds if (mode, s, f, m) in done}
                base = {s: done[(mode, s, f, 'scratch')]['accuracy'] for s in a.seeds if (mode, s, f, 'scratch') in done}
                if not acc: cells.append('-'.rjust(26)); continue
                v = 100 * np.array(list(acc.values()))
                txt = f'{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}'
                if m != 'scratch':
                    d = 100 * np.array([acc[s] - base[s] for s in acc if s in base])
                    if len(d): txt += f' [{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f}]'
                cells.append(f'{txt} n={len(v)}'.rjust(26))
            print(f'{m:10}' + '  '.join(cells))


if __name__ == '__main__':
    main()
