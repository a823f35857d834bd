"""The settings of a run, in one place: `RunConfig` (what `pretrain`, `finetune` and `compare` share), and the
architectures and devices they accept. Nothing here imports torch at module level.

    cfg = RunConfig(arch='ResNetPlus', arch_config={'nf': 32}, pretrain_epochs=5, lr=3e-3, bs=32, max_len=512)
    compare(X_train, y_train, X_test, y_test, config=cfg, fractions=(0.05, 1.0))
    finetune(X, y, X_test, y_test, cfg.replace(seed=1), weights='models/ssl.pth')
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from .errors import InputError
from .series import check_n_values

__all__ = ['RunConfig', 'ARCHS', 'TRANSFORMER_ARCHS', 'RECIPES', 'STANDARDIZE', 'normalize_arch', 'get_arch', 'resolve_device']

# tsai classifiers `split_backbone` supports (their time axis is kept until global pooling)
ARCHS = ('ResNet', 'ResNetPlus', 'InceptionTime', 'InceptionTimePlus', 'XceptionTime', 'XceptionTimePlus',
         'FCN', 'FCNPlus', 'ResCNN', 'TCN', 'TSTPlus', 'TSiTPlus')
TRANSFORMER_ARCHS = ('TSTPlus', 'TSiTPlus')  # need arch_config seq_len (`tsai_ssl.transformer`)


RECIPES = ('full', 'lp-ft', 'frozen')  # fine-tuning from pretrained weights, see RunConfig
STANDARDIZE = ('dataset', 'series')  # the batch transform of every fit, see RunConfig


def normalize_arch(name) -> str:
    "Canonical architecture name (case-insensitive); `InputError` listing the supported ones. A class gives its name."
    if not isinstance(name, str):
        return getattr(name, '__name__', type(name).__name__)
    for a in ARCHS:
        if a.lower() == name.strip().lower(): return a
    raise InputError(f"unknown architecture {name!r}: choose from {', '.join(ARCHS)}")


def get_arch(name):
    "The tsai model class for an architecture name (an nn.Module class or instance passes through)."
    if not isinstance(name, str): return name
    import warnings
    a = normalize_arch(name)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # tsai's model modules call the deprecated torch.jit.script
        return getattr(importlib.import_module(f'tsai.models.{a}'), a)


def _check_device(device) -> None:
    if hasattr(device, 'type'): return  # a torch.device
    d = str(device or 'auto').strip().lower()
    if d not in ('auto', 'cpu') and not d.startswith('cuda'):
        raise InputError(f'device {device!r}: use cpu, cuda, cuda:N or auto')


def resolve_device(device='auto'):
    "'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N' -> torch.device (a torch.device passes through)."
    import torch
    if hasattr(device, 'type'): return device
    _check_device(device)
    d = (device or 'auto').strip().lower()
    if d == 'auto': return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if d == 'cpu': return torch.device('cpu')
    if not torch.cuda.is_available(): raise InputError(f'device {device!r} requested but CUDA is not available')
    return torch.device(d)


@dataclass(frozen=True)
class RunConfig:
    """What every fit of a run shares. Scratch and pretrained fits with one config use the same seed, batch order,
    epochs and learning rate; only the backbone's initial weights differ.

    Args:
        arch: a tsai classifier name (see `ARCHS`) or an nn.Module class.
        arch_config: keyword arguments of the architecture, e.g. ``{'nf': 32}`` (recorded with pretrained weights).
        pretrain_epochs: epochs of a pretraining fit.
        finetune_epochs: epochs of a fine-tuning (or from-scratch) fit.
        finetune_min_steps: raise the fine-tuning epochs of small label sets to at least this many optimizer steps.
        pretrain_steps: a pretraining budget in optimizer steps instead of epochs (None: use the epochs). A fit
            then runs the fewest whole epochs that reach the steps; a pretraining corpus larger than ``steps * bs``
            series (plus the validation share) is drawn from at random instead, one epoch over the drawn series.
        finetune_steps: the same for fine-tuning and scratch fits, so 5 labels train as long as 500 do.
        lr: learning rate (``fit_one_cycle``).
        bs: batch size.
        max_len: training crop (longer series are cut to a random window; validation and test see full length).
        seed: seeds the data order, crops, masks and the model's initial weights.
        device: 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device (cuda runs in mixed precision).
        n_values: n when the values are the integers 0..n-1 (categorical pretext targets), None for continuous
            targets, 'auto' to decide from the data (`tsai_ssl.series.infer_n_values`).
        valid_pct: share of the pretraining series held out to keep the epoch with the lowest validation loss.
        recipe: how a classifier trains from pretrained weights: 'full' (every layer at ``lr``), 'lp-ft' (the new
            head alone for the first quarter of the epochs, then every layer: Kumar et al., ICLR 2022), 'frozen' (the
            head alone; BatchNorm keeps training: fastai's ``freeze``). From scratch every recipe is 'full'.
        semi_weight: > 0: fine-tuning from a task's weights keeps that task's loss on the unlabeled series, with this
            weight (`tsai_ssl.semi.SemiSupervised`); `compare` then adds a ``<task>+semi`` method per task.
        pseudo_threshold: with ``semi_weight > 0``, also FixMatch's pseudo-label term in those fits (confidence
            threshold, e.g. 0.95; None: off).
        standardize: the batch transform of every fit: 'dataset' (tsai's ``TSStandardize()``, one mean and std for
            all series: keeps each series' scale) or 'series' (`tsai_ssl.standardize.SeriesStandardize`: each series
            over its own real steps; for sets whose series differ in scale by orders of magnitude, e.g. PLAID).
        verbose: one line per epoch on stderr.

    Example:
        ```python
        cfg = RunConfig(arch='ResNetPlus', arch_config={'nf': 32}, pretrain_steps=600, finetune_steps=400, bs=16,
                        max_len=512)
        results = compare(X, y, X_test, y_test, X_unlabeled, cfg, tasks=['masked', 'contrastive'], fractions=[0.1, 1.0], seeds=[0, 1, 2])
        ```
    """
    arch: object = 'ResNetPlus'
    arch_config: dict | None = None
    pretrain_epochs: int = 10
    finetune_epochs: int = 10
    finetune_min_steps: int = 0
    pretrain_steps: int | None = None
    finetune_steps: int | None = None
    lr: float = 1e-3
    bs: int = 64
    max_len: int | None = None
    seed: int = 0
    device: object = 'auto'
    n_values: int | None | str = 'auto'
    valid_pct: float = 0.1
    recipe: str = 'full'
    semi_weight: float = 0.
    pseudo_threshold: float | None = None
    standardize: str = 'dataset'
    verbose: bool = False

    def __post_init__(self):
        # frozen: normalised values are set through object.__setattr__
        if isinstance(self.arch, str): object.__setattr__(self, 'arch', normalize_arch(self.arch))
        if self.arch_config is not None and not isinstance(self.arch_config, dict):
            raise InputError(f'arch_config must be a dict of keyword arguments like {{"nf": 32}}, got {self.arch_config!r}')
        object.__setattr__(self, 'arch_config', dict(self.arch_config) if self.arch_config else None)
        for k in ('pretrain_epochs', 'finetune_epochs', 'bs'):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1: raise InputError(f'{k} must be an integer >= 1, got {v!r}')
        if not isinstance(self.finetune_min_steps, int) or self.finetune_min_steps < 0:
            raise InputError(f'finetune_min_steps must be an integer >= 0, got {self.finetune_min_steps!r}')
        for k in ('pretrain_steps', 'finetune_steps'):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise InputError(f'{k} must be None or an integer >= 1, got {v!r}')
        if not (isinstance(self.lr, (int, float)) and self.lr > 0): raise InputError(f'lr must be positive, got {self.lr!r}')
        if self.max_len is not None and (not isinstance(self.max_len, int) or self.max_len < 8):
            raise InputError(f'max_len must be None or an integer >= 8, got {self.max_len!r}')
        if not 0 <= self.valid_pct < 1: raise InputError(f'valid_pct must be in [0, 1), got {self.valid_pct!r}')
        if self.standardize not in STANDARDIZE:
            raise InputError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}")
        if self.recipe not in RECIPES: raise InputError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if not (isinstance(self.semi_weight, (int, float)) and self.semi_weight >= 0):
            raise InputError(f'semi_weight must be a number >= 0, got {self.semi_weight!r}')
        if self.pseudo_threshold is not None and not (isinstance(self.pseudo_threshold, (int, float))
                                                      and 0 <= self.pseudo_threshold < 1):
            raise InputError(f'pseudo_threshold must be None or in [0, 1), got {self.pseudo_threshold!r}')
        if self.n_values != 'auto': object.__setattr__(self, 'n_values', check_n_values(self.n_values))
        _check_device(self.device)

    @property
    def arch_name(self) -> str: return normalize_arch(self.arch)

    def epochs(self, stage: str, n_series: int) -> int:
        """Epochs of a 'pretrain' or 'finetune' fit over `n_series` training series: from the step budget when it
        is set (the fewest epochs that reach it), else the epochs (fine-tuning: raised to ``finetune_min_steps``)."""
        from math import ceil
        bs = min(self.bs, max(n_series, 1))
        per_epoch = max(n_series // bs if n_series > bs and n_series % bs == 1 else ceil(n_series / bs), 1)
        steps = self.pretrain_steps if stage == 'pretrain' else self.finetune_steps
        if steps is not None: return max(1, ceil(steps / per_epoch))
        if stage == 'pretrain': return self.pretrain_epochs
        return max(self.finetune_epochs, ceil(self.finetune_min_steps / per_epoch))

    def replace(self, **changes) -> 'RunConfig':
        "A copy with some fields changed; `InputError` naming the fields for an unknown one."
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}: RunConfig has "
                             f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        "Plain values for results.json."
        d = dataclasses.asdict(self)
        d['arch'], d['device'], d['arch_config'] = self.arch_name, str(self.device), self.arch_config or {}
        return d


def _sidecar(weights) -> dict:
    "The ``<weights>.json`` metadata `pretrain` writes next to the weights ({} when absent or unreadable)."
    import json
    from pathlib import Path
    side = Path(weights).with_name(Path(weights).name + '.json')
    try: meta = json.loads(side.read_text()) if side.exists() else {}
    except (OSError, ValueError): return {}
    return meta if isinstance(meta, dict) else {}


def recorded_standardize(weights) -> str | None:
    "The ``standardize`` recorded with pretrained weights (`RunConfig.standardize`), or None. Reads JSON only."
    return _sidecar(weights).get('standardize')


def recorded_arch(weights) -> tuple[str | None, dict | None]:
    """The architecture and its config recorded with pretrained weights (the ``<weights>.json`` sidecar `pretrain`
    writes), or ``(None, None)`` when the file records no config (weights from elsewhere). Reads JSON only."""
    meta = _sidecar(weights)
    if 'arch_config' not in meta: return None, None
    return meta.get('arch'), dict(meta.get('arch_config') or {})
