"""An EMA teacher: a copy of the student network that follows it by an exponential moving average of its weights.

MoCo's key encoder (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020) and
BYOL's target network (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020) are this one piece:

    teacher = EMATeacher(backbone, projection)           # deep copies, never in the optimizer (requires_grad False)
    keys = teacher(x, pad_mask)                           # no gradient
    teacher.update([backbone, projection], momentum=0.99)  # after every optimizer step: t <- m t + (1 - m) s

Design choices, and why:

* Parameters follow the student; buffers (BatchNorm's running statistics) come from the teacher's own forwards, as in
  both papers' reference code. The teacher runs in the student's mode (train: batch statistics), so it sees the
  same kind of normalisation the student does.
* The teacher is padding-aware like the student (`tsai_ssl.padding.PaddingAware`, installed for each forward), so a
  series' key does not depend on its batch neighbours' lengths.
* Under DDP every process holds the same student after each step (DDP averages the gradients), so the same update
  keeps equal teachers equal without communication; the tasks broadcast rank 0's teacher once, at the first
  training batch of a fit (`tsai_ssl.tasks.teacher`), since it is copied before DDP broadcasts the student.
* ``momentum_at(base, pct, 'cosine')`` is BYOL's schedule, from ``base`` at the start of training to 1 at the end.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
import torch.nn as nn

from .padding import PaddingAware

__all__ = ['EMATeacher', 'momentum_at']


def momentum_at(base: float, pct: float, schedule: str = 'constant') -> float:
    """The EMA momentum at training progress `pct` (0..1): `base` throughout ('constant', MoCo), or BYOL's cosine
    increase ``1 - (1 - base) (cos(pi pct) + 1) / 2`` ('cosine': `base` at 0, 1 at 1).

    Example:
        ```python
        momentum_at(0.99, 0.5, 'cosine')   # 0.995
        ```
    """
    if not 0 <= base <= 1: raise ValueError(f'momentum must be in [0, 1], got {base}')
    if schedule == 'constant': return float(base)
    if schedule == 'cosine': return float(1 - (1 - base) * (math.cos(math.pi * min(max(pct, 0.), 1.)) + 1) / 2)
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")


def _copy_without_hooks(m: nn.Module) -> nn.Module:
    """A deep copy of `m` without what tsai-ssl put on its modules (a `PaddingAware`'s hooks and patched BatchNorm
    forwards, `MemorySaver`'s checkpointed forwards): copied, they would still act on the student's masks and
    layers. Hooks of others stay (weight norm in tsai's TCN recomputes the copy's weight from its own parameters);
    a tensor attribute with a gradient history (that weight, after a forward) is copied detached."""
    from .padding import _OWNERS
    saved = []  # (module, what was taken off, to put back)
    for mod in m.modules():
        ours = {h.id for pa in _OWNERS.get(mod, ()) for h in pa._handles}
        pre = {k: v for k, v in mod._forward_pre_hooks.items() if k in ours}
        post = {k: v for k, v in mod._forward_hooks.items() if k in ours}
        for k in pre: del mod._forward_pre_hooks[k]
        for k in post: del mod._forward_hooks[k]
        fwd = mod.__dict__.get('forward')
        if not getattr(fwd, '_tsai_ssl_patch', False): fwd = None
        else: del mod.__dict__['forward']
        graph = {k: v for k, v in mod.__dict__.items() if isinstance(v, torch.Tensor) and v.grad_fn is not None}
        for k, v in graph.items(): mod.__dict__[k] = v.detach()
        saved.append((mod, pre, post, fwd, graph))
    try: return copy.deepcopy(m)
    finally:
        for mod, pre, post, fwd, graph in saved:
            mod._forward_pre_hooks.update(pre); mod._forward_hooks.update(post)  # ids keep their order (increasing)
            for d in (mod._forward_pre_hooks, mod._forward_hooks):
                for k in sorted(d): d.move_to_end(k)
            if fwd is not None: mod.forward = fwd
            mod.__dict__.update(graph)


class EMATeacher(nn.Module):
    """A frozen copy of ``modules`` (e.g. the backbone and the projection head) updated only by `update`.

    ``forward(x (bs, C, L), pad_mask (bs, L) | None, *head_args) -> head(backbone(x), *head_args)``, the call of
    `tsai_ssl.backbone.PretextModel`, so ``teacher(*learn.xb)`` mirrors ``learn.model(*learn.xb)``; the backbone runs
    padding-aware with `pad_mask` when ``pad_aware``. No gradient.

    Args:
        backbone: the student's backbone (copied; the student is untouched).
        head: the student's projection (copied), or None.
        pad_aware: run the copied backbone padding-aware.

    Example:
        ```python
        from tsai_ssl.tasks.contrastive import ProjectionHead
        bb = split_backbone(ResNetPlus(1, 5))
        head = ProjectionHead(bb.nf)
        teacher = EMATeacher(bb, head)
        z = teacher(torch.randn(4, 1, 64))             # (4, 128), no gradient
        teacher.update([bb, head], momentum=0.99)      # after each optimizer step
        ```
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None, pad_aware: bool = True):
        super().__init__()
        self.backbone = _copy_without_hooks(backbone)
        self.head = _copy_without_hooks(head) if head is not None else None
        self.requires_grad_(False)
        self.pad_aware = pad_aware

    @torch.no_grad()
    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None, *head_args) -> torch.Tensor:
        if self.pad_aware and pad_mask is not None:
            with PaddingAware(self.backbone) as pa:
                pa.pad_mask = pad_mask
                h = self.backbone(x)
        else: h = self.backbone(x)
        return h if self.head is None else self.head(h, *head_args)

    @torch.no_grad()
    def update(self, student: nn.Module | Iterable[nn.Module], momentum: float) -> None:
        """``t <- momentum * t + (1 - momentum) * s`` for every parameter, `student` being the modules the teacher was
        copied from, in the same order (backbone, then head)."""
        mods = [student] if isinstance(student, nn.Module) else list(student)
        s_params = [p for m in mods for p in m.parameters()]
        t_params = list(self.parameters())
        if len(s_params) != len(t_params) or any(a.shape != b.shape for a, b in zip(s_params, t_params)):
            raise ValueError('The student does not have the parameters the teacher was copied from: pass the same '
                             'modules, in the same order (backbone, then head).')
        for t, s in zip(t_params, s_params): t.lerp_(s.detach().to(t.dtype), 1. - momentum)  # t + (1-m)(s - t)
