"""Running the experiment: pretrain one task, fine-tune (or train from scratch) and evaluate a classifier, and
`compare` them over label fractions and seeds. Every fit takes its settings from one `RunConfig`.

    cfg = RunConfig(pretrain_epochs=5, finetune_epochs=10, bs=32)
    w = pretrain(X_unlabeled, 'masked', cfg)                 # -> models/ssl_masked_ResNetPlus.pth (+ .json sidecar)
    acc = finetune(X, y, X_test, y_test, cfg, weights=w)     # the same architecture, loaded and verified
    rows = compare(X, y, X_test, y_test, config=cfg, tasks=('masked', 'next'), fractions=(0.05, 1.0))

Only numpy is imported at module level; torch, fastai, tsai and the task registry are imported by the functions
that train, so checking inputs stays fast.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import TRANSFORMER_ARCHS, RunConfig, get_arch, recorded_arch, recorded_standardize, resolve_device
from .errors import InputError
from .labels import DEFAULT_FRACTIONS, check_fractions, fmt_frac, label_subset
from .progress import Progress, hms, tick_callback
from .series import as_series, infer_n_values

__all__ = ['SCRATCH', 'MVP', 'normalize_task', 'pretrain', 'pretrain_mvp', 'finetune', 'evaluate', 'epochs_for_steps',
           'seconds_per_unit', 'compare']

SCRATCH = 'scratch'
MVP = 'mvp'  # tsai's own masked value prediction (`tsai.callback.MVP`): a reference method in `compare`, not a task
_STEPS_PER_BATCH = 2 ** 17  # cap on bs * length for full-length (uncropped) validation/test batches
_SEMI_COST = 2.  # a semi-supervised step runs a labeled and an unlabeled batch: about two steps' work


def _registry():
    "The task registry (imports torch, fastai and every shipped task: only when a task is needed)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # tsai's model modules call the deprecated torch.jit.script
        from .tasks import registry
    return registry


def normalize_task(name) -> str:
    "Canonical name of a registered task (case-insensitive, aliases too, or its class); `InputError` listing the tasks."
    reg = _registry()
    cls = reg.get_task(name)
    # the registry's own key (a class attribute named `name` would clash with fastai's Callback.name)
    return next((n for n in reg.task_names() if reg.get_task(n) is cls), cls.__name__)


def _config(config, overrides: dict, epochs_field: str) -> RunConfig:
    """`config` (a RunConfig, None for the defaults, or an architecture name: the old positional `arch`) with
    keyword overrides; ``epochs=`` means this stage's epochs."""
    if config is None or isinstance(config, str) or isinstance(config, type):
        overrides = dict(overrides, arch=config) if config is not None else dict(overrides)
        config = RunConfig()
    elif not isinstance(config, RunConfig):
        raise InputError(f'config must be a RunConfig, got {type(config).__name__}')
    overrides = dict(overrides)
    if 'epochs' in overrides: overrides[epochs_field] = overrides.pop('epochs')
    if 'min_steps' in overrides: overrides['finetune_min_steps'] = overrides.pop('min_steps')
    return config.replace(**overrides) if overrides else config


# ----------------------------------------------------------------------------------------------------
# Pieces of a fit
# ----------------------------------------------------------------------------------------------------
def _eval_bs(series: list, bs: int) -> int:
    L = max(x.shape[-1] for x in series) if series else 1
    return int(max(1, min(bs, _STEPS_PER_BATCH // max(L, 1))))


def _drop_last(n: int, bs: int) -> bool:
    "A last batch of one series breaks BatchNorm in training: drop it."
    return n > bs and n % bs == 1


def _quiet(learn):
    "No fastai progress bars or tables (verbose fits log one line per epoch to stderr instead, see `tick_callback`)."
    stack = contextlib.ExitStack()
    stack.enter_context(learn.no_bar()); stack.enter_context(learn.no_logging())
    return stack


def transformer_seq_len(cfg: RunConfig) -> int | None:
    """The ``seq_len`` of a Transformer architecture (`TRANSFORMER_ARCHS`), from ``cfg.arch_config``; None for CNNs.
    A Transformer takes a fixed number of steps, and pretrained weights load only into one built for the same
    seq_len, so it must be given; `InputError` saying how when it is not."""
    if cfg.arch_name not in TRANSFORMER_ARCHS: return None
    n = (cfg.arch_config or {}).get('seq_len')
    if not isinstance(n, int) or n < 1:
        raise InputError(f"{cfg.arch_name} takes a fixed number of steps: give it as arch_config seq_len, at least the "
                         "longest series it will see (e.g. --arch-config '{\"seq_len\": 4096}'); max_seq_len "
                         "(default 512) bounds its attention positions: longer inputs are embedded in patches.")
    return n


def _check_fits(cfg: RunConfig, series, what: str) -> None:
    """`InputError` naming the first series longer than a Transformer's seq_len (validation, test and new series are
    never cropped, so the training crop ``max_len`` does not help)."""
    n = transformer_seq_len(cfg)
    if n is None: return
    for i, x in enumerate(series):
        if x.shape[-1] > n:
            raise InputError(f'{what}[{i}] has {x.shape[-1]} steps, more than the seq_len={n} of {cfg.arch_name}: build it '
                             f"with a larger seq_len (--arch-config '{{\"seq_len\": {x.shape[-1]}}}'; validation and "
                             'test series are never cropped).')


def _make_learner(dls, cfg: RunConfig, device, metrics=None, cbs=None, pad_input: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        from tsai.learner import ts_learner
        arch = get_arch(cfg.arch)
    if transformer_seq_len(cfg) is not None and pad_input:  # variable-length batches padded to its seq_len, masked
        from .padding import IgnorePadding
        cbs = list(cbs or []) + [IgnorePadding()]
    try:
        learn = ts_learner(dls, arch, metrics=metrics, cbs=cbs, seed=cfg.seed, **(cfg.arch_config or {}))
    except TypeError as e:
        if cfg.arch_config and 'argument' in str(e):
            raise InputError(f'{cfg.arch_name} does not accept arch_config {cfg.arch_config}: {e}') from None
        raise
    if device.type == 'cuda': learn.to_fp16()
    return learn


def _standardize(cfg: RunConfig):
    "The batch transform of every fit of a run (``cfg.standardize``)."
    if cfg.standardize == 'series':
        from .standardize import SeriesStandardize
        return SeriesStandardize()
    from tsai.data.preprocessing import TSStandardize
    return TSStandardize()


def _units(series, max_len: int | None) -> float:
    "Work units of one epoch over `series`: steps seen (after the training crop)."
    L = np.array([x.shape[-1] for x in series])
    return float(np.minimum(L, max_len).sum() if max_len else L.sum())


def _crop(max_len: int | None, window: object = None) -> int | None:
    """The longest stretch of a series one step works on: the training crop, or a task's own cut of long series
    (the two-view tasks' ``window``; TS2Vec's default 1024) when that is shorter."""
    w = window if isinstance(window, int) and not isinstance(window, bool) else None
    return min(max_len, w) if max_len and w else (max_len or w)


def _eval_units(X_test) -> float:
    return float(sum(x.shape[-1] for x in X_test)) / 3  # forward only: about a third of a training step


def seconds_per_unit(cfg: RunConfig, c_in: int, c_out: int, length: int, device=None, n_steps: int = 3) -> float:
    """Seconds one work unit (one series-step of training) costs here: a few timed optimizer steps of the classifier
    on a random batch of ``cfg.bs`` series of `length` steps (one untimed step first). For plans and ETAs only."""
    import torch
    from tsai.models.utils import build_ts_model
    dev = resolve_device(cfg.device if device is None else device)
    kw = dict(cfg.arch_config or {})
    run_len = kw.pop('seq_len', length)  # a Transformer classifier runs every batch padded to its seq_len
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_ts_model(get_arch(cfg.arch), c_in=c_in, c_out=c_out, seq_len=run_len, device=dev, **kw)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(cfg.bs, c_in, run_len, device=dev)
    y = torch.randint(0, c_out, (cfg.bs,), device=dev)
    times = []
    for _ in range(n_steps + 1):
        t0 = time.time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if dev.type == 'cuda': torch.cuda.synchronize()
        times.append(time.time() - t0)
    return float(np.median(times[1:])) / (cfg.bs * length)  # per real step of a `length`-step series


def epochs_for_steps(n_labeled: int, epochs: int, bs: int, min_steps: int = 0) -> int:
    "`epochs`, raised so that training takes at least `min_steps` optimizer steps (few labels: few batches per epoch)."
    return RunConfig(finetune_epochs=epochs, bs=bs, finetune_min_steps=min_steps).epochs('finetune', n_labeled)


def _record_arch(paths, cfg: RunConfig) -> None:
    """Add the architecture and its config to each weights file's JSON sidecar (the task writes the sidecar with
    the backbone's width only; fine-tuning needs the config to rebuild the same model)."""
    for p in paths:
        side = Path(p).with_name(Path(p).name + '.json')
        try: meta = json.loads(side.read_text()) if side.exists() else {}
        except ValueError: meta = {}
        meta.update(arch=cfg.arch_name, arch_config=cfg.arch_config or {}, standardize=cfg.standardize)
        tmp = side.with_name(side.name + '.tmp')
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, side)


# ----------------------------------------------------------------------------------------------------
# Pretraining, fine-tuning, evaluation
# ----------------------------------------------------------------------------------------------------
def pretrain(X, task: str = 'masked', config: RunConfig | None = None, *, path: str | os.PathLike | None = None,
             task_kwargs: dict | None = None, probe: tuple | None = None, progress: Progress | None = None,
             return_info: bool = False, **overrides):
    """Pretrain ``config.arch`` with one pretext task on the series `X` (labels are not used) and write the backbone.

    About ``config.valid_pct`` of the series (at least one, when there are 10 or more) are held out to keep the
    epoch with the lowest validation loss. ``n_values='auto'``: 41 when all values are integers 0..40, None for
    real values. Returns the path of the ``.pth`` file; its ``.json`` sidecar records the task, the architecture and
    its config (`finetune` checks them). ``learn.load(name, strict=False, with_opt=False)`` and
    `tsai_ssl.load_pretrained` accept the file. With ``return_info=True`` also a dict (valid loss, seconds).
    ``task_kwargs``: options of the task (`tsai_ssl.tasks.registry.task_options`); an unknown one raises
    `InputError` naming the accepted ones. ``probe=(X_labeled, y_labeled)``: a `LinearProbe` (cross-validated on
    those series) about five times during the fit; ``info['probe_curve']`` is then ``[[epoch, accuracy], ...]``, which
    shows whether the representation was still improving when pretraining stopped. It only reports: the kept weights
    are still the lowest validation loss's. Keyword `overrides` change fields of `config` (``epochs=`` is
    ``pretrain_epochs``).
    """
    cfg = _config(config, overrides, 'pretrain_epochs')
    reg = _registry()
    Task, task = reg.get_task(task), normalize_task(task)
    series = as_series(X, 'X')
    _check_fits(cfg, series, 'X')
    n_values = infer_n_values(series) if cfg.n_values == 'auto' else cfg.n_values
    path = Path(path) if path is not None else Path('models') / f'ssl_{task}_{cfg.arch_name}.pth'
    if not path.suffix: path = path.with_suffix('.pth')
    opts = reg.task_options(Task)
    kw = dict(task_kwargs or {})
    if 'n_values' in opts: kw.setdefault('n_values', n_values)
    kw.setdefault('save_as', str(path)); kw.setdefault('seed', cfg.seed)
    cb = reg.make_task(Task, **kw)  # before any data work: a misspelt option fails here

    import torch

    from .data import get_ssl_dls
    dev = resolve_device(cfg.device)
    n = len(series)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    # A step budget shorter than one epoch of a large corpus (10^5 series, 600 steps of 16) draws the series it
    # needs at random and holds out valid_pct of those, so neither an epoch of 10^5 series nor a validation pass
    # over 10^4 of them runs; each drawn series is seen once, like every series in an epoch.
    if cfg.pretrain_steps is not None:
        need = math.ceil(cfg.pretrain_steps * cfg.bs / (1 - cfg.valid_pct))
        if need < n: perm = perm[:need]
    n_draw = len(perm)
    n_val = max(1, int(round(cfg.valid_pct * n_draw))) if n_draw >= 10 and cfg.valid_pct > 0 else 0
    splits = (np.sort(perm[n_val:]), np.sort(perm[:n_val]))
    n_tr = n_draw - n_val
    dls = get_ssl_dls(series, splits=splits, bs=cfg.bs, val_bs=_eval_bs([series[i] for i in splits[1]] or series, cfg.bs),
                      batch_tfms=_standardize(cfg), max_len=cfg.max_len, n_values=n_values, seed=cfg.seed, device=dev,
                      drop_last=_drop_last(n_tr, min(cfg.bs, n_tr)))
    units = _units([series[i] for i in splits[0]], _crop(cfg.max_len, getattr(cb, 'window', None))) \
        * float(getattr(Task, 'epoch_cost', 1.))
    epochs = cfg.epochs('pretrain', n_tr)
    cbs = [cb, tick_callback(progress, units, log=cfg.verbose)]
    prober = _probe_callback(probe, epochs, cfg) if probe is not None else None
    if prober is not None: cbs.append(prober)
    learn = _make_learner(dls, cfg, dev, cbs=cbs)
    if path.exists(): path.unlink()  # a stale file must not pass for this run's result
    t0 = time.time()
    with _quiet(learn):
        learn.fit_one_cycle(epochs, cfg.lr)
    secs = time.time() - t0
    if not path.exists():
        raise InputError(f'pretraining {task} produced no weights (the validation loss was never finite); '
                         'try a lower learning rate')
    _record_arch(getattr(cb, 'saved_paths', None) or [path], cfg)
    best = getattr(cb, 'best', None)
    info = dict(task=task, arch=cfg.arch_name, arch_config=cfg.arch_config or {}, path=str(path),
                epochs=epochs, n_series=n, n_train=n_tr, n_valid=n_val, n_values=n_values,
                best_valid_loss=None if best is None or not math.isfinite(best) else float(best), seconds=round(secs, 2))
    if prober is not None: info['probe_curve'] = [[int(e) + 1, round(float(a), 4)] for e, a in prober.history]
    del learn
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return (path, info) if return_info else path


def _probe_callback(probe: tuple, epochs: int, cfg: RunConfig):
    "A `LinearProbe` on ``probe=(X, y)`` about five times per fit; None when the labels cannot be cross-validated."
    from .embed import LinearProbe
    X, y = probe
    y = np.asarray(y)
    if len(np.unique(y)) < 2 or np.unique(y, return_counts=True)[1].min() < 2: return None
    return LinearProbe(as_series(X, 'probe series'), y, every=math.ceil(epochs / 5), bs=_eval_bs(as_series(X), cfg.bs),
                       seed=cfg.seed)


def pretrain_mvp(X, config: RunConfig | None = None, *, path: str | os.PathLike, progress: Progress | None = None,
                 return_info: bool = False, **overrides):
    """Pretrain with tsai's own MVP callback (`tsai.callback.MVP`, masked value prediction), the way tsai documents
    it, as the reference next to tsai-ssl's tasks: the series NaN-padded to the longest (MVP needs one length; it
    ignores NaN steps), `TSStandardize`, MVP's 1x1-convolution head in place of the classifier's, training on random
    windows of ``config.max_len`` steps when that is set, the epoch with the lowest validation loss kept. Needs a tsai
    model with a ``head`` attribute (ResNetPlus, InceptionTimePlus, ...). Writes ``path`` (the whole model, which
    `load_pretrained` reads the backbone of) and its JSON sidecar; returns the path (and a dict with
    ``return_info``)."""
    cfg = _config(config, overrides, 'pretrain_epochs')
    series = as_series(X, 'X')
    if len(series) < 2: raise InputError('MVP needs at least 2 series (one for validation)')
    from tsai.callback.MVP import MVP as TsaiMVP
    from tsai.data.core import get_ts_dls
    path = Path(path).with_suffix('.pth')
    path.parent.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(cfg.device)
    L = max(x.shape[-1] for x in series)
    # a Transformer takes seq_len steps: NaN-padded to it (MVP sets NaN steps to 0 before the forward and leaves them
    # out of its loss; the model attends to them, as with tsai alone)
    seq_len = transformer_seq_len(cfg)
    if seq_len is not None:
        _check_fits(cfg, series, 'X'); L = seq_len
        if cfg.arch_name == 'TSTPlus' and seq_len > (cfg.arch_config or {}).get('max_seq_len', 512):
            raise InputError(f"tsai's MVP predicts one output per input step, and this {cfg.arch_name} embeds patches "
                             f'(seq_len {seq_len} > max_seq_len): build it with max_seq_len >= seq_len for MVP, or use '
                             "tsai-ssl's masked task, which runs on patches.")
    arr = np.full((len(series), series[0].shape[0], L), np.nan, np.float32)
    for i, x in enumerate(series): arr[i, :, :x.shape[-1]] = x
    perm = np.random.default_rng(cfg.seed).permutation(len(series))
    n_val = max(1, int(round(max(cfg.valid_pct, 0.1) * len(series))))
    n_tr = len(series) - n_val
    bs = min(cfg.bs, n_tr)  # fastai drops the last partial training batch by default: drop it only when it is one
    dls = get_ts_dls(arr, splits=(list(perm[n_val:]), list(perm[:n_val])), batch_tfms=[_standardize(cfg)], bs=bs,
                     drop_last=(_drop_last(n_tr, bs), False), device=dev)
    window = cfg.max_len if cfg.max_len and cfg.max_len < L and seq_len is None else None
    cb = TsaiMVP(target_dir=str(path.parent), fname=path.stem, window_size=window, verbose=False)
    units = float(len(series) - n_val) * (window or L)
    epochs = cfg.epochs('pretrain', n_tr)
    learn = _make_learner(dls, cfg, dev, cbs=[cb, tick_callback(progress, units, log=cfg.verbose)], pad_input=False)
    if not hasattr(learn.model, 'head'):
        raise InputError(f"tsai's MVP needs a model with a head attribute: use {cfg.arch_name}Plus or another tsai *Plus model")
    if path.exists(): path.unlink()
    t0 = time.time()
    with _quiet(learn), contextlib.redirect_stdout(io.StringIO()):  # MVP prints its best epoch
        learn.fit_one_cycle(epochs, cfg.lr)
    secs = time.time() - t0
    if not path.exists(): raise InputError("tsai's MVP produced no weights (the validation loss was never finite)")
    side = path.with_name(path.name + '.json')
    side.write_text(json.dumps(dict(task=MVP, epochs=epochs)))
    _record_arch([path], cfg)
    info = dict(task=MVP, arch=cfg.arch_name, path=str(path), epochs=epochs, n_series=len(series),
                n_valid=n_val, best_valid_loss=float(cb.best), seconds=round(secs, 2))
    return (path, info) if return_info else path


def _check_weights_arch(weights, cfg: RunConfig) -> None:
    """`InputError` before any training when the weights were pretrained with another architecture, config or input
    standardization (features learnt on inputs scaled one way say little about inputs scaled another)."""
    std = recorded_standardize(weights)
    if std is not None and std != cfg.standardize:
        raise InputError(f'{weights} was pretrained with standardize={std!r}, but this fine-tuning uses '
                         f'standardize={cfg.standardize!r}: use standardize={std!r} (--standardize {std})')
    arch, arch_config = recorded_arch(weights)
    if arch_config is None: return  # nothing recorded: `load_pretrained` still verifies every tensor's shape
    if arch != cfg.arch_name or arch_config != (cfg.arch_config or {}):
        raise InputError(f'{weights} was pretrained with {arch} {json.dumps(arch_config)}, but this fine-tuning builds '
                         f'{cfg.arch_name} {json.dumps(cfg.arch_config or {})}: use arch={arch!r}, '
                         f'arch_config={arch_config} (the tsai-ssl command reads them from the weights when --arch and '
                         f'--arch-config are not given)')


def finetune(X_train, y_train, X_test, y_test, config: RunConfig | None = None, *,
             weights: str | os.PathLike | None = None, export: str | os.PathLike | None = None,
             semi_task: str | None = None, X_unlabeled=None,
             progress: Progress | None = None, return_learner: bool = False, **overrides):
    """Train the classifier ``config.arch`` on the labeled series (from scratch, or from pretrained backbone
    `weights` loaded and verified with `load_pretrained`), then return its accuracy on the test series.

    Weights pretrained with another architecture or ``arch_config`` than `config`'s are refused (`InputError`)
    before training. No validation during training. ``export``: write the trained Learner with ``learn.export``
    (load with ``fastai.learner.load_learner``; predict on new series of any length with
    ``learn.dls.test_dl(series)``). ``return_learner=True`` returns ``(accuracy, learn)``. Keyword `overrides`
    change fields of `config` (``epochs=`` is ``finetune_epochs``); the epochs are raised to at least
    ``finetune_min_steps`` optimizer steps (see `epochs_for_steps`). ``config.recipe`` says how the layers train
    from `weights` ('full', 'lp-ft', 'frozen'; the same number of epochs in all). ``semi_task`` with
    ``config.semi_weight > 0``: that task's loss on `X_unlabeled` (default: the training series) stays on during
    the fit (`tsai_ssl.semi.SemiSupervised`); ``config.pseudo_threshold`` adds FixMatch's pseudo-label term to it.
    ``semi_task=None`` with ``config.pseudo_threshold`` and `X_unlabeled` given: FixMatch alone on `X_unlabeled`.
    """
    cfg = _config(config, overrides, 'finetune_epochs')
    X_tr, X_te = as_series(X_train, 'X_train'), as_series(X_test, 'X_test')
    _check_fits(cfg, X_tr, 'X_train'); _check_fits(cfg, X_te, 'X_test')
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    if len(y_tr) != len(X_tr): raise InputError(f'{len(y_tr)} training labels for {len(X_tr)} series')
    if len(y_te) != len(X_te): raise InputError(f'{len(y_te)} test labels for {len(X_te)} series')
    if weights is not None:
        if not Path(weights).exists(): raise InputError(f'weights file not found: {weights}')
        _check_weights_arch(weights, cfg)
    import torch
    from fastai.metrics import accuracy as acc_metric

    from .data import get_ssl_dls
    from .transfer import load_pretrained
    dev = resolve_device(cfg.device)
    n = len(X_tr)
    dls = get_ssl_dls(X_tr, y_tr, bs=cfg.bs, batch_tfms=_standardize(cfg), max_len=cfg.max_len, seed=cfg.seed, device=dev,
                      drop_last=_drop_last(n, min(cfg.bs, n)))
    epochs = cfg.epochs('finetune', n)
    fixmatch = semi_task is None and cfg.pseudo_threshold is not None and X_unlabeled is not None
    semi = fixmatch or (semi_task is not None and cfg.semi_weight > 0)
    cbs = [tick_callback(progress, _units(X_tr, cfg.max_len) * (_SEMI_COST if semi else 1), log=cfg.verbose)]
    if semi:
        cbs.append(_semi_callback(semi_task, X_tr if X_unlabeled is None else as_series(X_unlabeled, 'X_unlabeled'),
                                  cfg, dev))
    learn = _make_learner(dls, cfg, dev, metrics=acc_metric, cbs=cbs)
    if weights is not None:
        try:
            load_pretrained(learn, Path(weights))
        except (FileNotFoundError, ValueError) as e:  # a file that does not fit this classifier is the user's input
            raise InputError(str(e)) from None
    recipe = cfg.recipe if weights is not None else 'full'
    with _quiet(learn):
        if recipe == 'lp-ft':  # the head first, so that its random start does not push the backbone around
            lp = max(1, epochs // 4)
            learn.freeze()
            learn.fit_one_cycle(lp, cfg.lr)
            learn.unfreeze()
            epochs = max(1, epochs - lp)
        if recipe == 'frozen': learn.freeze()
        learn.fit_one_cycle(epochs, cfg.lr)
    acc = evaluate(learn, X_te, y_te, bs=cfg.bs)
    if progress is not None: progress.advance(_eval_units(X_te))
    if export is not None: _export(learn, export)
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return (acc, learn) if return_learner else acc


def _semi_callback(task: str | None, X_u: list, cfg: RunConfig, dev):
    "`SemiSupervised` with `task` (None: FixMatch's term alone) on the unlabeled series `X_u`, batched like the pretraining."
    from .data import get_ssl_dls
    from .semi import SemiSupervised
    reg = _registry()
    n_values = None if task is None else infer_n_values(X_u) if cfg.n_values == 'auto' else cfg.n_values
    cb = None
    if task is not None:
        Task = reg.get_task(task)
        kw = dict(n_values=n_values) if 'n_values' in reg.task_options(Task) else {}
        cb = reg.make_task(Task, seed=cfg.seed, **kw)
    dls = get_ssl_dls(X_u, splits=(range(len(X_u)), []), bs=cfg.bs, batch_tfms=_standardize(cfg), max_len=cfg.max_len,
                      n_values=n_values, seed=cfg.seed, device=dev, drop_last=_drop_last(len(X_u), min(cfg.bs, len(X_u))))
    return SemiSupervised(cb, dls.train, weight=cfg.semi_weight, pseudo_threshold=cfg.pseudo_threshold)


def evaluate(learn, X_test, y_test, bs: int = 64) -> float:
    "Accuracy of a classifier Learner on test series (full length, any length)."
    X_te = as_series(X_test, 'X_test')
    dl = learn.dls.test_dl(X_te, y=np.asarray(y_test), with_labels=True, bs=_eval_bs(X_te, bs))
    with learn.no_bar():
        preds, targs = learn.get_preds(dl=dl)
    return float((preds.argmax(-1) == targs).float().mean())


def _export(learn, fname):
    fname = Path(fname).absolute()
    fname.parent.mkdir(parents=True, exist_ok=True)
    learn.export(fname)
    return fname


# ----------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------
def compare(X_train, y_train, X_test, y_test, X_unlabeled=None, config: RunConfig | None = None, *,
            tasks: Sequence[str] = ('masked', 'next', 'contrastive'), fractions: Sequence[float] = DEFAULT_FRACTIONS,
            seeds: Sequence[int] = (0, 1, 2), workdir: str | os.PathLike = 'runs/compare', probe: bool = True,
            pool_fractions: Sequence[float] = (), semi_tasks: Sequence[str] | None = None,
            progress: bool | Progress = True,
            on_result: Callable[[dict], None] | None = None, **overrides) -> list[dict]:
    """Pretraining vs training from scratch at several label fractions; returns one dict per run:

    ``{'method': 'scratch' | task, 'fraction', 'n_labeled', 'seed', 'accuracy', 'seconds'}``
    (``seconds``: fine-tuning and test time; ``'mvp'`` in `tasks` adds tsai's own MVP as a reference, see
    `pretrain_mvp`; pretraining runs appear with ``fraction=None``, ``accuracy=None``
    and ``best_valid_loss``). For each seed, each task is pretrained once on all training series plus
    `X_unlabeled` (labels ignored) and reused for every fraction; the labeled subset of a fraction is the same
    for every method of a seed. Every fit uses `config` (keyword `overrides` change its fields), with
    ``seed`` set per seed. Weights go to ``workdir/weights``. ``progress``: True for a bar with ETA on stderr, or
    a `Progress`; ``on_result(row)`` is called as each run finishes. ``probe``: each pretraining row carries
    ``probe_curve``, the cross-validated linear-probe accuracy on up to 200 labeled training series during the fit
    (`pretrain`'s ``probe``; training series only, and it selects nothing).

    With ``config.semi_weight > 0`` the tasks in ``semi_tasks`` (None: every task) are also fine-tuned
    semi-supervised (``<task>+semi``, `tsai_ssl.semi.SemiSupervised`, on all pretraining series).

    ``pool_fractions`` (e.g. ``(0.1, 0.3)``) answers "how much data for pretraining?": each task is also pretrained
    on those shares of the pretraining series (nested random subsets per seed) and fine-tuned at every fraction;
    those rows carry ``pool_fraction`` and ``n_pretrain`` (the full pool's rows have 1.0 and all series), and
    `aggregate` / `summarize` leave them out (see `tsai_ssl.report.pool_curve`). Give ``pretrain_steps`` then, so
    that every pool trains for the same number of steps (with epochs a small pool also gets less compute: a warning).
    """
    cfg = _config(config, overrides, 'pretrain_epochs')
    reg = _registry()
    with_mvp = any(str(t).strip().lower() == MVP for t in tasks)
    task_cls = {normalize_task(t): reg.get_task(t) for t in tasks if str(t).strip().lower() != MVP}  # fails before training
    semi = [] if not cfg.semi_weight > 0 else list(task_cls) if semi_tasks is None else \
        list(dict.fromkeys(normalize_task(t) for t in semi_tasks))
    if set(semi) - set(task_cls): raise InputError(f'semi-supervised tasks {sorted(set(semi) - set(task_cls))} are not in tasks')
    fractions = check_fractions(fractions)
    X_tr, X_te = as_series(X_train, 'X_train'), as_series(X_test, 'X_test')
    X_unl = as_series(X_unlabeled, 'X_unlabeled') if X_unlabeled is not None and len(X_unlabeled) else []
    _check_fits(cfg, X_tr, 'X_train'); _check_fits(cfg, X_te, 'X_test')
    _check_fits(cfg, X_unl, 'X_unlabeled')
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    subsets = {(f, s): label_subset(y_tr, f, s) for s in seeds for f in fractions}  # errors before training
    X_pre = X_tr + X_unl
    pools = sorted({float(p) for p in pool_fractions} - {1.0})
    if any(not 0 < p < 1 for p in pools): raise InputError(f'pool fractions must be in (0, 1], got {list(pool_fractions)}')
    if pools and cfg.pretrain_steps is None:
        warnings.warn('pool_fractions with a pretraining budget in epochs: a smaller pool also gets fewer optimizer '
                      'steps, so the curve mixes data with compute; set pretrain_steps (--pretrain-steps)', stacklevel=2)

    def pool_subset(p: float, s: int) -> list:  # nested: the first share of one permutation per seed
        k = max(2, int(round(p * len(X_pre))))
        return [X_pre[i] for i in np.sort(np.random.default_rng([s, 7]).permutation(len(X_pre))[:k])]

    if cfg.n_values == 'auto': cfg = cfg.replace(n_values=infer_n_values(X_pre))
    cfg = cfg.replace(device=resolve_device(cfg.device))
    weights_dir = Path(workdir) / 'weights'

    total = 0.
    L_tr = np.array([x.shape[-1] for x in X_tr])
    L_tr = np.minimum(L_tr, cfg.max_len) if cfg.max_len else L_tr
    for s in seeds:
        for p in [1.0] + pools:
            X_p = X_pre if p == 1 else pool_subset(p, s)
            units = _units(X_p, cfg.max_len) * (1 - cfg.valid_pct)
            pre_ep = cfg.epochs('pretrain', int(len(X_p) * (1 - cfg.valid_pct)))
            total += sum(pre_ep * (1 - cfg.valid_pct) * float(c.epoch_cost)
                         * _units(X_p, _crop(cfg.max_len, reg.task_options(c).get('window'))) for c in task_cls.values())
            if with_mvp and p == 1: total += pre_ep * units
        for f in fractions:
            n_f = len(subsets[f, s])
            ep_f = cfg.epochs('finetune', n_f)
            n_task_fits, n_semi_fits = len(task_cls) * (1 + len(pools)), len(semi) * (1 + len(pools))
            n_fits = 1 + with_mvp + n_task_fits + n_semi_fits
            cost = 1 + with_mvp + n_task_fits + n_semi_fits * _SEMI_COST  # in plain fits
            total += cost * ep_f * L_tr[subsets[f, s]].sum() + n_fits * _eval_units(X_te)
    n_pre = len(seeds) * (len(task_cls) * (1 + len(pools)) + with_mvp)
    n_fit = len(seeds) * len(fractions) * (1 + with_mvp + (len(task_cls) + len(semi)) * (1 + len(pools)))
    if progress is True:  # the plan, and what it should cost on this machine, before any training
        L = int(min(max(x.shape[-1] for x in X_pre), cfg.max_len or 10 ** 9))
        eta = total * seconds_per_unit(cfg, X_tr[0].shape[0], len(np.unique(y_tr)), L) * 1.15  # + data, eval overheads
        print(f'plan: {n_pre} pretraining{"s" if n_pre != 1 else ""} and {n_fit} classifier fits over '
              f'{len(seeds)} seed(s); about {hms(eta)} on this machine (from a timed training step)', file=sys.stderr,
              flush=True)
    bar = progress if isinstance(progress, Progress) else Progress(total, 'compare', enabled=bool(progress))

    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        if on_result is not None: on_result(row)

    def fit(method: str, label: str, s: int, f: float, cs: RunConfig, pool: dict | None = None, **kw):
        "Fine-tune (or train from scratch) on the labeled subset of fraction `f`, seed `s`, and emit its row."
        idx = subsets[f, s]
        bar.advance(0, f'seed {s}: {label}, {fmt_frac(f)} labels')
        t0 = time.time()
        acc = finetune([X_tr[i] for i in idx], y_tr[idx], X_te, y_te, cs, progress=bar, **kw)
        emit(dict(method=method, fraction=f, n_labeled=int(len(idx)), seed=s, accuracy=acc,
                  seconds=round(time.time() - t0, 2), **(pool or {})))

    def pretrained(method: str, s: int, wpath, info: dict, pool: dict | None = None):
        row = dict(method=method, fraction=None, n_labeled=0, seed=s, accuracy=None, seconds=info['seconds'],
                   best_valid_loss=info['best_valid_loss'], weights=str(wpath), **(pool or {}))
        if 'probe_curve' in info: row['probe_curve'] = info['probe_curve']
        emit(row)

    def probe_set(s: int):
        if not probe: return None
        try: idx = label_subset(y_tr, min(1.0, 200 / len(y_tr)), s)
        except InputError: return None  # a class too rare to sample
        return [X_tr[i] for i in idx], y_tr[idx]

    try:
        for s in seeds:
            cs = cfg.replace(seed=s)
            for f in fractions: fit(SCRATCH, SCRATCH, s, f, cs)
            for t in task_cls:
                for p in [1.0] + pools[::-1]:  # the full pool first: the main table fills before the curve
                    X_p = X_pre if p == 1 else pool_subset(p, s)
                    pool = dict(pool_fraction=p, n_pretrain=len(X_p)) if pools else None
                    name = f'{t}_{cs.arch_name}_seed{s}' + ('' if p == 1 else f'_pool{p:g}')
                    bar.advance(0, f'seed {s}: pretrain {t}' + ('' if p == 1 else f' on {len(X_p)} series'))
                    wpath, info = pretrain(X_p, t, cs, path=weights_dir / f'{name}.pth', probe=probe_set(s),
                                           progress=bar, return_info=True)
                    pretrained(t, s, wpath, info, pool)
                    for f in fractions:
                        fit(t, t, s, f, cs, pool, weights=wpath)
                        if t in semi:
                            fit(f'{t}+semi', f'{t}+semi', s, f, cs, pool, weights=wpath, semi_task=t, X_unlabeled=X_p)
            if with_mvp:
                bar.advance(0, f"seed {s}: pretrain tsai's MVP")  # on the full pool only: a reference, not a curve
                wpath, info = pretrain_mvp(X_pre, cs, path=weights_dir / f'{MVP}_{cs.arch_name}_seed{s}.pth', progress=bar,
                                           return_info=True)
                pretrained(MVP, s, wpath, info)
                for f in fractions: fit(MVP, "tsai's MVP", s, f, cs, weights=wpath)
    finally:
        if not isinstance(progress, Progress): bar.close()
    return rows
