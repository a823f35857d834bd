"""Design choices of the pretext tasks, measured by transfer (run by hand).

    python bench/ablation_bench.py --study contrastive-views --seeds 0 1 2 3 4
    python bench/ablation_bench.py --study next-step

Each configuration pretrains ResNetPlus on all training series of a UCR data set without labels, fine-tunes on a
stratified 10% of the labels and reports test accuracy (mean ± std over seeds), with the settings of the README's
transfer table (`transfer_bench.py`: 10 pretraining and 20 fine-tuning epochs, 512-step crops, bs 32, lr 1e-3),
and how long pretraining took.

Studies:
* contrastive-views: the contrastive task's views as random halves of each series (the default) vs random 50-100 %
  crops (padded to the longest view of the batch, so a step costs about two supervised steps).
* next-step: `causal='pad'` (left-padded layers) vs `causal='shift'` (prediction from the unmodified backbone's
  output R steps back) scoring every step, vs 'shift' scoring a random quarter of the steps (the default).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

warnings.filterwarnings('ignore')


def _studies():
    from tsai_ssl.augment import Jitter, RandomCrop, Scaling, TimeMask
    def views(lo, hi): return dict(augs=[RandomCrop(lo, hi, min_len=8), TimeMask(0.1, 5.), Scaling(0.1), Jitter(0.03)])
    return {
        'contrastive-views': ('contrastive', {'halves (default)': views(0.5, 0.5), '50-100 % crops': views(0.5, 1.0)}),
        'next-step': ('next', {"causal='pad', every step": dict(causal='pad', steps=1.0),
                               "causal='shift', every step": dict(causal='shift', steps=1.0),
                               "causal='shift', steps=0.25 (default)": dict(causal='shift', steps=0.25)}),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--study', choices=['contrastive-views', 'next-step'], required=True)
    p.add_argument('--ucr', default='ACSF1')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--out', default='runs/bench_ablation')
    a = p.parse_args(argv)
    from tsai_ssl.datasets import load_ucr
    from tsai_ssl.experiment import finetune, label_subset, pretrain
    task, configs = _studies()[a.study]
    Xtr, ytr, Xte, yte = load_ucr(a.ucr)[:4]
    res = {k: [] for k in configs}
    for seed in a.seeds:
        lab = label_subset(ytr, 0.1, seed=seed)
        for i, (name, kw) in enumerate(configs.items()):
            t0 = time.time()
            w = pretrain(Xtr, task=task, epochs=10, lr=1e-3, bs=32, max_len=512, seed=seed,
                         path=f'{a.out}/{a.ucr}_{a.study}_{i}_{seed}', task_kwargs=kw)
            secs = time.time() - t0
            acc = finetune([Xtr[j] for j in lab], ytr[lab], Xte, yte, arch='ResNetPlus', weights=w, epochs=20,
                           lr=1e-3, bs=32, max_len=512, seed=seed)
            res[name].append((acc, secs))
            print(json.dumps(dict(config=name, seed=seed, accuracy=round(acc, 4), pretrain_s=round(secs, 1))), flush=True)
    print(f'\n| {a.ucr}, 10% labels | test accuracy | pretraining time |\n|---|---|---|')
    for name, r in res.items():
        acc, secs = np.array([x[0] for x in r]), np.array([x[1] for x in r])
        print(f'| {name} | {acc.mean():.3f} ± {acc.std():.3f} ({len(r)} seeds) | {secs.mean():.1f} s |')


if __name__ == '__main__':
    main()
