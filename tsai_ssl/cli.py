"""The ``tsai-ssl`` command: does self-supervised pretraining help my classifier, and at which amount of labels?

    tsai-ssl demo                                   # the whole comparison on the embedded synthetic data (< 5 min on 2 CPU cores)
    tsai-ssl compare data.npz --tasks masked,next --fractions 1%,5%,100% --seeds 3 --out runs/mine
    tsai-ssl compare --ucr GunPoint --epochs 20
    tsai-ssl pretrain data.npz --task masked --out models/ssl_masked.pth
    tsai-ssl finetune data.npz --weights models/ssl_masked.pth --fraction 5% --export clf.pkl

Input errors (missing file, wrong keys, labels of the wrong length, a fraction that leaves a class without a
label, an unknown architecture or task, ...) print one message on stderr and exit with status 2.
Set ``TSAI_SSL_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

from . import experiment as E

__all__ = ['main', 'build_parser']

PROG = 'tsai-ssl'
DATA_HELP = ("DATA: an .npz file with X ((N, C, L) array, (N, L) array, or an object array of variable-length "
             "(L,) / (C, L) series), y (N labels; -1 = unlabeled, used for pretraining only) and optionally split "
             "(per series 'train'/'test' or 0/1) or X_test + y_test. Without a split, a stratified --test-size share of "
             "the labeled series is held out for testing.")

# demo settings: chosen so `tsai-ssl demo` finishes within 5 minutes on 2 CPU cores (see README)
DEMO = dict(n_train=128, n_test=100, series_len=(512, 1024), max_len=512, bs=16, pretrain_epochs=8,
            finetune_epochs=8, finetune_min_steps=50, fractions='5%,20%,100%', seeds='2', lr=3e-3,
            arch_config='{"nf": 32}', out='runs/demo')


class UsageError(Exception):
    "Bad command-line input (exit status 2)."


# ----------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    "Shows an option's default unless it is empty or its help already says what the default is."
    def _get_help_string(self, action):
        h = action.help or ''
        d = action.default
        if 'default' in h or d is None or d is False or d == '' or d is argparse.SUPPRESS or not action.option_strings:
            return h
        d = ' '.join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else '%(default)s'
        return f'{h} (default: {d})'


def _parse_fractions(text: str) -> tuple[float, ...]:
    out = []
    for tok in str(text).replace(' ', ',').split(','):
        if not tok: continue
        try: f = float(tok[:-1]) / 100 if tok.endswith('%') else float(tok)
        except ValueError: raise UsageError(f"--fractions: {tok!r} is not a fraction (use e.g. 0.05 or 5%)") from None
        if not tok.endswith('%') and f > 1:
            raise UsageError(f'--fractions: {tok} is above 1; write {tok}% for a percentage or a fraction like 0.05')
        out.append(f)
    try: return E.check_fractions(out)
    except E.ExperimentError as e: raise UsageError(f'--fractions: {e}') from None


def _parse_seeds(text: str) -> tuple[int, ...]:
    toks = [t for t in str(text).replace(' ', ',').split(',') if t]
    try: vals = [int(t) for t in toks]
    except ValueError: raise UsageError(f'--seeds: {text!r}: give a count (3 = seeds 0,1,2) or a list like 0,5,7') from None
    if len(vals) == 1:
        if vals[0] < 1: raise UsageError('--seeds: the number of seeds must be at least 1')
        return tuple(range(vals[0]))
    if not vals: raise UsageError('--seeds: no seeds given')
    return tuple(dict.fromkeys(vals))


def _parse_tasks(text: str) -> list[str]:
    toks = [t for t in str(text).replace(' ', ',').split(',') if t]
    if not toks: raise UsageError('--tasks: no task given')
    if [t.lower() for t in toks] == ['all']: return list(E.TASKS)
    try: return list(dict.fromkeys(E.normalize_task(t) for t in toks))
    except E.ExperimentError as e: raise UsageError(str(e)) from None


def _add_data_args(p: argparse.ArgumentParser, synthetic_defaults: dict | None = None):
    g = p.add_argument_group('data (give DATA, --ucr or --synthetic)')
    g.add_argument('data', nargs='?', metavar='DATA', help='.npz file (see the description above)')
    g.add_argument('--ucr', metavar='NAME', help="a UCR/UEA data set shipped with sktime (e.g. GunPoint, ArrowHead, "
                   "ItalyPowerDemand, BasicMotions, PLAID, OSULeaf, JapaneseVowels, ACSF1), with its own test split")
    g.add_argument('--synthetic', action='store_true', help='the embedded synthetic data set (integer counts 0..40, 4 classes)')
    g.add_argument('--test-size', type=float, default=0.25,
                   help='share of labeled series held out for testing when DATA has no split')
    _add_synthetic_args(p, synthetic_defaults or {})


def _add_synthetic_args(p, d):
    g = p.add_argument_group('synthetic data (--synthetic, demo)')
    g.add_argument('--n-train', type=int, default=d.get('n_train', 600), help='training series')
    g.add_argument('--n-test', type=int, default=d.get('n_test', 600), help='test series')
    g.add_argument('--series-len', type=int, nargs=2, metavar=('MIN', 'MAX'), default=list(d.get('series_len', (512, 30720))),
                   help='range of series lengths (log-uniform)')
    g.add_argument('--data-seed', type=int, default=0, help='seed of the generated data')


def _add_train_args(p, d: dict, epochs_help: str):
    g = p.add_argument_group('training')
    g.add_argument('--arch', default='ResNetPlus', help=f"classifier: {', '.join(E.ARCHS)}")
    g.add_argument('--arch-config', default=d.get('arch_config'), metavar='JSON',
                   help='keyword arguments of the architecture as JSON, e.g. \'{"nf": 32}\' (same for every fit)')
    g.add_argument('--epochs', type=int, default=None, help=epochs_help)
    g.add_argument('--lr', type=float, default=d.get('lr', 1e-3), help='learning rate (fit_one_cycle), same for every fit')
    g.add_argument('--bs', type=int, default=d.get('bs', 64), help='batch size')
    g.add_argument('--max-len', type=int, default=d.get('max_len'),
                   help='training crop: longer series are cut to a random window of this length (test: full length)')
    g.add_argument('--device', default='auto', help='cpu, cuda or auto (cuda runs in mixed precision)')
    g.add_argument('--threads', type=int, default=0,
                   help='CPU threads for torch; 0: one per core, fewer when other jobs keep cores busy')
    g.add_argument('--quiet', '-q', action='store_true', help='no progress output')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--version', action='version', version=f'%(prog)s {_version()}')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')

    def comparison_args(sp, d):
        g = sp.add_argument_group('comparison')
        g.add_argument('--tasks', default=None,
                       help=f"comma-separated pretext tasks: {', '.join(E.TASKS)} or all (default: every available task)")
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
        g.add_argument('--out', default=d.get('out', 'runs/compare'),
                       help='folder for results.json, results.csv, summary.csv, accuracy.png and weights/')

    sp = sub.add_parser('compare', formatter_class=_Formatter, help='pretraining vs scratch over label fractions and seeds',
                        description='Pretrain each task on all training series (labels ignored, plus unlabeled extras), '
                        'fine-tune on label fractions, train the same classifier from scratch with the same budget, over '
                        'several seeds, and evaluate on the test split. Prints a table and a sentence; writes JSON, CSV '
                        'and a PNG.\n\n' + DATA_HELP)
    _add_data_args(sp)
    _add_train_args(sp, {}, 'pretraining and fine-tuning epochs (default 10)')
    comparison_args(sp, {})

    sp = sub.add_parser('demo', formatter_class=_Formatter, help='compare on the embedded synthetic data (< 5 min on 2 CPUs)',
                        description='Runs `compare` on the embedded synthetic data set with small settings that finish '
                        'within about 5 minutes on 2 CPU cores. Every option of `compare` can be changed.')
    _add_synthetic_args(sp, DEMO)
    _add_train_args(sp, DEMO, f"pretraining and fine-tuning epochs (default {DEMO['pretrain_epochs']})")
    comparison_args(sp, DEMO)

    sp = sub.add_parser('pretrain', formatter_class=_Formatter, help='pretrain one task and write the backbone weights',
                        description='Pretrain one pretext task on the training series of DATA (labels are ignored; '
                        'test series are left out) and write a .pth file that learn.load(name, strict=False), '
                        "ts_learner(..., pretrained=True, weights_path=...) and load_pretrained accept.\n\n" + DATA_HELP)
    _add_data_args(sp)
    _add_train_args(sp, {}, 'pretraining epochs (default 10)')
    sp.add_argument('--task', default='masked', help=f"pretext task: {', '.join(E.TASKS)}")
    sp.add_argument('--seed', type=int, default=0)
    sp.add_argument('--out', default=None, help='weights file (default models/ssl_<task>_<arch>.pth)')

    sp = sub.add_parser('finetune', formatter_class=_Formatter, help='fine-tune a classifier on a label fraction, print test accuracy',
                        description='Train the classifier on a stratified label fraction of the training series of DATA, '
                        'from pretrained weights (--weights, loaded and checked with load_pretrained) or from scratch, '
                        'and print its accuracy on the test series.\n\n' + DATA_HELP)
    _add_data_args(sp)
    _add_train_args(sp, {}, 'fine-tuning epochs (default 10)')
    sp.add_argument('--weights', default=None, help='pretrained .pth file (from `tsai-ssl pretrain`); none = from scratch')
    sp.add_argument('--fraction', default='100%', help='labeled fraction of the training series, e.g. 5%% or 0.05')
    sp.add_argument('--seed', type=int, default=0)
    sp.add_argument('--export', default=None, metavar='PKL', help='write the trained classifier with learn.export')
    return p


def _version() -> str:
    try:
        from importlib.metadata import version
        return version('tsai-ssl')
    except Exception:
        return 'unknown'


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------
def _say(args, *msg):
    if not getattr(args, 'quiet', False): print(*msg, file=sys.stderr, flush=True)


def _check_common(args):
    "Input checks that need no torch: architecture, sizes, files."
    args.arch = E.normalize_arch(args.arch)
    cfg = getattr(args, 'arch_config', None)
    if isinstance(cfg, str):
        try: cfg = json.loads(cfg)
        except ValueError as e: raise UsageError(f'--arch-config {cfg!r} is not valid JSON ({e})') from None
        if not isinstance(cfg, dict): raise UsageError(f'--arch-config must be a JSON object like {{"nf": 32}}, got {cfg!r}')
    args.arch_config = cfg or None
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
        return E.synthetic_data(args.n_train, args.n_test, min_len=lo, max_len=hi, seed=args.data_seed)
    if args.ucr: return E.ucr_data(args.ucr)
    return E.load_npz(args.data, test_size=args.test_size, seed=0)


def _check_series(data: E.SplitData, min_len: int = 8):
    import numpy as np
    for name, lst in (('training', data.X_train), ('test', data.X_test), ('unlabeled', data.X_unlabeled)):
        for i, x in enumerate(lst):
            if x.shape[-1] < min_len:
                raise E.ExperimentError(f'{name} series {i} has length {x.shape[-1]}: series need at least {min_len} steps')
            if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                raise E.ExperimentError(f'{name} series {i} has NaN or infinite values (NaN is allowed only as trailing padding)')


def _resolve_tasks(args) -> list[str]:
    if args.tasks is None:
        tasks = E.available_tasks()
        missing = [t for t in E.TASKS if t not in tasks]
        if missing: _say(args, f"note: task(s) {', '.join(missing)} not available in this installation: skipped")
        if not tasks: raise UsageError('no pretext task is available in this installation')
        return tasks
    tasks = _parse_tasks(args.tasks)
    for t in tasks:
        if not E.task_available(t): E.get_task(t)  # raises "task X is not available"
    return tasks


def _resolve_fractions(args, y) -> tuple[float, ...]:
    import numpy as np
    if args.fractions is None:
        fr = E.DEFAULT_FRACTIONS
        keep = tuple(f for f in fr if E._n_labels(len(y), f) >= len(np.unique(y)))
        dropped = [f for f in fr if f not in keep]
        if dropped:
            _say(args, f"note: leaving out fraction(s) {', '.join(E._fmt_frac(f) for f in dropped)}: too few labels "
                       f"for {len(np.unique(y))} classes among {len(y)} labeled training series")
        return keep
    fr = _parse_fractions(args.fractions)
    for f in fr: E.label_subset(y, f, 0)  # raises when a class would have no label
    return fr


def _epochs(args, which: str, default: int) -> int:
    v = getattr(args, f'{which}_epochs', None)
    return v if v is not None else args.epochs if args.epochs is not None else default


def cmd_compare(args, demo: bool = False) -> int:
    t_start = time.time()
    if demo:  # before anything else: what the embedded data set is
        data = _load_data(args, synthetic=True)
        print('Embedded synthetic data set (tsai_ssl.datasets.make_synthetic_split):')
        print(E.describe_data(data).split('\n', 1)[1], flush=True)
    _check_common(args)
    seeds = _parse_seeds(args.seeds)
    if args.fractions is not None: _parse_fractions(args.fractions)  # syntax errors before loading data
    tasks = _resolve_tasks(args)
    if not demo:
        data = _load_data(args)
        _say(args, E.describe_data(data))
    for n in data.notes: _say(args, f'note: {n}')
    _check_series(data)
    fractions = _resolve_fractions(args, data.y_train)
    if not fractions: raise UsageError('no label fraction leaves every class with a label: pass --fractions')
    default_ep = DEMO['pretrain_epochs'] if demo else 10
    pe, fe = _epochs(args, 'pretrain', default_ep), _epochs(args, 'finetune', DEMO['finetune_epochs'] if demo else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch_txt = args.arch + (f' {json.dumps(args.arch_config)}' if args.arch_config else '')
    _say(args, f"{'demo' if demo else 'compare'}: {arch_txt}, tasks {', '.join(tasks)}; fractions "
               f"{', '.join(E._fmt_frac(f) for f in fractions)}; {len(seeds)} seed(s); {pe} pretraining + {fe} fine-tuning "
               f"epochs" + (f' (at least {args.finetune_min_steps} steps)' if args.finetune_min_steps else '')
               + f"; lr {args.lr:g}, bs {args.bs}" + (f', training crop {args.max_len}' if args.max_len else ''))

    _quiet_libraries(args)
    import torch
    dev = E.resolve_device(args.device)
    config = dict(command='demo' if demo else 'compare', data=data.source, n_train=len(data.X_train),
                  n_unlabeled=len(data.X_unlabeled), n_test=len(data.X_test), classes=_classes(data.y_train),
                  arch=args.arch, arch_config=args.arch_config or {}, tasks=tasks, fractions=list(fractions), seeds=list(seeds), pretrain_epochs=pe,
                  finetune_epochs=fe, finetune_min_steps=args.finetune_min_steps, lr=args.lr, bs=args.bs, max_len=args.max_len, device=str(dev),
                  vocab=E.infer_vocab(data.X_pretrain), torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=f'{platform.machine()} {os.cpu_count()} cpus')

    done: list[dict] = []

    def partial(row):  # keep what finished if the run is interrupted
        done.append(row)
        try: E.save_results(done, out, dict(config, partial=True), plot=False)
        except Exception as e: _say(args, f'note: could not write partial results ({type(e).__name__}: {e})')

    rows = E.compare(data.X_train, data.y_train, data.X_test, data.y_test, X_unlabeled=data.X_unlabeled, tasks=tasks,
                     fractions=fractions, seeds=seeds, arch=args.arch, pretrain_epochs=pe, finetune_epochs=fe, lr=args.lr,
                     bs=args.bs, max_len=args.max_len, device=dev, workdir=out, progress=not args.quiet, on_result=partial,
                     arch_config=args.arch_config, finetune_min_steps=args.finetune_min_steps)
    config['wall_seconds'] = round(time.time() - t_start, 1)
    n_seeds = len(seeds)
    title = (f"{arch_txt} on {data.source.split(' (')[0]}: test accuracy vs labels "
             f"(mean ± std, {n_seeds} seed{'s' if n_seeds > 1 else ''})")
    paths = E.save_results(rows, out, config, title=title, chance=1 / len(config['classes']))
    table, sentence = E.summarize(rows)
    print()
    print(table)
    print()
    print(sentence)
    print()
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['summary_csv']}, {paths['png']} "
          f"(wall time {E._hms(config['wall_seconds'])})")
    return 0


def _classes(y) -> list:
    import numpy as np
    return [c.item() if hasattr(c, 'item') else c for c in np.unique(y)]


def cmd_pretrain(args) -> int:
    _check_common(args)
    try: task = E.normalize_task(args.task)
    except E.ExperimentError as e: raise UsageError(str(e)) from None
    if not E.task_available(task): E.get_task(task)
    out = Path(args.out) if args.out else Path('models') / f'ssl_{task}_{args.arch}.pth'
    if out.suffix != '.pth': raise UsageError(f'--out {out}: the weights file name must end in .pth')
    data = _load_data(args)
    _say(args, E.describe_data(data))
    for n in data.notes: _say(args, f'note: {n}')
    _check_series(data)
    X = data.X_pretrain
    _quiet_libraries(args)
    epochs = args.epochs or 10
    _say(args, f'pretraining {args.arch} with the {task} task on {len(X)} series (labels ignored), {epochs} epochs')
    path, info = E.pretrain(X, task, args.arch, epochs=epochs, lr=args.lr, bs=args.bs, max_len=args.max_len,
                            seed=args.seed, path=out, device=args.device, verbose=not args.quiet, return_info=True,
                            arch_config=args.arch_config)
    loss = info['best_valid_loss']
    print(f'saved the pretrained {args.arch} backbone ({task} task' + (f', best validation loss {loss:.4g}' if loss is not None else '')
          + f') to {path}')
    print(f"load it into a {args.arch} classifier with clf.load({_load_name(path)!r}, strict=False) "
          f"or tsai_ssl.load_pretrained(clf, {str(path)!r}), or run: tsai-ssl finetune DATA --weights {path} --arch {args.arch}")
    return 0


def _set_threads(args):
    """--threads N: N torch threads. 0 (auto): torch's default (one per core), lowered to the cores that are idle
    when other jobs keep the machine busy: with more threads than free cores, every parallel operation waits for a
    descheduled thread, which can make training 5-10x slower."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
        return
    n = torch.get_num_threads()
    try: load = os.getloadavg()[0]
    except (AttributeError, OSError): return
    free = max(1, min(n, int(round((os.cpu_count() or n) - load))))
    if free < n:
        torch.set_num_threads(free)
        _say(args, f'note: the machine is busy (load {load:.1f} on {os.cpu_count()} cores): using {free} torch '
                   f'thread(s) instead of {n} (set --threads to choose)')


def _load_name(path: Path) -> str:
    """What fastai's ``learn.load`` takes for `path`: it reads ``learn.path/learn.model_dir/<name>.pth``, so a file in
    ./models is just its stem (for a Learner with the default path and model_dir); anything else an absolute path."""
    p = path.absolute()
    if p.parent == Path.cwd().absolute() / 'models': return p.stem
    return str(p.with_suffix(''))


def cmd_finetune(args) -> int:
    _check_common(args)
    fr = _parse_fractions(args.fraction)
    if len(fr) != 1: raise UsageError('--fraction takes one value')
    if args.weights is not None and not Path(args.weights).exists():
        raise UsageError(f'weights file not found: {args.weights}')
    data = _load_data(args)
    _say(args, E.describe_data(data))
    for n in data.notes: _say(args, f'note: {n}')
    _check_series(data)
    idx = E.label_subset(data.y_train, fr[0], args.seed)
    _quiet_libraries(args)
    epochs = args.epochs or 10
    src = f'pretrained weights {args.weights}' if args.weights else 'scratch'
    _say(args, f'fine-tuning {args.arch} from {src} on {len(idx)} labeled series ({E._fmt_frac(fr[0])}), {epochs} epochs')
    res = E.finetune([data.X_train[i] for i in idx], data.y_train[idx], data.X_test, data.y_test, arch=args.arch,
                     weights=args.weights, epochs=epochs, lr=args.lr, bs=args.bs, max_len=args.max_len, seed=args.seed,
                     device=args.device, export=args.export, verbose=not args.quiet, arch_config=args.arch_config)
    print(f'test accuracy: {100 * res:.2f}% ({len(data.X_test)} test series; {args.arch} from {src}, '
          f'{len(idx)} labeled series)')
    if args.export: print(f'exported the classifier to {Path(args.export).absolute()} (fastai.learner.load_learner)')
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
def main(argv=None) -> int:
    "Run the command line; returns the exit status (0 ok, 2 bad input, 1 other failure, 130 interrupted)."
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own usage error (status 2, message already printed)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        return code
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    cmd = f'{PROG} {args.command}'
    debug = os.environ.get('TSAI_SSL_DEBUG', '') not in ('', '0')
    try:
        if args.command == 'compare': return cmd_compare(args)
        if args.command == 'demo': return cmd_compare(args, demo=True)
        if args.command == 'pretrain': return cmd_pretrain(args)
        if args.command == 'finetune': return cmd_finetune(args)
        parser.print_help(sys.stderr)
        return 2
    except (UsageError, E.ExperimentError, ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        if debug: raise
        _newline_after_bar()
        print(f'{cmd}: error: {_one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _newline_after_bar()
        print(f'{cmd}: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line, the traceback on request
        if debug: raise
        _newline_after_bar()
        print(f'{cmd}: failed: {type(e).__name__}: {_one_line(e)} (set TSAI_SSL_DEBUG=1 for the traceback)', file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError): msg = f'missing key {msg}'
    return ' '.join(msg.split())


def _newline_after_bar():
    if sys.stderr.isatty(): sys.stderr.write('\n')


if __name__ == '__main__':
    sys.exit(main())
