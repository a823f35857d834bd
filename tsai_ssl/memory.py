"""Memory saver: activation checkpointing of a backbone's blocks, with results unchanged.

A training step at 30720 steps keeps every intermediate activation of the backbone for the backward pass: for
ResNetPlus at batch 8 that is dozens of ``(8, 128, 30720)`` float tensors (125 MB each). With
`checkpoint_blocks` each block (a ResNetPlus residual block, an InceptionTimePlus inception module, ...) keeps
only its input; its inside is recomputed during the backward pass, one block at a time
(`torch.utils.checkpoint`, non-reentrant). This trades compute for memory: one extra forward pass of the blocks,
two for the sub-blocks with ``nested=True`` (the default; measured costs and savings are in docs/results.md).

Results are unchanged, not approximately but exactly (tested): the recomputation replays the forward's random
state (dropout), training-mode BatchNorm does not update its running statistics a second time, and the padding
mask of an active `tsai_ssl.padding.PaddingAware` (contrastive tasks, `IgnorePadding`) and the attention masks of a
TSiTPlus (`tsai_ssl.transformer.AttentionMasks`) are the ones of the forward even when they have been cleared by the
time the backward pass runs.

    learn = ts_learner(dls, ResNetPlus, cbs=[MaskedValuePretrain(save_as='ssl'), MemorySaver()])

or, around any forward/backward: ``with checkpoint_blocks(model): loss(model(x)).backward()``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
from fastai.callback.core import Callback
from torch.utils.checkpoint import checkpoint

from .backbone import split_backbone
from .padding import PaddingAware, installed
from .tasks.base import PretextTask, restore_tasks
from .transformer import AttentionMasks, attention_masks_over

__all__ = ['find_blocks', 'sub_blocks', 'checkpoint_blocks', 'MemorySaver']

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _n_params(m: nn.Module) -> int: return sum(p.numel() for p in m.parameters())
def _is_leaf(m: nn.Module) -> bool: return next(m.children(), None) is None


def find_blocks(module: nn.Module, min_blocks: int = 3) -> list[str]:
    """Names (in ``module.named_modules()``) of the blocks to checkpoint: the composite modules one level below the
    plain containers, split further (largest first) until there are at least `min_blocks`.

    ResNetPlus -> its 3 residual blocks; InceptionTimePlus -> its 6 inception modules and the shortcut blocks;
    a user ``nn.Sequential`` of conv blocks -> those blocks. Single layers (a Conv1d, a BatchNorm1d) are never
    blocks: checkpointing one saves nothing.

    Example:
        ```python
        find_blocks(ResNetPlus(1, 5))   # ['backbone.0', 'backbone.1', 'backbone.2']: its residual blocks
        ```
    """
    def children(prefix, m):
        return [(f'{prefix}.{n}' if prefix else n, c) for n, c in m.named_children()]

    def opens(m):  # plain containers are opened, except an nn.Sequential of single layers (a conv block)
        return type(m) in (nn.ModuleList, nn.ModuleDict) or (type(m) is nn.Sequential and not all(map(_is_leaf, m.children())))

    frontier = children('', module)
    while True:
        while any(opens(m) for _, m in frontier):
            frontier = [x for n, m in frontier for x in (children(n, m) if opens(m) else [(n, m)])]
        blocks = [(n, m) for n, m in frontier if _n_params(m) and not _is_leaf(m) and type(m) not in _CONTAINERS[1:]]
        if len(blocks) >= min_blocks or not blocks: return [n for n, _ in blocks]
        name, big = max(blocks, key=lambda b: _n_params(b[1]))
        i = next(i for i, (n, _) in enumerate(frontier) if n == name)
        frontier[i:i + 1] = children(name, big)


@contextlib.contextmanager
def _replay(bns: list[nn.Module], masks: list[tuple[PaddingAware, torch.Tensor | None]], block: nn.Module,
            attn: list[tuple[torch.Tensor | None, bool]]):
    """The recomputation's context: the forward's padding masks and attention masks (a TSiTPlus's, whose hooks are
    gone by the backward pass); BatchNorm running statistics put back as they were."""
    # (Turning track_running_stats off instead would change which tensors batch_norm saves, which checkpoint forbids.)
    stats = [[b.clone() for b in bn.buffers()] for bn in bns]
    prev_pa = [(pa, pa.pad_mask) for pa, _ in masks]
    stack = contextlib.ExitStack()
    try:
        for pa, m in masks: pa.pad_mask = m
        for kpm, causal in attn: stack.enter_context(AttentionMasks(block, causal)).key_padding_mask = kpm
        yield
    finally:
        stack.close()
        with torch.no_grad():
            for bn, saved in zip(bns, stats):
                for b, v in zip(bn.buffers(), saved): b.copy_(v)
        for pa, m in prev_pa: pa.pad_mask = m


def _checkpointed_forward(block: nn.Module):
    orig = block.forward  # the class's (or an already patched) forward, bound to the block
    bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    def forward(*args, **kwargs):
        if not (torch.is_grad_enabled() and block.training): return orig(*args, **kwargs)
        masks = [(pa, pa.pad_mask) for pa in installed(block)]  # the forward's masks, replayed in backward
        attn = [(am.key_padding_mask, am.causal) for am in attention_masks_over(block)]
        ctx = lambda: (contextlib.nullcontext(), _replay(bns, masks, block, attn))
        return checkpoint(orig, *args, use_reentrant=False, context_fn=ctx, **kwargs)
    forward._tsai_ssl_patch = True  # a copy of the module must not take it along (`tsai_ssl.ema`)
    return forward


def sub_blocks(block: nn.Module, prefix: str = '') -> list[str]:
    """The composite children of `block` with two or more layers (a conv-BN-ReLU ``ConvBlock``, not a lone conv)."""
    def n_layers(m): return sum(map(_is_leaf, m.modules()))
    out = []
    for n, c in block.named_children():
        name = f'{prefix}.{n}' if prefix else n
        if type(c) in (nn.ModuleList, nn.ModuleDict): out += sub_blocks(c, name)
        elif _n_params(c) and n_layers(c) >= 2 and not _is_leaf(c): out.append(name)
    return out


@contextlib.contextmanager
def checkpoint_blocks(module: nn.Module, blocks: list[str] | None = None, min_blocks: int = 3,
                      nested: bool = True) -> Iterator[list[str]]:
    """Inside the context, training-mode forwards of `module` with gradients keep only each block's input and
    recompute the block in the backward pass. Yields the names of the checkpointed modules.

    Args:
        blocks: names of modules of `module` to checkpoint (default `find_blocks`).
        nested: also checkpoint each default block's `sub_blocks` inside its recomputation (ResNetPlus: the
            conv-BN-ReLU blocks of each residual block), so that recomputing one block never holds all of its
            activations at once: less memory (ResNetPlus at 30720 steps: see docs/results.md) for a second
            recomputation of the sub-blocks.
    Eval mode and ``torch.no_grad()`` run exactly as without it. Restored on exit.

    Example:
        ```python
        with checkpoint_blocks(model) as names:     # ResNetPlus: ['backbone.0', ..., 'backbone.0.convblock1', ...]
            loss = loss_func(model(xb), yb)
            loss.backward()
        ```
    """
    if blocks is None:
        names = find_blocks(module, min_blocks)
        if nested: names += [f'{n}.{s}' for n in list(names) for s in sub_blocks(module.get_submodule(n))]
    else: names = list(blocks)
    if not names: raise ValueError(f'checkpoint_blocks found no blocks in {type(module).__name__}: pass blocks=[names].')
    mods = [module.get_submodule(n) for n in names]
    patched = []
    try:
        for m in mods:
            prev = m.__dict__.get('forward')
            m.forward = _checkpointed_forward(m)
            patched.append((m, prev))
        yield names
    finally:
        for m, prev in reversed(patched):
            if prev is None: m.__dict__.pop('forward', None)
            else: m.forward = prev


class MemorySaver(Callback):
    """fastai callback: activation checkpointing of the model's backbone blocks during fit (see `checkpoint_blocks`).

    Works with the pretext tasks (it runs after their model swap) and with ordinary fine-tuning. Peak training
    memory at long lengths drops 2.3-2.6x for ResNetPlus/InceptionTimePlus (``nested=False``: less saving, less
    recomputation; docs/results.md has the measured times).

    Args:
        blocks: names of modules of the classifier (``learn.model`` outside pretraining) to checkpoint
            (default: `find_blocks` of its backbone, and their `sub_blocks` when nested).
        min_blocks: see `find_blocks`.
        nested: see `checkpoint_blocks`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=[MaskedValuePretrain(save_as='ssl'), MemorySaver()])
        learn.fit_one_cycle(10, 1e-3)    # about 2.3x less peak memory at 30720 steps, the same weights
        ```
    """
    order = -3  # after a pretext task's swap (-5) and IgnorePadding (-4)

    def __init__(self, blocks: list[str] | None = None, min_blocks: int = 3, nested: bool = True):
        self.blocks, self.min_blocks, self.nested, self._ctx, self.names = blocks, min_blocks, nested, None, []
        self._guard = self._prev_do_epoch = None

    def before_fit(self):
        self._remove()
        model = self.learn.model
        task = next((cb for cb in self.learn.cbs if isinstance(cb, PretextTask) and cb.attached), None)
        if self.blocks is not None:  # names of the classifier's modules (a pretext model shares them)
            root, blocks = (task.classifier if task is not None else model), self.blocks
        else: root, blocks = (model.backbone if task is not None else split_backbone(model)), None
        self._ctx = checkpoint_blocks(root, blocks, self.min_blocks, self.nested)
        try: self.names = self._ctx.__enter__()
        except BaseException:
            self._ctx = None
            restore_tasks(self.learn); raise
        # fastai runs neither after_fit nor after_cancel_fit when another exception (KeyboardInterrupt, ...) leaves
        # an epoch: take the patches off then too, so the model never keeps them (they would break learn.export)
        learn, orig, self._prev_do_epoch = self.learn, self.learn._do_epoch, self.learn.__dict__.get('_do_epoch')
        def guarded_do_epoch():
            try: orig()
            except BaseException:
                self._remove(); raise
        self._guard = learn._do_epoch = guarded_do_epoch

    def _remove(self):
        if self._ctx is not None: self._ctx.__exit__(None, None, None)
        self._ctx = None
        learn = getattr(self, 'learn', None)
        if learn is not None and learn.__dict__.get('_do_epoch') is getattr(self, '_guard', None):
            if self._prev_do_epoch is None: learn.__dict__.pop('_do_epoch', None)
            else: learn._do_epoch = self._prev_do_epoch
        self._guard = None

    def after_fit(self): self._remove()
    def after_cancel_fit(self): self._remove()
