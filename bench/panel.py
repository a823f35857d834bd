"""The panel: scratch vs each pretraining vs tsai's MVP on real and synthetic sets, at several label fractions and
seeds, with the published anchors beside ours. Run by hand (not part of the tests); every finished cell is cached in
`bench/results/panel.jsonl`, so an interrupted run resumes where it stopped and a second run only reports:

    python bench/panel.py --sets ArrowHead GunPoint --fractions 0.1 1 --seeds 0 1 2 \\
        --methods scratch masked contrastive masked+semi mvp
    python bench/panel.py --report            # the tables from the cache, for the settings given

Protocol. Official UCR train/test split. For each set and seed, each task pretrains once on every training series
(labels ignored; for the synthetic and texture sets also on their unlabeled pools) and is reused for every fraction; the labeled
subset of a fraction is stratified and the same for every method of a seed (`tsai_ssl.label_subset`). Every
classifier trains every layer with ``fit_one_cycle`` for a budget in optimizer steps (``--steps``), whatever the
number of labels, and is scored once on the test split: no model selection, so no test-set peeking. ``<task>+semi``
fine-tunes from the task's weights with the task's loss kept on the unlabeled series (`tsai_ssl.SemiSupervised`).
``fixmatch`` trains from scratch with FixMatch's pseudo-label term on the unlabeled series (threshold
``--pseudo-threshold``); ``<task>+semi+fixmatch`` adds that term to ``<task>+semi``.

Sets: the UCR sets by name; ``synthetic``, the demo's data (`tsai_ssl.datasets.make_demo_data`); ``texture``, the
count set of `bench/count_bench.py` (`texture_counts`: 300 labeled and 300 unlabeled series of 512..4096 counts,
5 classes set by how the count process behaves everywhere, 300 test series; not used to choose any default).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings('ignore')
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / 'bench' / 'results' / 'panel.jsonl'
WEIGHTS = ROOT / 'runs' / 'panel_weights'

# published figures (../shared/ANCHORS.md): ResNet with all labels (Fawaz et al.); supervised FCN / SemiTime /
# TS-TFC at 10% labels (TS-TFC, AAAI 2023: another split protocol, so compare trends, not cells)
RESNET_ALL = {'ACSF1': 0.916, 'ArrowHead': 0.838, 'GunPoint': 0.991, 'PLAID': 0.940}
TEN_PCT = {'ArrowHead': (0.687, 0.765, 0.711), 'GunPoint': (0.735, 0.957, 0.910), 'PLAID': (0.289, 0.303, 0.290)}


def load_set(name: str, seed: int = 0):
    "X_train, y_train, X_test, y_test, X_unlabeled (extra series for pretraining), n_classes."
    if name == 'synthetic':
        from tsai_ssl.datasets import make_demo_data
        d = make_demo_data(seed=0)
        return d.X_train, d.y_train, d.X_test, d.y_test, d.X_unlabeled, int(d.y_train.max()) + 1
    if name == 'texture':  # counts 0..40 shaped like the user's: 512..4096 steps, the class in the whole series' texture
        from count_bench import texture_counts
        X, y = texture_counts(600, 5, 512, 4096, np.random.default_rng([0, 0]))
        X_te, y_te = texture_counts(300, 5, 512, 4096, np.random.default_rng([0, 1]))
        return X[:300], y[:300], X_te, y_te, X[300:], 5
    from tsai_ssl.datasets import load_ucr
    X_tr, y_tr, X_te, y_te, classes = load_ucr(name)
    return X_tr, y_tr, X_te, y_te, [], len(classes)


def budget_key(a, semi_weight: float | None = None) -> str:
    "What the cached cells depend on besides set, method, fraction and seed."
    w = a.semi_weight if semi_weight is None else semi_weight
    return (f"{a.arch}{_arch_tag(a)}-ft{a.steps}-pt{a.pretrain_steps}-bs{a.bs}-lr{a.lr:g}-len{a.max_len or 0}"
            f"-semi{w:g}" + (f"-std{a.standardize}" if a.standardize != 'dataset' else '')
            + (f"-ptbs{a.pretrain_bs}" if a.pretrain_bs and a.pretrain_bs != a.bs else '')
            + (f"-pseudo{a.pseudo_threshold:g}" if a.pseudo_threshold != 0.95 else ''))  # only fixmatch cells use it


def task_options(a) -> dict:
    "--task-options: {task: {option: value}} (pretrain's task_kwargs, per task)."
    return json.loads(a.task_options) if a.task_options else {}


def _options_tag(a, task: str) -> str:
    "A task's options in cache keys and weight names: '-anchors256-window3000' ('' when it has none)."
    return ''.join(f'-{k}{v}' for k, v in sorted(task_options(a).get(task, {}).items()))


def cell_budget(a, method: str) -> str:
    """The cache key of one method's cells: the budget, plus its task's --task-options (scratch cells stay shared).
    Only `+semi` methods depend on --semi-weight; the others keep the key of weight 1 (the default, which every
    cell had before the weight was an option), so one set of scratch and pretrained cells serves every weight."""
    base = method.removesuffix('+fixmatch')
    return budget_key(a, None if base.endswith('+semi') else 1.) + _options_tag(a, base.removesuffix('+semi'))


def _arch_tag(a) -> str:
    "The width (CNNs) or the JSON architecture config (--arch-config) in cache keys and weight names."
    if not a.arch_config: return f'-nf{a.nf}'
    return '-' + '-'.join(f'{k}{v}' for k, v in sorted(json.loads(a.arch_config).items()))


def arch_config(a, series) -> dict | None:
    "The classifier's config for one set: --nf / --arch-config, and for a Transformer seq_len = the longest series."
    from tsai_ssl.config import TRANSFORMER_ARCHS, normalize_arch
    cfg = dict(json.loads(a.arch_config)) if a.arch_config else ({'nf': a.nf} if a.nf else {})
    if normalize_arch(a.arch) in TRANSFORMER_ARCHS: cfg['seq_len'] = int(max(x.shape[-1] for x in series))
    return cfg or None


def read_cache() -> list[dict]:
    if not CACHE.exists(): return []
    return [json.loads(line) for line in CACHE.read_text().splitlines() if line.strip()]


def run(a) -> None:
    import torch

    from tsai_ssl.experiment import MVP, SCRATCH, RunConfig, finetune, label_subset, pretrain, pretrain_mvp
    torch.set_num_threads(a.threads)
    done = {(r['set'], r['method'], r['fraction'], r['seed']) for r in read_cache() if r['budget'] == cell_budget(a, r['method'])}
    cfg = RunConfig(arch=a.arch, pretrain_steps=a.pretrain_steps,
                    finetune_steps=a.steps, lr=a.lr, bs=a.bs, max_len=a.max_len or None, device=a.device,
                    semi_weight=a.semi_weight, standardize=a.standardize)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    for name in a.sets:
        X_tr, y_tr, X_te, y_te, X_unl, _ = load_set(name)
        X_pre = list(X_tr) + list(X_unl)
        set_cfg = cfg.replace(arch_config=arch_config(a, X_pre + list(X_te)))
        for seed in a.seeds:
            cs = set_cfg.replace(seed=seed)
            weights = {}

            def weights_for(task: str) -> Path:  # pretrain once per set, task, seed and pretraining budget
                if task not in weights:
                    w = WEIGHTS / name / f"{task}_seed{seed}_{a.arch}{_arch_tag(a)}-pt{a.pretrain_steps}" \
                                         f"-bs{a.pretrain_bs or a.bs}-lr{a.lr:g}" \
                                         f"-len{a.max_len or 0}{'-stdseries' if a.standardize == 'series' else ''}" \
                                         f"{_options_tag(a, task)}.pth"
                    if not w.exists():  # written under another name first: an interrupted run leaves no weights
                        t0, tmp = time.time(), w.with_name('partial_' + w.name)
                        cp = cs.replace(bs=a.pretrain_bs) if a.pretrain_bs else cs
                        if task == MVP: pretrain_mvp(X_pre, cp, path=tmp)
                        else: pretrain(X_pre, task, cp, path=tmp, task_kwargs=task_options(a).get(task))
                        tmp.with_name(tmp.name + '.json').replace(w.with_name(w.name + '.json'))
                        tmp.replace(w)
                        print(f'  pretrained {task} on {name} seed {seed} in {time.time() - t0:.0f} s', file=sys.stderr)
                    weights[task] = w
                return weights[task]

            for frac in a.fractions:
                idx = label_subset(y_tr, frac, seed)
                for method in a.methods:
                    if (name, method, frac, seed) in done: continue
                    fm = method == 'fixmatch' or method.endswith('+fixmatch')
                    base = method.removesuffix('+fixmatch')
                    semi = base.endswith('+semi')
                    task = base.removesuffix('+semi')
                    t0 = time.time()
                    kw = {}
                    if task not in (SCRATCH, 'fixmatch'): kw['weights'] = weights_for(task)
                    if semi: kw.update(semi_task=task, X_unlabeled=X_pre)
                    if method == 'fixmatch': kw.update(X_unlabeled=X_pre)
                    t1 = time.time()
                    acc = finetune([X_tr[i] for i in idx], y_tr[idx], X_te, y_te,
                                   cs.replace(semi_weight=a.semi_weight if semi else 0.,
                                              pseudo_threshold=a.pseudo_threshold if fm else None), **kw)
                    row = dict(set=name, method=method, fraction=frac, seed=seed, n_labeled=int(len(idx)), accuracy=acc,
                               seconds=round(time.time() - t1, 1), pretrain_seconds=round(t1 - t0, 1),
                               budget=cell_budget(a, method))
                    with open(CACHE, 'a') as fh: fh.write(json.dumps(row) + '\n')
                    print(json.dumps(row), flush=True)


def report(a) -> str:
    "Markdown tables (one per fraction) from the cached cells of this budget: mean ± std, paired difference [95% CI]."
    from tsai_ssl.experiment import SCRATCH, method_label, paired_ci
    key = budget_key(a) + (f' (task options {a.task_options})' if a.task_options else '')
    rows = [r for r in read_cache() if r['set'] in a.sets and r['method'] in a.methods and r['budget'] == cell_budget(a, r['method'])]
    out = [f'Budget `{key}`; accuracy % on the official test split, mean ± std over seeds; under each method the '
           'paired difference to scratch [95% CI] in points.', '']
    for frac in a.fractions:
        cells = [r for r in rows if r['fraction'] == frac]
        if not cells: continue
        anchor = 'published ResNet' if frac == 1 else 'published sup. FCN / SemiTime / TS-TFC (10%)' if frac == 0.1 else ''
        head = ['set (labels)'] + [method_label(m) for m in a.methods] + ([anchor] if anchor else [])
        out += [f'**{frac:.0%} labels**', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for name in a.sets:
            acc = {(r['method'], r['seed']): r['accuracy'] for r in cells if r['set'] == name}
            if not acc: continue
            n_lab = next(r['n_labeled'] for r in cells if r['set'] == name)
            line = [f'{name} ({n_lab})']
            for m in a.methods:
                v = [acc[m, s] for s in a.seeds if (m, s) in acc]
                if not v: line.append('-'); continue
                txt = f'{100 * np.mean(v):.1f}' + (f' ± {100 * np.std(v, ddof=1):.1f}' if len(v) > 1 else '')
                pairs = [100 * (acc[m, s] - acc[SCRATCH, s]) for s in a.seeds if (m, s) in acc and (SCRATCH, s) in acc]
                if m != SCRATCH and pairs:
                    ci = paired_ci(pairs)
                    txt += f' ({np.mean(pairs):+.1f}' + (f' [{ci[0]:+.1f}, {ci[1]:+.1f}]' if ci else '') + ')'
                line.append(txt + ('' if len(v) == len(a.seeds) else f" ({len(v)} seed{'s' if len(v) > 1 else ''})"))
            if frac == 1: line.append(f'{100 * RESNET_ALL[name]:.1f}' if name in RESNET_ALL else '')
            elif frac == 0.1: line.append(' / '.join(f'{100 * x:.1f}' for x in TEN_PCT[name]) if name in TEN_PCT else '')
            out.append('| ' + ' | '.join(line) + ' |')
        out.append('')
    return '\n'.join(out)


def versus(a) -> str:
    """Markdown: each method of this budget against the same method of the budget `--versus` (another architecture,
    same sets, fractions and seeds: the same labeled subsets), mean ± std and the paired difference [95% CI]."""
    from tsai_ssl.experiment import method_label, paired_ci
    cache = read_cache()
    mine = {(r['set'], r['method'], r['fraction'], r['seed']): r['accuracy'] for r in cache
            if r['budget'] == cell_budget(a, r['method'])}
    base = {(r['set'], r['method'], r['fraction'], r['seed']): r['accuracy'] for r in cache if r['budget'] == a.versus}
    opts = f' (task options {a.task_options})' if a.task_options else ''
    out = [f'`{budget_key(a)}`{opts} against `{a.versus}`: accuracy % (this one / the other), mean over seeds; in brackets '
           'the paired difference (this - the other) [95% CI] in points.', '',
           '| set | labels | ' + ' | '.join(method_label(m) for m in a.methods) + ' |', '|' + '---|' * (len(a.methods) + 2)]
    for name in a.sets:
        for frac in a.fractions:
            line = [name, f'{frac:.0%}']
            for m in a.methods:
                seeds = [s for s in a.seeds if (name, m, frac, s) in mine and (name, m, frac, s) in base]
                if not seeds: line.append('-'); continue
                d = [100 * (mine[name, m, frac, s] - base[name, m, frac, s]) for s in seeds]
                ci = paired_ci(d)
                line.append(f'{100 * np.mean([mine[name, m, frac, s] for s in seeds]):.1f} / '
                            f'{100 * np.mean([base[name, m, frac, s] for s in seeds]):.1f} ({np.mean(d):+.1f}'
                            + (f' [{ci[0]:+.1f}, {ci[1]:+.1f}]' if ci else '') + ')')
            out.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sets', nargs='+', default=['ArrowHead', 'GunPoint', 'ACSF1', 'PLAID', 'synthetic'])
    p.add_argument('--fractions', nargs='+', type=float, default=[0.05, 0.1, 0.2, 1.0])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--methods', nargs='+', default=['scratch', 'masked', 'next', 'contrastive', 'masked+semi', 'mvp'])
    p.add_argument('--arch', default='ResNetPlus')
    p.add_argument('--nf', type=int, default=0, help='width (0: the architecture default)')
    p.add_argument('--arch-config', default='', help='JSON config of the architecture (replaces --nf), e.g. '
                   '\'{"d_model": 64, "flatten": false}\'; a Transformer gets seq_len = the longest series of each set')
    p.add_argument('--steps', type=int, default=500, help='fine-tuning (and scratch) optimizer steps')
    p.add_argument('--pretrain-steps', type=int, default=1000)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--pretrain-bs', type=int, default=0, help='pretraining batch size (0: --bs); fine-tuning keeps --bs')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--max-len', type=int, default=0, help='training crop (0: full length)')
    p.add_argument('--semi-weight', type=float, default=1.0)
    p.add_argument('--pseudo-threshold', type=float, default=0.95, help='confidence threshold of the fixmatch methods')
    p.add_argument('--standardize', default='dataset', choices=['dataset', 'series'],
                   help="input scaling (RunConfig.standardize); 'series' for PLAID, whose series' scales differ by 1e5")
    p.add_argument('--task-options', default='', metavar='JSON',
                   help='options of the tasks, e.g. \'{"ts2vec": {"window": 3000, "anchors": 256}}\' (in the cache key)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--report', action='store_true', help='only print the tables from the cache')
    p.add_argument('--versus', default='', metavar='BUDGET',
                   help='also compare each method with the cached cells of another budget key (e.g. another --arch)')
    a = p.parse_args(argv)
    if not a.report: run(a)
    print(report(a))
    if a.versus: print('\n' + versus(a))


if __name__ == '__main__':
    main()
