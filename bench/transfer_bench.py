"""Does pretraining help at 10% labels? tsai-ssl's tasks (masked, next, contrastive, ts2vec) vs tsai's MVP vs scratch.

Run by hand (not part of the tests):

    python bench/transfer_bench.py --ucr ACSF1 PLAID --seeds 0 1 2 --pretrain-epochs 20 --finetune-epochs 30

For each data set (sktime's shipped UCR files, official train/test split) and seed: pretrain on all training
series without labels, fine-tune ResNetPlus on a stratified 10% of the training labels (>= 1 per class), and
report test accuracy (mean, std over seeds). Scratch uses the same classifier, epochs, lr and seed.
tsai's MVP callback is run on the same data (fixed length: variable-length sets are NaN-padded the way tsai
expects) and its weights loaded with `ts_learner(..., pretrained=True, weights_path=...)`.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings('ignore')


def mvp_pretrain(X, seed, epochs, lr, bs, workdir):
    from fastai.torch_core import set_seed
    from tsai.callback.MVP import MVP
    from tsai.data.core import get_ts_dls
    from tsai.data.preprocessing import TSStandardize
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus
    L = max(s.shape[-1] for s in X)
    arr = np.full((len(X), X[0].shape[0], L), np.nan, np.float32)
    for i, s in enumerate(X): arr[i, :, :s.shape[-1]] = s
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X)); n_val = max(1, len(X) // 10)
    set_seed(seed)
    dls = get_ts_dls(arr, splits=(list(idx[n_val:]), list(idx[:n_val])), batch_tfms=[TSStandardize()], bs=bs)
    learn = ts_learner(dls, ResNetPlus, cbs=MVP(target_dir=str(workdir), fname=f'mvp_{seed}'))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return Path(workdir) / f'mvp_{seed}.pth'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ucr', nargs='+', default=['ACSF1', 'PLAID'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--fraction', type=float, default=0.1)
    p.add_argument('--methods', nargs='+', default=['scratch', 'masked', 'next', 'mvp'])
    p.add_argument('--pretrain-epochs', type=int, default=20)
    p.add_argument('--finetune-epochs', type=int, default=30)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--max-len', type=int, default=None)
    p.add_argument('--out', default='runs/bench_transfer')
    a = p.parse_args(argv)
    from tsai_ssl.datasets import load_ucr
    from tsai_ssl.experiment import finetune, label_subset, pretrain
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.ucr:
        Xtr, ytr, Xte, yte = load_ucr(name)[:4]
        for seed in a.seeds:
            lab = label_subset(ytr, a.fraction, seed=seed)
            for method in a.methods:
                t0 = time.time()
                weights = None
                if method in ('masked', 'next', 'contrastive', 'ts2vec'):
                    weights = pretrain(Xtr, task=method, arch='ResNetPlus', epochs=a.pretrain_epochs, lr=a.lr, bs=a.bs,
                                       max_len=a.max_len, seed=seed, path=out / name / method)
                elif method == 'mvp':
                    weights = mvp_pretrain(Xtr, seed, a.pretrain_epochs, a.lr, a.bs, out / name / 'mvp')
                acc = finetune([Xtr[i] for i in lab], ytr[lab], Xte, yte, arch='ResNetPlus', weights=weights if method != 'mvp' else None,
                               epochs=a.finetune_epochs, lr=a.lr, bs=a.bs, max_len=a.max_len, seed=seed) if method != 'mvp' \
                    else mvp_finetune([Xtr[i] for i in lab], ytr[lab], Xte, yte, weights, seed, a)
                row = dict(data=name, method=method, seed=seed, n_labeled=len(lab), accuracy=acc, seconds=round(time.time() - t0, 1))
                rows.append(row); print(json.dumps(row), flush=True)
                (out / 'rows.json').write_text(json.dumps(rows, indent=1))
    print('\n| data | method | test accuracy (mean ± std) | seeds |\n|---|---|---|---|')
    for name in a.ucr:
        for method in a.methods:
            accs = [r['accuracy'] for r in rows if r['data'] == name and r['method'] == method]
            print(f'| {name} | {method} | {np.mean(accs):.3f} ± {np.std(accs):.3f} | {len(accs)} |')


def mvp_finetune(X, y, Xte, yte, weights, seed, a):
    "Fine-tune the way tsai documents for MVP: ts_learner(pretrained=True, weights_path=...)."
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    from tsai.data.preprocessing import TSStandardize
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    from tsai_ssl import get_ssl_dls
    from tsai_ssl.experiment import evaluate
    set_seed(seed)
    dls = get_ssl_dls(X, y, bs=min(a.bs, len(X)), batch_tfms=[TSStandardize()], max_len=a.max_len, seed=seed)
    learn = ts_learner(dls, ResNetPlus, metrics=accuracy, pretrained=True, weights_path=weights)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.finetune_epochs, a.lr)
    return evaluate(learn, Xte, yte, bs=a.bs)


if __name__ == '__main__':
    main()
