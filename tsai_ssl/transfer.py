"""Saving pretrained backbones and loading them, verified, into standard tsai classifiers.

Files are plain ``state_dict``s of the backbone under the *classifier's* parameter names, so three loaders
accept them: fastai's ``learn.load(name, strict=False, with_opt=False)``, tsai's
``ts_learner(..., pretrained=True, weights_path=path)`` and `load_pretrained` (which also checks that every
backbone tensor was found with the right shape, and says which were not). A JSON sidecar next to the
weights records what produced them.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .backbone import split_backbone

__all__ = ['save_backbone', 'load_pretrained', 'TransferReport', 'weights_path', 'atomic_save', 'backbone_splitter']


def backbone_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """fastai splitter: two parameter groups, the backbone `split_backbone` finds and everything else (the head).

    tsai's `ts_splitter` does the same for models with ``backbone`` and ``head`` attributes (ResNetPlus,
    InceptionTimePlus, ...); the others (ResNet, InceptionTime, FCN, TCN, ...) get one group from tsai, so
    ``learn.freeze()`` froze nothing and ``lr=slice(lo, hi)`` had one rate. `load_pretrained` installs this
    splitter on such Learners; ``ts_learner(..., splitter=backbone_splitter)`` does it by hand.

    Example:
        ```python
        clf = ts_learner(dls, ResNet, metrics=accuracy, splitter=backbone_splitter)
        clf.freeze()                                   # the head alone trains
        clf.fit_one_cycle(5, slice(1e-5, 1e-3))        # or the backbone at a lower rate
        ```
    """
    body = list(split_backbone(model).parameters())
    ids = {id(p) for p in body}
    return [body, [p for p in model.parameters() if id(p) not in ids]]


def weights_path(learn_or_dir, name_or_path: str | os.PathLike) -> Path:
    """fastai's convention: a bare name means ``learn.path/learn.model_dir/name.pth``; a path with a suffix or a
    directory part is used as it is."""
    p = Path(name_or_path)
    if p.suffix or len(p.parts) > 1 or p.is_absolute(): return p
    if hasattr(learn_or_dir, 'model_dir'): return Path(learn_or_dir.path) / learn_or_dir.model_dir / f'{p}.pth'
    return Path(learn_or_dir or '.') / f'{p}.pth'


def atomic_save(obj, path: str | os.PathLike) -> Path:
    "torch.save to a temporary file in the same folder, then rename: a crash never leaves a half-written file."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        if hasattr(os, 'fchmod'): os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a weights file gets the mode open() would give it
        with os.fdopen(fd, 'wb') as f: torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp): os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    "The process umask: from /proc on Linux (reading it elsewhere means setting it, which races with other threads)."
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('Umask:'): return int(line.split()[1], 8)
    except OSError: pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_backbone(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the backbone of `model` (classifier parameter names, CPU tensors) atomically, plus ``<path>.json`` metadata.

    Example:
        ```python
        save_backbone(clf.model, 'models/my_backbone.pth', meta={'arch': 'ResNetPlus'})
        ```
    """
    bb = split_backbone(model)
    state = {k: v.detach().cpu().clone() for k, v in bb.state_dict().items()}
    path = atomic_save(state, path)
    info = {'arch': bb.arch, 'nf': bb.nf, 'n_tensors': len(state), **(meta or {})}  # meta may say more (arch_config)
    tmp = path.with_name(path.name + '.json.tmp')
    tmp.write_text(json.dumps(info, indent=1, default=str))
    os.replace(tmp, path.with_name(path.name + '.json'))
    return path


@dataclass
class TransferReport:
    """What `load_pretrained` did: tensors copied into the model, and tensors of the file it did not use.

    Example:
        ```python
        report = load_pretrained(clf, 'ssl')
        report.transferred[:2], report.skipped        # tensor names copied, and file tensors not used
        ```
    """
    path: Path
    transferred: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __repr__(self):
        return (f'TransferReport({len(self.transferred)} backbone tensors loaded from {self.path}'
                + (f', {len(self.skipped)} file tensors unused: {self.skipped[:4]}' if self.skipped else '') + ')')


def _read_state(path: Path, device) -> dict:
    if not path.exists():
        raise FileNotFoundError(f'No weights file at {path}. Pretrain with save_as=... or pass the path of a .pth file.')
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f'Cannot read weights from {path}: the file is truncated, corrupt or not a PyTorch state_dict '
                         f'({type(e).__name__}: {str(e)[:200]}).') from e
    if isinstance(state, dict) and set(state) == {'model', 'opt'}: state = state['model']  # a fastai learn.save file
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path} does not hold a state_dict of tensors.')
    return state


def load_pretrained(learn_or_model, name_or_path: str | os.PathLike, device=None) -> TransferReport:
    """Load pretrained backbone weights into a classifier (a fastai `Learner` or an nn.Module), verified.

    Every tensor of the model's backbone must be in the file with the same shape; otherwise a `ValueError`
    names the missing and mismatched tensors and nothing is loaded. The classifier head is left as it is. A Learner
    whose splitter gives a single parameter group gets `backbone_splitter` (backbone, head), so ``learn.freeze()``,
    ``learn.fine_tune()`` and ``lr=slice(lo, hi)`` treat the pretrained backbone and the new head apart (its optimizer
    is then rebuilt at the next fit).

    Example:
        ```python
        clf = ts_learner(dls, ResNetPlus, metrics=accuracy)
        load_pretrained(clf, 'ssl')                   # raises naming any missing or mismatched tensor
        clf.fine_tune(10, 1e-3, lr_mult=1)            # or clf.fit_one_cycle(10, slice(1e-4, 1e-3))
        ```
    """
    model = getattr(learn_or_model, 'model', learn_or_model)
    path = weights_path(learn_or_model if hasattr(learn_or_model, 'model_dir') else None, name_or_path)
    p = next(model.parameters())
    state = _read_state(path, device or p.device)
    bb_state = split_backbone(model).state_dict()
    missing = [k for k in bb_state if k not in state]
    mismatched = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}' for k, v in bb_state.items()
                  if k in state and state[k].shape != v.shape]
    if missing or mismatched:
        meta = _read_meta(path)
        src = f" (saved from {meta['arch']})" if meta.get('arch') else ''
        raise ValueError(f'{path}{src} does not fit the backbone of {type(model).__name__}: '
                         f'{len(missing)} tensors missing {missing[:5]}, {len(mismatched)} with another shape '
                         f'{mismatched[:5]}. Build the classifier with the same architecture and settings as in pretraining.')
    with torch.no_grad():
        for k, v in bb_state.items(): v.copy_(state[k])
    _two_groups(learn_or_model)
    return TransferReport(path, transferred=list(bb_state), skipped=[k for k in state if k not in bb_state],
                          meta=_read_meta(path))


def _two_groups(learn) -> None:
    "A Learner whose splitter gives one group gets `backbone_splitter`, so freeze / fine_tune / slice(lo, hi) act."
    if not hasattr(learn, 'splitter'): return
    groups = learn.splitter(learn.model)  # a list of groups, or (fastai's trainable_params) one flat list of tensors
    if len(groups) > 1 and not isinstance(groups[0], torch.Tensor): return
    learn.splitter = backbone_splitter
    learn.opt = None  # fastai builds the optimizer with the new groups at the next fit (or learn.create_opt())


def _read_meta(path: Path) -> dict:
    j = path.with_name(path.name + '.json')
    try: return json.loads(j.read_text()) if j.exists() else {}
    except ValueError: return {}
