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
    p.add_argument('--tasks', nargs='*', default=['masked', 'next'])
    p.add_argument('--n-labeled', type=int, default=200)
    p.add_argument('--n-unlabeled', type=int, default=400)
    p.add_argument('--n-test', type=int, default=200)
    p.add_argument('--min-len', type=int, default=512)
    p.add_argument('--max-len', type=int, default=2048)
    p.add_argument('--crop', type=int, default=512, help='training crop (0: full length, bucketed and padded)')
    p.add_argument('--pretrain-epochs', type=int, default=10)
    p.add_argument('--finetune-epochs', type=int, default=20)
    p.add_argument('--min-steps', type=int, default=100)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--n-classes', type=int, default=4)
    p.add_argument('--data', default='motifs', choices=['motifs', 'texture'],
                   help="motifs: `make_synthetic_split` (class = sparse local motifs); texture: `texture_counts` below "
                        "(class = how the count process behaves everywhere: roughness, bursts, period, dispersion)")
    p.add_argument('--task-kwargs', default='{}', help='JSON options of the task, e.g. \'{"ratio": 0.3}\'')
    p.add_argument('--recipe', default='full', choices=['full', 'bn-recal', 'reinit-last', 'lp-ft', 'frozen', 'fine_tune'],
                   help='fine-tuning from pretrained weights: all layers (full); BatchNorm statistics recomputed on the '
                        'labeled series first (bn-recal); the last residual block re-initialised (reinit-last); '
                        'head alone for a third of the steps, then all layers (lp-ft); the head alone (frozen); fastai\'s '
                        'learn.fine_tune (fine_tune). Task "random" runs the recipe from random weights.')
    p.add_argument('--lr-mult', type=float, default=100, help="fine_tune recipe: fastai's lr_mult (backbone lr = lr / lr_mult)")
    p.add_argument('--semi-weight', type=float, default=0., help='> 0: also <task>+semi, fine-tuned from the task\'s '
                   'weights with its loss on all training series kept on (tsai_ssl.SemiSupervised) with this weight')
    p.add_argument('--only-semi', action='store_true', help='with --semi-weight: the <task>+semi cells only')
    p.add_argument('--tag', default='', help='name of a variant; cells are cached per tag')
    p.add_argument('--scratch-tag', default=None, help='tag of the scratch cells to compare with (default: --tag); '
                   'variants that change only the pretraining or the recipe share one budget\'s scratch runs')
    p.add_argument('--out', default='runs/count_bench.jsonl')
    p.add_argument('--pretrain-tag', default=None, help='tag of the pretrained weights to use (default: --tag); '
                   'weights already on disk for it are reused, so fine-tuning variants share one pretraining')
    a = p.parse_args()
    if a.pretrain_tag is None: a.pretrain_tag = a.tag
    if a.scratch_tag is None: a.scratch_tag = a.tag
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
                cell = dict(tag=a.scratch_tag, mode=mode, seed=seed, fraction=frac, method='scratch')
                if _key(cell) not in done: done[_key(cell)] = _write(out, cell, _finetune(a, data, mode, seed, frac, None))
            for task in a.tasks:
                w = None
                for frac in [] if a.only_semi else a.fractions:
                    cell = dict(tag=a.tag, mode=mode, seed=seed, fraction=frac, method=task)
                    if _key(cell) in done: continue
                    if w is None: w = 'random' if task == 'random' else _pretrain(a, data, mode, seed, task)
                    done[_key(cell)] = _write(out, cell, _finetune(a, data, mode, seed, frac, w))
                for frac in a.fractions if a.semi_weight > 0 and task != 'random' else []:
                    cell = dict(tag=a.tag, mode=mode, seed=seed, fraction=frac, method=f'{task}+semi')
                    if _key(cell) in done: continue
                    if w is None: w = _pretrain(a, data, mode, seed, task)
                    done[_key(cell)] = _write(out, cell, _finetune(a, data, mode, seed, frac, w, semi=task))
    _table(a, done)


def _key(r): return (r.get('tag', ''), r['mode'], r['seed'], r['fraction'], r['method'])


def _write(out, cell, res):
    row = dict(cell, **res)
    with open(out, 'a') as f: f.write(json.dumps(row) + '\n')
    print(json.dumps(row), flush=True)
    return row


def texture_counts(n: int, n_classes: int, min_len: int, max_len: int, rng) -> tuple[list, np.ndarray]:
    """Integer counts 0..40 whose class is a property of the whole series, not of a few steps: each class changes
    one thing of a shared Poisson process with an AR(1) log-rate and decaying bursts. Class 0 as is; 1: a rougher
    log-rate (AR coefficient 0.8 instead of 0.97, same variance); 2: bursts three times as often; 3: a weak periodic
    rate (period 20..60 steps); 4: overdispersed counts (gamma-Poisson); classes >= 5 repeat the cycle with the
    change twice as strong."""
    L = np.exp(rng.uniform(np.log(min_len), np.log(max_len + 1), n)).astype(int)
    y = rng.permutation(np.arange(n) % n_classes)
    X = []
    for Li, c in zip(L, y):
        k, strength = c % 5, 1 + c // 5
        phi = 0.8 if k == 1 else 0.97
        e = rng.normal(0, 0.4 * np.sqrt(1 - phi ** 2), Li)
        z = np.empty(Li); z[0] = rng.normal(0, 0.4)
        for t in range(1, Li): z[t] = phi * z[t - 1] + e[t]
        rate = np.exp(np.log(2.5) + rng.normal(0, 0.3) + z)
        every = 500 / (3 * strength) if k == 2 else 500
        tau = rng.uniform(2, 8)
        for s0 in rng.integers(0, Li, rng.poisson(Li / every) + 1):
            t = np.arange(s0, min(Li, s0 + int(4 * tau))); rate[t] += rng.uniform(5, 20) * np.exp(-(t - s0) / tau)
        if k == 3: rate *= 1 + 0.35 * strength * np.sin(2 * np.pi * np.arange(Li) / rng.uniform(20, 60) + rng.uniform(0, 6.3))
        if k == 4: rate *= rng.gamma(2 / strength, strength / 2, Li)
        X.append(np.minimum(rng.poisson(rate), 40).astype(np.uint8)[None])
    return X, y.astype(np.int64)


def _data(a, seed):
    if a.data == 'texture':
        X, y = texture_counts(a.n_labeled + a.n_unlabeled, a.n_classes, a.min_len, a.max_len, np.random.default_rng([seed, 0]))
        Xt, yt = texture_counts(a.n_test, a.n_classes, a.min_len, a.max_len, np.random.default_rng([seed, 1]))
        return dict(X_lab=X[:a.n_labeled], y_lab=y[:a.n_labeled], X_pool=X, X_test=Xt, y_test=yt)
    from tsai_ssl.datasets import make_synthetic_split
    X, y, Xt, yt = make_synthetic_split(a.n_labeled + a.n_unlabeled, a.n_test, min_len=a.min_len, max_len=a.max_len,
                                        n_classes=a.n_classes, seed=seed)
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
    dls = get_ssl_dls(X, splits=(range(n_val, len(X)), range(n_val)), bs=a.bs, max_len=a.crop or None,
                      batch_tfms=_tfms(mode), n_values=41, seed=seed, drop_last=True)
    path = (Path(a.out).parent / 'count_bench_weights' / f'{a.pretrain_tag}_{mode}_{task}_{seed}.pth').absolute()
    if path.exists() and a.pretrain_tag != a.tag: return path
    learn = _learner(dls, seed, cbs=make_task(task, save_as=str(path), seed=seed, **json.loads(a.task_kwargs)))
    t0 = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.pretrain_epochs, a.lr)
    print(f'pretrained {task} ({mode}, seed {seed}) in {time.time() - t0:.0f} s', flush=True)
    return path


def _finetune(a, data, mode, seed, frac, weights, semi=None):
    from fastai.metrics import accuracy

    from tsai_ssl import get_ssl_dls, load_pretrained
    from tsai_ssl.labels import label_subset
    idx = label_subset(data['y_lab'], frac, seed)
    X = [data['X_lab'][i] for i in idx]
    y = data['y_lab'][idx]
    dls = get_ssl_dls(X, y, splits=(range(len(X)), []), bs=min(a.bs, len(X)), max_len=a.crop or None,
                      batch_tfms=_tfms(mode), seed=seed, drop_last=len(X) > a.bs)
    cbs = None
    if semi is not None:  # the task's loss on every training series (labeled and not) stays on
        from tsai_ssl import SemiSupervised
        from tsai_ssl.tasks import make_task
        du = get_ssl_dls(data['X_pool'], splits=(range(len(data['X_pool'])), []), bs=a.bs, max_len=a.crop or None,
                         batch_tfms=_tfms(mode), n_values=41, seed=seed, drop_last=True)
        cbs = SemiSupervised(make_task(semi, seed=seed, **json.loads(a.task_kwargs)), du.train, weight=a.semi_weight)
    learn = _learner(dls, seed, metrics=accuracy, cbs=cbs)
    if weights is not None and weights != 'random': load_pretrained(learn, weights)
    per_epoch = max(1, len(X) // min(a.bs, len(X)))
    epochs = max(a.finetune_epochs, math.ceil(a.min_steps / per_epoch))
    t0 = time.time()
    with learn.no_bar(), learn.no_logging():
        if weights is not None and a.recipe == 'bn-recal': _recalibrate_bn(learn)
        if weights is not None and a.recipe == 'reinit-last': _reinit_last_block(learn.model)
        if weights is not None and a.recipe == 'lp-ft':
            learn.freeze(); learn.fit_one_cycle(max(1, epochs // 3), a.lr); learn.unfreeze()
        if weights is not None and a.recipe == 'frozen': learn.freeze()
        if weights is not None and a.recipe == 'fine_tune': learn.fine_tune(epochs, a.lr, lr_mult=a.lr_mult)
        else: learn.fit_one_cycle(epochs, a.lr)
    dl = learn.dls.test_dl(data['X_test'], y=data['y_test'], with_labels=True, bs=32)
    with learn.no_bar(): preds, targs = learn.get_preds(dl=dl)
    return dict(n_labeled=int(len(idx)), epochs=epochs, accuracy=float((preds.argmax(-1) == targs).float().mean()),
                seconds=round(time.time() - t0, 1))


def _recalibrate_bn(learn):
    "BatchNorm running statistics recomputed from the labeled training series (train-mode forwards, no gradient)."
    import torch
    bns = [m for m in learn.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns: m.reset_running_stats(); m.momentum = None  # cumulative average over the pass
    learn.model.train()
    with torch.no_grad():
        for xb, _ in learn.dls.train: learn.model(xb)
    for m in bns: m.momentum = 0.1


def _reinit_last_block(model):
    "Fresh weights for the backbone's last residual block (the one closest to the pretext head)."
    from tsai_ssl.backbone import split_backbone
    blocks = [m for m in split_backbone(model).modules() if type(m).__name__.startswith('ResBlock')]
    for m in blocks[-1].modules():
        if m is not blocks[-1] and hasattr(m, 'reset_parameters'): m.reset_parameters()


def _table(a, done):
    print('\ntest accuracy (%), mean ± std over seeds; in brackets the paired difference to scratch (mean ± std)')
    for mode in a.modes:
        print(f'\n{mode}: ' + '  '.join(f'{100 * f:g}% labels'.rjust(26) for f in a.fractions))
        for m in ['scratch'] + a.tasks + ([f'{t}+semi' for t in a.tasks if t != 'random'] if a.semi_weight > 0 else []):
            cells = []
            for f in a.fractions:
                t = a.scratch_tag if m == 'scratch' else a.tag
                acc = {s: done[(t, mode, s, f, m)]['accuracy'] for s in a.seeds if (t, mode, s, f, m) in done}
                base = {s: done[(a.scratch_tag, mode, s, f, 'scratch')]['accuracy'] for s in a.seeds
                        if (a.scratch_tag, mode, s, f, 'scratch') in done}
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
