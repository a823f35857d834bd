"""The tsai-ssl command: does self-supervised pretraining help my classifier, and at which amount of labels?

  tsai-ssl demo                      # the whole comparison on built-in data
  tsai-ssl compare data.npz --tasks masked,next --fractions 1%,5%,100%
  tsai-ssl compare --ucr GunPoint --epochs 20
  tsai-ssl pretrain data.npz --task masked --out models/ssl_masked.pth
  tsai-ssl finetune data.npz --weights models/ssl_masked.pth --fraction 5%
  tsai-ssl tasks                     # the pretext tasks and their options
  tsai-ssl store build series/ corpus --dtype uint8   # a memory-mapped corpus

Input errors (a missing file, wrong keys, labels of the wrong length, a fraction that leaves a class without a
label, NaN inside a series, an unknown architecture or task, ...) print one line on stderr and exit with status
2. Anything else is a bug: it prints its traceback and exits with status 1. Set TSAI_SSL_DEBUG=1 to get the
traceback of input errors too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import textwrap
import time
import traceback
import warnings
from pathlib import Path

from . import __version__
from . import experiment as E  # numpy only at import: torch, fastai and tsai load when training starts
from .errors import InputError
from .task_index import check_task_names

__all__ = ['main', 'build_parser']

PROG = 'tsai-ssl'
DATA_HELP = ("DATA: an .npz file with X ((N, C, L) array, (N, L) array, or an object array of variable-length "
             "(L,) / (C, L) series), y (N labels; -1 = unlabeled, used for pretraining only) and optionally split "
             "(per series 'train'/'test' or 0/1) or X_test + y_test. Trailing steps where every channel is NaN are "
             "padding; any other NaN is an error. Without a split, a stratified --test-size share of the labeled "
             "series is held out for testing.")
N_VALUES_HELP = ("value range of the series: N when the values are the integers 0..N-1 (categorical pretext targets), "
                 "0 or none for continuous targets, auto to decide from the data (integers 0..40 give 41; data that "
                 "is almost but not quite such integers is an error saying where)")

# demo settings: chosen so `tsai-ssl demo` finishes within 5 minutes on 2 CPU cores (docs/results.md)
DEMO = dict(n_train=200, n_unlabeled=2000, n_test=400, series_len=(256, 1024), max_len=256, bs=16, pretrain_steps=800,
            finetune_steps=300, fractions='5%,100%', seeds='1', lr=3e-3, arch_config='{"nf": 32}', tasks='masked,contrastive',
            semi_weight=1., semi_tasks='contrastive', out='runs/demo')


# compare's defaults: every layer trained for a budget in steps (a few labels train as long as many), 512-step training
# crops, ResNetPlus at width 32, the tasks, two semi-supervised methods (masked-value, the user's headline task, and
# contrastive, the one measured above scratch at few labels on count data) and tsai's MVP as the reference; on 600
# series of up to 4096 steps and one label fraction, 2 seeds stay well under 45 minutes on 2 CPU cores
# (docs/results.md)
COMPARE = dict(pretrain_steps=600, finetune_steps=400, max_len=512, bs=16, arch_config='{"nf": 32}', semi_weight=1.,
               semi_tasks='masked,contrastive', tasks='masked,next,contrastive,mvp')


class UsageError(InputError):
    "Bad command-line input (exit status 2)."


# ----------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------
class _Formatter(argparse.HelpFormatter):
    """Plain help wrapped to the terminal: description paragraphs are re-wrapped, indented lines (examples) kept
    as they are; an option's default is shown unless it is empty or the help already says it."""

    def _fill_text(self, text, width, indent):
        out = []
        for para in textwrap.dedent(text).strip('\n').split('\n\n'):
            lines = para.split('\n')
            if all(line.startswith(' ') for line in lines if line):
                out.append('\n'.join(indent + line for line in lines))  # examples: one command per line
            else:
                out.append(textwrap.fill(' '.join(para.split()), width, initial_indent=indent, subsequent_indent=indent))
        return '\n\n'.join(out)

    def _get_help_string(self, action):
        h = action.help or ''
        d = action.default
        if 'default' in h or d is None or d is False or d == '' or d is argparse.SUPPRESS or not action.option_strings:
            return h
        d = ' '.join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else '%(default)s'
        return f'{h} (default: {d})'


def _parse_fractions(text: str, option: str = '--fractions') -> tuple[float, ...]:
    out = []
    for tok in str(text).replace(' ', ',').split(','):
        if not tok: continue
        try: f = float(tok[:-1]) / 100 if tok.endswith('%') else float(tok)
        except ValueError: raise UsageError(f"{option}: {tok!r} is not a fraction (use e.g. 0.05 or 5%)") from None
        if not tok.endswith('%') and f > 1:
            raise UsageError(f'{option}: {tok} is above 1; write {tok}% for a percentage or a fraction like 0.05')
        out.append(f)
    try: return E.check_fractions(out)
    except InputError as e: raise UsageError(f'{option}: {e}') from None


def _parse_seeds(text: str) -> tuple[int, ...]:
    toks = [t for t in str(text).replace(' ', ',').split(',') if t]
    try: vals = [int(t) for t in toks]
    except ValueError: raise UsageError(f'--seeds: {text!r}: give a count (3 = seeds 0,1,2) or a list like 0,5,7') from None
    if len(vals) == 1:
        if vals[0] < 1: raise UsageError('--seeds: the number of seeds must be at least 1')
        return tuple(range(vals[0]))
    if not vals: raise UsageError('--seeds: no seeds given')
    return tuple(dict.fromkeys(vals))


def _parse_n_values(text) -> int | None | str:
    t = str(text).strip().lower()
    if t == 'auto': return 'auto'
    if t in ('0', 'none'): return None
    try: n = int(t)
    except ValueError: n = -1
    if n < 2: raise UsageError(f'--n-values {text!r}: give N >= 2 (values 0..N-1), 0 or none (continuous), or auto')
    return n


def _add_data_args(p: argparse.ArgumentParser, synthetic_defaults: dict | None = None):
    g = p.add_argument_group('data (give DATA, --ucr or --synthetic)')
    g.add_argument('data', nargs='?', metavar='DATA', help='.npz file (see the description above)')
    g.add_argument('--ucr', metavar='NAME', help="a UCR/UEA data set shipped with sktime (e.g. GunPoint, ArrowHead, "
                   "ItalyPowerDemand, BasicMotions, PLAID, OSULeaf, JapaneseVowels, ACSF1), with its own test split")
    g.add_argument('--synthetic', action='store_true', help='the embedded synthetic data set (integer counts 0..40, 4 classes)')
    g.add_argument('--test-size', type=float, default=0.25,
                   help='share of labeled series held out for testing when DATA has no split')
    g.add_argument('--unlabeled', metavar='STORE', default=None,
                   help='a RaggedStore (from tsai-ssl store build) of unlabeled series, memory-mapped: added to the '
                   'pretraining series only')
    _add_synthetic_args(p, synthetic_defaults or {})


def _add_synthetic_args(p, d):
    g = p.add_argument_group('synthetic data (--synthetic, demo)')
    g.add_argument('--n-train', type=int, default=d.get('n_train', 600), help='training series')
    if 'n_unlabeled' in d:
        g.add_argument('--n-unlabeled', type=int, default=d['n_unlabeled'], help='unlabeled series (pretraining only)')
    g.add_argument('--n-test', type=int, default=d.get('n_test', 600), help='test series')
    g.add_argument('--series-len', type=int, nargs=2, metavar=('MIN', 'MAX'), default=list(d.get('series_len', (512, 30720))),
                   help='range of series lengths (log-uniform)')
    g.add_argument('--data-seed', type=int, default=0, help='seed of the generated data')


def _add_train_args(p, d: dict, epochs_help: str, arch_help: str = 'classifier', n_values: bool = True):
    g = p.add_argument_group('training')
    g.add_argument('--arch', default=None, help=f"{arch_help}: {', '.join(E.ARCHS)}")
    g.add_argument('--arch-config', default=d.get('arch_config'), metavar='JSON',
                   help='keyword arguments of the architecture as JSON, e.g. \'{"nf": 32}\' (same for every fit); '
                        'TSTPlus and TSiTPlus need seq_len, at least the longest series')
    g.add_argument('--epochs', type=int, default=None, help=epochs_help)
    g.add_argument('--lr', type=float, default=d.get('lr', 1e-3), help='learning rate (fit_one_cycle), same for every fit')
    g.add_argument('--bs', type=int, default=d.get('bs', 64), help='batch size')
    g.add_argument('--max-len', type=int, default=d.get('max_len'),
                   help='training crop: longer series are cut to a random window of this length (test: full length)')
    if n_values:
        g.add_argument('--n-values', default='auto', metavar='N', help=N_VALUES_HELP)
    g.add_argument('--standardize', choices=E.STANDARDIZE, default=None,
                   help="input scaling of every fit: 'dataset' (tsai's TSStandardize: one mean and std, keeps each "
                        "series' scale; the default) or 'series' (each series over its own steps: for series whose "
                        "scales differ by orders of magnitude); finetune --weights uses the recorded one")
    g.add_argument('--device', default='auto', help='cpu, cuda or auto (cuda runs in mixed precision)')
    g.add_argument('--threads', type=int, default=0,
                   help='CPU threads for torch; 0: one per core, fewer when other jobs keep cores busy')
    g.add_argument('--quiet', '-q', action='store_true', help='no progress output')


def build_parser() -> argparse.ArgumentParser:
    "The argument parser of the tsai-ssl command (builds no model and imports no torch)."
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=_Formatter)
    p.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')

    def comparison_args(sp, d):
        g = sp.add_argument_group('comparison')
        g.add_argument('--tasks', default=d.get('tasks'),
                       help='comma-separated pretext tasks, or all (default: ' + (d['tasks'] if d.get('tasks') else 'every task')
                            + "; for the names run: tsai-ssl tasks); mvp adds tsai's own MVP callback as a reference")
        g.add_argument('--fractions', default=d.get('fractions'),
                       help='labeled fractions of the training series, e.g. 1%%,5%%,100%% or 0.01,0.05,1 ' + (
                            '(default: %(default)s)' if d.get('fractions') else
                            '(default: 1%%,5%%,10%%,25%%,100%%, leaving out those with fewer labels than classes)'))
        g.add_argument('--seeds', default=d.get('seeds', '3'), help='number of seeds (3 = 0,1,2) or a list like 0,5,7')
        g.add_argument('--pretrain-epochs', type=int, default=None, help='pretraining epochs (default: --epochs)')
        g.add_argument('--finetune-epochs', type=int, default=None,
                       help='fine-tuning epochs, for pretrained and scratch alike (default: --epochs)')
        g.add_argument('--finetune-min-steps', type=int, default=d.get('finetune_min_steps', 0),
                       help='raise the fine-tuning epochs of small label fractions to at least this many optimizer steps '
                            '(same for pretrained and scratch)')
        def steps_help(stage):
            dflt = d.get(f'{stage}_steps')
            return f' (default: {dflt}, unless --epochs or --{stage}-epochs is given)' if dflt else ''
        g.add_argument('--pretrain-steps', type=int, default=None,
                       help='pretraining budget in optimizer steps (replaces the pretraining epochs)' + steps_help('pretrain'))
        g.add_argument('--finetune-steps', type=int, default=None,
                       help='fine-tuning budget in optimizer steps, whatever the number of labels (replaces the '
                            'fine-tuning epochs; same for pretrained and scratch)' + steps_help('finetune'))
        g.add_argument('--recipe', default='full', choices=E.RECIPES,
                       help='how a classifier trains from pretrained weights: every layer (full), the head first for a '
                            'quarter of the epochs (lp-ft), or the head alone (frozen)')
        g.add_argument('--semi-tasks', default=None,
                       help='with --semi-weight: the tasks fine-tuned semi-supervised (default: '
                            + (d['semi_tasks'] if d.get('semi_tasks') else 'every task') + ')')
        g.add_argument('--semi-weight', type=float, default=d.get('semi_weight', 0.),
                       help='> 0: also fine-tune each task semi-supervised, its loss on the unlabeled series kept on '
                            'with this weight (methods <task>+semi)')
        g.add_argument('--pseudo-threshold', type=float, default=d.get('pseudo_threshold'),
                       help='with --semi-weight: also a FixMatch pseudo-label term in the semi-supervised fits, from '
                            'this confidence (e.g. 0.95)')
        g.add_argument('--pool-fractions', default=None, metavar='FRACTIONS',
                       help='how much data for pretraining: also pretrain each task on these shares of the pretraining '
                            'series (e.g. 10%%,30%%) and fine-tune at every label fraction; writes pool.png')
        g.add_argument('--out', default=d.get('out', 'runs/compare'),
                       help='folder for results.json, results.csv, summary.csv, accuracy.png and weights/')

    sp = sub.add_parser('compare', formatter_class=_Formatter, help='pretraining vs scratch over label fractions and seeds',
                        description='Pretrain each task on all training series (labels ignored, plus unlabeled extras), '
                        'fine-tune on label fractions, train the same classifier from scratch with the same budget, over '
                        'several seeds, and evaluate on the test split. Prints a table and a sentence; writes JSON, CSV '
                        'and a PNG.\n\n' + DATA_HELP)
    _add_data_args(sp)
    _add_train_args(sp, COMPARE, 'pretraining and fine-tuning epochs (default: the step budgets below)',
                    'classifier (default ResNetPlus)')
    comparison_args(sp, COMPARE)

    sp = sub.add_parser('demo', formatter_class=_Formatter, help='compare on the embedded synthetic data (< 5 min on 2 CPUs)',
                        description='Runs compare on the embedded synthetic data set with small settings that finish '
                        'within about 5 minutes on 2 CPU cores. Every option of compare can be changed.')
    _add_synthetic_args(sp, DEMO)
    _add_train_args(sp, DEMO, 'pretraining and fine-tuning epochs (default: the step budgets below)',
                    'classifier (default ResNetPlus)')
    comparison_args(sp, DEMO)

    sp = sub.add_parser('pretrain', formatter_class=_Formatter, help='pretrain one task and write the backbone weights',
                        description='Pretrain one pretext task on the training series of DATA (labels are ignored; '
                        'test series are left out) and write a .pth file that learn.load(name, strict=False, '
                        'with_opt=False), ts_learner(..., pretrained=True, weights_path=...) and load_pretrained accept. '
                        'A .json file next to it records the task, the architecture and its config (finetune reads '
                        'them).\n\n' + DATA_HELP)
    _add_data_args(sp)
    _add_train_args(sp, {}, 'pretraining epochs (default 10)', 'classifier (default ResNetPlus)')
    sp.add_argument('--task', default='masked', help='pretext task (for the names run: tsai-ssl tasks)')
    sp.add_argument('--seed', type=int, default=0)
    sp.add_argument('--out', default=None, help='weights file (default models/ssl_<task>_<arch>.pth)')

    sp = sub.add_parser('finetune', formatter_class=_Formatter, help='fine-tune a classifier on a label fraction, print test accuracy',
                        description='Train the classifier on a stratified label fraction of the training series of DATA, '
                        'from pretrained weights (--weights, loaded and checked with load_pretrained) or from scratch, '
                        'and print its accuracy on the test series. With --weights, the architecture and its config '
                        'recorded by pretrain are used unless --arch / --arch-config are given (they must then '
                        'match).\n\n' + DATA_HELP)
    _add_data_args(sp)
    _add_train_args(sp, {}, 'fine-tuning epochs (default 10)',
                    'classifier (default: the one recorded with --weights, else ResNetPlus)', n_values=False)
    sp.add_argument('--weights', default=None, help='pretrained .pth file (from tsai-ssl pretrain); none = from scratch')
    sp.add_argument('--fraction', default='100%', help='labeled fraction of the training series, e.g. 5%% or 0.05')
    sp.add_argument('--seed', type=int, default=0)
    sp.add_argument('--export', default=None, metavar='PKL', help='write the trained classifier with learn.export')

    sp = sub.add_parser('store', formatter_class=_Formatter, help='build a memory-mapped store of unlabeled series',
                        description='Work with RaggedStore corpora (one flat, memory-mappable buffer + offsets; '
                        'get_ssl_dls and the tasks read them).')
    st = sp.add_subparsers(dest='store_command', metavar='ACTION', required=True)
    b = st.add_parser('build', formatter_class=_Formatter, help='write the series of a folder into a store',
                      description='Write every series of SRC (a folder of .npy / .npz / .csv files, in file-name '
                      'order: a .npy holds one series (L,) or (C, L), or N series (N, C, L); a .npz each of its '
                      'arrays likewise; a .csv one one-channel series per line) into the store DEST '
                      '(DEST.data.npy + DEST.offsets.npy), one series at a time: memory does not grow with the '
                      'corpus, and the store appears only when every series is written. Each series is checked '
                      'first; an error names the file, the series and the step.')
    b.add_argument('src', metavar='SRC', help='folder of series files')
    b.add_argument('dest', metavar='DEST', help='store path prefix')
    b.add_argument('--dtype', default='float32', help='stored dtype (uint8 holds counts 0..255: 1 byte per step)')
    b.add_argument('--n-values', default=None, help='N: every value must be an integer in 0..N-1 (e.g. 41)')
    b.add_argument('--append', action='store_true', help='add to the existing store DEST')
    b.add_argument('--overwrite', action='store_true', help='replace an existing store DEST')
    b.add_argument('--quiet', '-q', action='store_true', help='no progress bar')

    sub.add_parser('tasks', formatter_class=_Formatter, help='list the pretext tasks: names, aliases, labels, options',
                   description='Lists every registered pretext task with its aliases, its label in tables and the '
                   'options its callback accepts (with their defaults).')
    return p


# ----------------------------------------------------------------------------------------------------
# Checks (numpy only: they answer before torch is imported)
# ----------------------------------------------------------------------------------------------------
def _say(args, *msg):
    if not getattr(args, 'quiet', False): print(*msg, file=sys.stderr, flush=True)


def _parse_arch_config(text):
    if text is None or isinstance(text, dict): return text or None
    try: cfg = json.loads(text)
    except ValueError as e: raise UsageError(f'--arch-config {text!r} is not valid JSON ({e})') from None
    if not isinstance(cfg, dict): raise UsageError(f'--arch-config must be a JSON object like {{"nf": 32}}, got {text!r}')
    return cfg or None


def _check_common(args):
    "Input checks that need no torch: architecture, sizes, devices."
    if args.arch is not None: args.arch = E.normalize_arch(args.arch)
    args.arch_config = _parse_arch_config(args.arch_config)
    if getattr(args, 'finetune_min_steps', 0) < 0: raise UsageError('--finetune-min-steps must be >= 0')
    if args.threads < 0: raise UsageError(f'--threads must be >= 0, got {args.threads}')
    for name in ('epochs', 'pretrain_epochs', 'finetune_epochs'):
        v = getattr(args, name, None)
        if v is not None and v < 1: raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.bs < 1: raise UsageError(f'--bs must be at least 1, got {args.bs}')
    if args.max_len is not None and args.max_len < 8: raise UsageError(f'--max-len must be at least 8, got {args.max_len}')
    if not args.lr > 0: raise UsageError(f'--lr must be positive, got {args.lr}')
    if args.device.strip().lower() not in ('auto', 'cpu') and not args.device.strip().lower().startswith('cuda'):
        raise UsageError(f'--device {args.device!r}: use cpu, cuda or auto')
    if hasattr(args, 'n_values'): args.n_values = _parse_n_values(args.n_values)


def _load_data(args, synthetic: bool = False) -> E.SplitData:
    given = [x for x in (args.data and 'DATA', getattr(args, 'ucr', None) and '--ucr',
                         getattr(args, 'synthetic', False) and '--synthetic') if x] if not synthetic else []
    if not synthetic:
        if not given: raise UsageError('no data: give an .npz file, --ucr NAME or --synthetic')
        if len(given) > 1: raise UsageError(f"give only one data source, not {' and '.join(given)}")
        if not 0 < args.test_size < 1: raise UsageError(f'--test-size must be in (0, 1), got {args.test_size}')
    if synthetic or args.synthetic:
        lo, hi = args.series_len
        if args.n_train < 2 or args.n_test < 1: raise UsageError('--n-train must be >= 2 and --n-test >= 1')
        if synthetic:  # the demo's set: many unlabeled series
            if args.n_unlabeled < 0: raise UsageError('--n-unlabeled must be >= 0')
            return E.demo_data(args.n_train, args.n_unlabeled, args.n_test, min_len=lo, max_len=hi, seed=args.data_seed)
        return E.synthetic_data(args.n_train, args.n_test, min_len=lo, max_len=hi, seed=args.data_seed)
    data = E.ucr_data(args.ucr) if args.ucr else E.load_npz(args.data, test_size=args.test_size, seed=0)
    if getattr(args, 'unlabeled', None): _add_store(data, args.unlabeled)
    return data


def _add_store(data: E.SplitData, path: str) -> None:
    "The series of the store at `path` (memory-mapped views) join the unlabeled ones, named STORE[i] in messages."
    from .store import open_store_series
    try: extra = open_store_series(path)
    except (FileNotFoundError, InputError) as e: raise UsageError(f'--unlabeled {path}: {e}') from None
    n_own, own = len(data.X_unlabeled), data.name('unlabeled')
    data.X_unlabeled = list(data.X_unlabeled) + extra
    data.origin['unlabeled'] = lambda i: own(i) if i < n_own else f'{path}[{i - n_own}]'
    data.notes.append(f'{len(extra)} unlabeled series from the store {path} (pretraining only)')


def _check_series(data: E.SplitData, min_len: int = 8):
    "Every part of the data by the shared rules, each series named by its index in the user's file."
    for part, lst in (('train', data.X_train), ('test', data.X_test), ('unlabeled', data.X_unlabeled)):
        if lst: E.check_series(lst, min_len=min_len, name=data.name(part))


def _resolve_n_values(args, data: E.SplitData) -> int | None:
    "--n-values for the pretraining series: checked when given, inferred (with a clear refusal if ambiguous) on auto."
    X, name = data.X_pretrain, data.name('pretrain')
    if args.n_values == 'auto':
        return E.infer_n_values(X, name=name, require='--n-values 41', continuous='--n-values 0')
    if args.n_values is not None:
        try: E.check_series(X, n_values=args.n_values, name=name)
        except InputError as e:
            raise UsageError(f'{e} Pass --n-values 0 for continuous targets, or a larger N.') from None
    return args.n_values


def _resolve_fractions(args, y) -> tuple[float, ...]:
    import numpy as np
    if args.fractions is None:
        fr = E.DEFAULT_FRACTIONS
        keep = tuple(f for f in fr if E.n_labels(len(y), f) >= len(np.unique(y)))
        dropped = [f for f in fr if f not in keep]
        if dropped:
            _say(args, f"note: leaving out fraction(s) {', '.join(E.fmt_frac(f) for f in dropped)}: too few labels "
                       f"for {len(np.unique(y))} classes among {len(y)} labeled training series")
        return keep
    fr = _parse_fractions(args.fractions)
    for f in fr: E.label_subset(y, f, 0)  # raises when a class would have no label
    return fr


def _check_task_names(text: str | None) -> None:
    "A mistyped task name fails at once, before data are loaded or torch is imported (`tsai_ssl.task_index`)."
    toks = [t for t in str(text or '').replace(' ', ',').split(',') if t]
    if [t.lower() for t in toks] == ['all']: return
    try: check_task_names([t for t in toks if t.lower() != 'mvp'])  # mvp: tsai's own MVP, a reference method
    except InputError as e: raise UsageError(str(e)) from None


def _resolve_tasks(args) -> list[str]:
    "Task names from --tasks (imports the task registry, and with it torch: after the cheap checks)."
    from .runs import _registry
    reg = _registry()
    if args.tasks is None: return reg.task_names()
    toks = [t for t in str(args.tasks).replace(' ', ',').split(',') if t]
    if not toks: raise UsageError('--tasks: no task given')
    if [t.lower() for t in toks] == ['all']: return reg.task_names()
    return list(dict.fromkeys(E.MVP if t.lower() == E.MVP else E.normalize_task(t) for t in toks))


def _semi_text(tasks: list[str], weight: float, pseudo_threshold: float | None) -> str:
    "The header's part on semi-supervised fits: '; semi-supervised masked (weight 1, FixMatch from 0.95)' or ''."
    if not (weight > 0 and tasks): return ''
    fixmatch = f', FixMatch from {pseudo_threshold:g}' if pseudo_threshold is not None else ''
    return f"; semi-supervised {', '.join(tasks)} (weight {weight:g}{fixmatch})"


def _semi_tasks(args, tasks: list[str], default: str | None) -> list[str] | None:
    """The tasks fine-tuned semi-supervised: --semi-tasks (each among --tasks), else the command's default ones that
    are among --tasks (else the first task); None: every task."""
    own = [t for t in tasks if t != E.MVP]
    if not args.semi_tasks:
        if default is None: return None
        picked = [t for t in default.split(',') if t in own]
        return picked or own[:1]
    toks = [E.normalize_task(t) for t in str(args.semi_tasks).replace(' ', ',').split(',') if t]
    missing = [t for t in toks if t not in own]
    if missing: raise UsageError(f"--semi-tasks {', '.join(missing)} not among --tasks {', '.join(tasks)}")
    return toks


def _epochs(args, which: str, default: int) -> int:
    v = getattr(args, f'{which}_epochs', None)
    return v if v is not None else args.epochs if args.epochs is not None else default


def _run_config(args, n_values, **kw) -> E.RunConfig:
    return E.RunConfig(arch=args.arch or 'ResNetPlus', arch_config=args.arch_config, lr=args.lr, bs=args.bs,
                       max_len=args.max_len, device=args.device, n_values=n_values, verbose=not args.quiet,
                       standardize=args.standardize or 'dataset', **kw)


def _arch_text(cfg: E.RunConfig) -> str:
    return cfg.arch_name + (f' {json.dumps(cfg.arch_config)}' if cfg.arch_config else '')


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------
def cmd_compare(args, demo: bool = False) -> int:
    t_start = time.time()
    if demo:  # before anything else: what the embedded data set is
        data = _load_data(args, synthetic=True)
        print('Demo data set (tsai_ssl.datasets.make_demo_data: the class is which of a shared vocabulary of short '
              'count patterns a series uses most; 10x more unlabeled than labeled series):')
        print(E.describe_data(data).split('\n', 1)[1], flush=True)
    _check_common(args)
    seeds = _parse_seeds(args.seeds)
    if args.fractions is not None: _parse_fractions(args.fractions)  # syntax errors before loading data
    pools = _parse_fractions(args.pool_fractions, '--pool-fractions') if args.pool_fractions else ()
    _check_task_names(args.tasks)
    if not demo:
        data = _load_data(args)
        _say(args, E.describe_data(data))
    for n in data.notes: _say(args, f'note: {n}')
    _check_series(data)
    n_values = _resolve_n_values(args, data)
    fractions = _resolve_fractions(args, data.y_train)
    if not fractions: raise UsageError('no label fraction leaves every class with a label: pass --fractions')
    pe, fe = _epochs(args, 'pretrain', 10), _epochs(args, 'finetune', 10)
    d = DEMO if demo else COMPARE
    for stage in ('pretrain', 'finetune'):  # the step budget by default, the epochs when the user gives them
        if getattr(args, f'{stage}_steps') is None and args.epochs is None and getattr(args, f'{stage}_epochs') is None:
            setattr(args, f'{stage}_steps', d.get(f'{stage}_steps'))
    if args.semi_weight < 0: raise UsageError('--semi-weight must be >= 0')
    for k in ('pretrain_steps', 'finetune_steps'):
        if getattr(args, k) is not None and getattr(args, k) < 1: raise UsageError(f"--{k.replace('_', '-')} must be >= 1")
    if args.pseudo_threshold is not None and not 0 <= args.pseudo_threshold < 1:
        raise UsageError('--pseudo-threshold must be in [0, 1)')
    if args.pseudo_threshold is not None and not args.semi_weight > 0:
        raise UsageError('--pseudo-threshold adds to the semi-supervised fits: give --semi-weight too (e.g. 1)')
    cfg = _run_config(args, n_values, pretrain_epochs=pe, finetune_epochs=fe, finetune_min_steps=args.finetune_min_steps,
                      pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps, recipe=args.recipe,
                      semi_weight=args.semi_weight, pseudo_threshold=args.pseudo_threshold)
    cfg = cfg.replace(verbose=False)  # the comparison shows one progress bar, not a line per epoch
    tasks = _resolve_tasks(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = f'{n_values}-way targets' if n_values else 'continuous targets'
    semi_tasks = _semi_tasks(args, tasks, d.get('semi_tasks'))
    shown = [t for t in tasks if t != E.MVP] if semi_tasks is None else semi_tasks  # None: every task but tsai's MVP
    semi_text = _semi_text(shown, cfg.semi_weight, cfg.pseudo_threshold)
    _say(args, f"{'demo' if demo else 'compare'}: {_arch_text(cfg)}, tasks {', '.join(tasks)} ({targets}){semi_text}; fractions "
               f"{', '.join(E.fmt_frac(f) for f in fractions)}; {len(seeds)} seed(s); "
               + (f'{cfg.pretrain_steps} pretraining steps' if cfg.pretrain_steps else f'{pe} pretraining epochs') + ' + '
               + (f'{cfg.finetune_steps} fine-tuning steps' if cfg.finetune_steps else f'{fe} fine-tuning epochs'
                  + (f' (at least {args.finetune_min_steps} steps)' if args.finetune_min_steps else ''))
               + f"; lr {args.lr:g}, bs {args.bs}" + (f', training crop {args.max_len}' if args.max_len else ''))

    _quiet_libraries(args)
    import torch
    dev = E.resolve_device(args.device)
    classes = _classes(data.y_train)
    config = dict(command='demo' if demo else 'compare', data=data.source, n_train=len(data.X_train),
                  n_unlabeled=len(data.X_unlabeled), n_test=len(data.X_test), classes=classes, tasks=tasks,
                  fractions=list(fractions), seeds=list(seeds), pool_fractions=list(pools), **cfg.to_dict())
    del config['seed'], config['verbose']  # set per seed / by --quiet, not settings of the comparison
    config.update(device=str(dev), torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=f'{platform.machine()} {os.cpu_count()} cpus')
    chance = 1 / len(classes)
    done: list[dict] = []

    def partial(row):  # keep what finished if the run is interrupted
        done.append(row)
        try: E.save_results(done, out, dict(config, partial=True), plot=False, chance=chance)
        except OSError as e: _say(args, f'note: could not write partial results ({type(e).__name__}: {e})')

    rows = E.compare(data.X_train, data.y_train, data.X_test, data.y_test, X_unlabeled=data.X_unlabeled,
                     config=cfg.replace(device=dev), tasks=tasks, fractions=fractions, seeds=seeds, workdir=out,
                     pool_fractions=pools, semi_tasks=semi_tasks,
                     progress=not args.quiet, on_result=partial)
    config['wall_seconds'] = round(time.time() - t_start, 1)
    n_seeds = len(seeds)
    title = (f"{_arch_text(cfg)} on {data.source.split(' (')[0]}: test accuracy vs labels "
             f"(mean ± std, {n_seeds} seed{'s' if n_seeds > 1 else ''})")
    paths = E.save_results(rows, out, config, title=title, chance=chance)
    table, sentence = E.summarize(rows, chance=chance)
    print()
    print(table)
    print()
    print(sentence)
    print()
    curve = E.pool_curve(rows)
    if curve:
        print('accuracy (%) against the number of pretraining series:')
        for a in curve:
            std = f" ± {100 * a['std']:.1f}" if a['std'] is not None else ''
            print(f"  {E.method_label(a['method'])}, {E.fmt_frac(a['fraction'])} labels, {a['n_pretrain']} series: "
                  f"{100 * a['mean']:.1f}{std}")
        print()
    extra = ''.join(f', {paths[k]}' for k in ('probe_png', 'pool_png') if k in paths)
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['summary_csv']}, {paths['png']}{extra} "
          f"(wall time {E.hms(config['wall_seconds'])})")
    return 0


def _classes(y) -> list:
    import numpy as np
    return [c.item() if hasattr(c, 'item') else c for c in np.unique(y)]


def cmd_pretrain(args) -> int:
    _check_common(args)
    _check_task_names(args.task)
    arch = args.arch or 'ResNetPlus'
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != '.pth': raise UsageError(f'--out {out}: the weights file name must end in .pth')
    data = _load_data(args)
    _say(args, E.describe_data(data))
    for n in data.notes: _say(args, f'note: {n}')
    _check_series(data)
    n_values = _resolve_n_values(args, data)
    task = E.MVP if args.task.strip().lower() == E.MVP else E.normalize_task(args.task)
    out = out or Path('models') / f'ssl_{task}_{arch}.pth'
    cfg = _run_config(args, n_values, pretrain_epochs=args.epochs or 10, seed=args.seed)
    X = data.X_pretrain
    _quiet_libraries(args)
    _say(args, f'pretraining {_arch_text(cfg)} with the {task} task on {len(X)} series (labels ignored), '
               f'{cfg.pretrain_epochs} epochs')
    if task == E.MVP: path, info = E.pretrain_mvp(X, cfg, path=out, return_info=True)
    else: path, info = E.pretrain(X, task, cfg, path=out, return_info=True)
    loss = info['best_valid_loss']
    best = f', best validation loss {loss:.4g}' if loss is not None else ''
    print(f'saved the pretrained {_arch_text(cfg)} backbone ({task} task' + best
          + f') to {path}, its architecture and config to {path}.json')
    kwargs = ''.join(f', {k}={v!r}' for k, v in (cfg.arch_config or {}).items())
    print(f'load it into a classifier built the same way: clf = ts_learner(dls, {cfg.arch_name}{kwargs}); '
          f'clf.load({_load_name(path)!r}, strict=False, with_opt=False) or tsai_ssl.load_pretrained(clf, {str(path)!r}); '
          f'or run: tsai-ssl finetune DATA --weights {path} (it reads the architecture and config from {path}.json)')
    return 0


def _busy_cores(window: float = 0.3) -> float | None:
    """Cores busy right now: from /proc/stat over `window` seconds on Linux (the 1-minute load average lags a job
    that just ended by minutes), else the load average; None when neither is available."""
    def idle_total():
        with open('/proc/stat') as f: v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])  # idle + iowait, all but guest time
    try:
        i0, t0 = idle_total(); time.sleep(window); i1, t1 = idle_total()
        return (1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        try: return os.getloadavg()[0]
        except (AttributeError, OSError): return None


def _set_threads(args):
    """--threads N: N torch threads. 0 (auto): torch's default (one per core), lowered to the cores that are idle
    when other jobs keep the machine busy: with more threads than free cores, every parallel operation waits for a
    descheduled thread, which can make training 5-10x slower."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
        return
    n = torch.get_num_threads()
    load = _busy_cores()
    if load is None: return
    free = max(1, min(n, int(round((os.cpu_count() or n) - load))))
    if free < n:
        torch.set_num_threads(free)
        _say(args, f'note: the machine is busy ({load:.1f} of {os.cpu_count()} cores in use): using {free} torch '
                   f'thread(s) instead of {n} (set --threads to choose)')


def _load_name(path: Path) -> str:
    """What fastai's learn.load takes for `path`: it reads learn.path/learn.model_dir/<name>.pth, so a file in
    ./models is just its stem (for a Learner with the default path and model_dir); anything else an absolute path."""
    p = path.absolute()
    if p.parent == Path.cwd().absolute() / 'models': return p.stem
    return str(p.with_suffix(''))


def _arch_from_weights(args) -> None:
    """--arch / --arch-config from the weights' sidecar when not given; `UsageError` when given and different."""
    rec_arch, rec_cfg = E.recorded_arch(args.weights)
    if rec_cfg is None:  # weights from elsewhere: load_pretrained still checks every tensor
        args.arch = args.arch or 'ResNetPlus'
        return
    given = [f'--arch {args.arch}'] if args.arch is not None and args.arch != rec_arch else []
    if args.arch_config is not None and args.arch_config != rec_cfg:
        given.append(f"--arch-config '{json.dumps(args.arch_config)}'")
    if given:
        raise UsageError(f"{' and '.join(given)} conflict with {args.weights}, pretrained with {rec_arch} "
                         f"{json.dumps(rec_cfg)}: leave them out to use the recorded architecture and config")
    args.arch, args.arch_config = rec_arch, rec_cfg or None
    args.standardize = args.standardize or E.recorded_standardize(args.weights)


def cmd_finetune(args) -> int:
    _check_common(args)
    fr = _parse_fractions(args.fraction)
    if len(fr) != 1: raise UsageError('--fraction takes one value')
    if args.weights is not None:
        if not Path(args.weights).exists(): raise UsageError(f'weights file not found: {args.weights}')
        _arch_from_weights(args)
    data = _load_data(args)
    _say(args, E.describe_data(data))
    for n in data.notes: _say(args, f'note: {n}')
    _check_series(data)
    idx = E.label_subset(data.y_train, fr[0], args.seed)
    cfg = _run_config(args, None, finetune_epochs=args.epochs or 10, seed=args.seed)
    _quiet_libraries(args)
    src = f'pretrained weights {args.weights}' if args.weights else 'scratch'
    _say(args, f'fine-tuning {_arch_text(cfg)} from {src} on {len(idx)} labeled series ({E.fmt_frac(fr[0])}), '
               f'{cfg.finetune_epochs} epochs')
    res = E.finetune([data.X_train[i] for i in idx], data.y_train[idx], data.X_test, data.y_test, cfg,
                     weights=args.weights, export=args.export)
    print(f'test accuracy: {100 * res:.2f}% ({len(data.X_test)} test series; {_arch_text(cfg)} from {src}, '
          f'{len(idx)} labeled series)')
    if args.export: print(f'exported the classifier to {Path(args.export).absolute()} (fastai.learner.load_learner)')
    return 0


def cmd_tasks(args) -> int:
    "Every registered task: name, aliases, label, options with defaults."
    import inspect

    from .runs import _registry
    reg = _registry()
    for name in reg.task_names():
        cls = reg.get_task(name)
        opts = ', '.join(k if v is inspect.Parameter.empty else f'{k}={v!r}' for k, v in reg.task_options(name).items())
        aliases = ', '.join(cls.aliases) or '-'
        print(f'{name}: {reg.task_label(name)} ({cls.__name__}); aliases: {aliases}')
        width = max(40, shutil.get_terminal_size().columns - 2)
        print(textwrap.fill(f'options: {opts}', width=width, initial_indent='  ', subsequent_indent='    '))
    return 0


def _quiet_libraries(args=None):
    if args is not None: _set_threads(args)
    warnings.filterwarnings('ignore', category=FutureWarning)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    warnings.filterwarnings('ignore', message='Initializing zero-element tensors')
    warnings.filterwarnings('ignore', message='Your generator is empty')


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------
def cmd_store(args) -> int:
    "tsai-ssl store build: a folder of series files into a RaggedStore (numpy only, no torch)."
    import numpy as np

    from .store import build_store, store_summary
    try: dtype = np.dtype(args.dtype)
    except TypeError: raise UsageError(f'--dtype {args.dtype!r} is not a numpy dtype (e.g. uint8, float32)') from None
    n_values = _parse_n_values(args.n_values) if args.n_values is not None else None
    if n_values == 'auto': raise UsageError('--n-values: give N (e.g. 41) or leave it out')
    if args.append and args.overwrite: raise UsageError('give --append or --overwrite, not both')
    try:
        build_store(args.src, args.dest, dtype=dtype, n_values=n_values, append=args.append, overwrite=args.overwrite,
                    progress=not args.quiet)
    except FileExistsError: raise UsageError(f'{args.dest} already holds a store: pass --append to add to it or '
                                             '--overwrite to replace it') from None
    except FileNotFoundError: raise UsageError(f'--append: there is no store at {args.dest} to add to') from None
    print(store_summary(args.dest))
    return 0


COMMANDS = dict(compare=cmd_compare, demo=lambda a: cmd_compare(a, demo=True), pretrain=cmd_pretrain,
                finetune=cmd_finetune, tasks=cmd_tasks, store=cmd_store)


def main(argv=None) -> int:
    "Run the command line; returns the exit status (0 ok, 2 bad input, 1 a failure (bug), 130 interrupted)."
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own usage error (status 2, message already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    cmd = f'{PROG} {args.command}'
    debug = os.environ.get('TSAI_SSL_DEBUG', '') not in ('', '0')
    try:
        return COMMANDS[args.command](args)
    except InputError as e:  # the user's data or settings: one line, nothing to debug
        if debug: raise
        _newline_after_bar()
        print(f'{cmd}: error: {_one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _newline_after_bar()
        print(f'{cmd}: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # anything else is a bug: the traceback says where
        _newline_after_bar()
        traceback.print_exc()
        print(f'{cmd}: failed: {type(e).__name__}: {_one_line(e)} (a bug, not your input: please report it with '
              'the traceback above)', file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return ' '.join(msg.split())


def _newline_after_bar():
    if sys.stderr.isatty(): sys.stderr.write('\n')


if __name__ == '__main__':
    sys.exit(main())
