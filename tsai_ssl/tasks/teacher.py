"""What the tasks with an EMA teacher share (MoCo, BYOL): the teacher's lifecycle around a two-view task.

* The teacher (`tsai_ssl.ema.EMATeacher`) is a copy of the backbone and of the part of the head it mirrors
  (`TeacherTask.teacher_head`), made with the head on the first fit and kept across fits like the head.
* Its outputs on the two views are targets: `TeacherTask.make_batch` appends them to ``yb`` (no gradient), so the
  loss, the metric, `PretextTask.pretext_batch` and `tsai_ssl.SemiSupervised` all see them without extra events. Under
  ``to_fp16`` the teacher runs inside fastai's autocast (entered at ``before_batch``, before this task's event).
* After every optimizer step (`PretextTask.optimizer_stepped`, called by this task's ``after_step`` and by
  `SemiSupervised`), the teacher moves toward the student with the momentum of `tsai_ssl.ema.momentum_at`.
* ``state_dict`` holds the teacher (and a subclass's queue), so `tsai_ssl.Checkpoint` resumes it exactly; an
  ``lr_find`` leaves the teacher as it found it, as fastai's `LRFinder` does with the model.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..ema import EMATeacher, momentum_at
from ..losses import _dist_world_size as _world_size
from .base import _in_lr_find
from .contrastive import default_view_augs
from .two_view import TwoViewTask

__all__ = ['TeacherTask']


class TeacherTask(TwoViewTask):
    """Base of the two-view tasks with an EMA teacher; see the module docstring. Subclasses implement
    `make_student_head`, `loss` and optionally `teacher_head` (default: the whole head).

    Args:
        augs: augmentations applied independently to each view; None = `default_view_augs`.
        momentum: EMA momentum of the teacher (at the start of training with the 'cosine' schedule).
        momentum_schedule: 'constant' or 'cosine' (BYOL: from `momentum` to 1 over the fit).
        window: first cut every series longer than this to a random window (None: no cut).
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask` (the teacher follows it).
    """

    def __init__(self, augs: Sequence[Callable] | Callable | None = None, momentum: float = 0.99,
                 momentum_schedule: str = 'constant', window: int | None = None, save_as: str | Path | None = None,
                 save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(augs=augs, window=window, save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        momentum_at(momentum, 0., momentum_schedule)  # checks both
        self.momentum, self.momentum_schedule = momentum, momentum_schedule
        self.teacher: EMATeacher | None = None
        self._pending_teacher, self._lr_find_state, self._synced = None, None, False

    def default_augs(self) -> list: return default_view_augs()

    # -- to implement ------------------------------------------------------------------------------------
    def make_student_head(self, nf: int) -> nn.Module: raise NotImplementedError
    def teacher_head(self, head: nn.Module) -> nn.Module:
        "The part of the student's head that the teacher copies and follows."
        return head

    # -- the teacher ---------------------------------------------------------------------------------------
    def make_head(self, nf, c_in):
        head = self.make_student_head(nf)
        # the backbone is not padding-aware yet (PretextTask enters PaddingAware after make_head): a clean copy
        self.teacher = EMATeacher(self.pretext_backbone, self.teacher_head(head), pad_aware=self.pad_aware)
        if self._pending_teacher is not None:
            self.teacher.load_state_dict(self._pending_teacher); self._pending_teacher = None
        self._synced = False  # SemiSupervised makes the head (and the teacher) without a before_fit of the task
        return head

    def make_batch(self, x, pad_mask, raw, generator):
        xb, yb = super().make_batch(x, pad_mask, raw, generator)
        t = self.teacher
        if next(t.parameters()).device != xb[0].device: t.to(xb[0].device)
        training = self._student_training()
        if training and not self._synced and torch.is_grad_enabled(): self._sync_teacher()
        t.train(training)
        return xb, (*yb, t(*xb))  # (2bs, d): the teacher's outputs on [views 1; views 2]

    def _student_training(self) -> bool:
        "The student's mode: that of its backbone's layers (eval inside `pretext_batch`, whatever the classifier's)."
        first = next(iter(self.pretext_backbone.children()), None) if self.pretext_backbone is not None else None
        return bool(first.training) if first is not None else True

    def _sync_teacher(self) -> None:
        """Under DDP, rank 0's teacher on every process, once per fit at the first training batch: the teacher was
        copied before DDP broadcast rank 0's student, so processes whose models started apart would keep apart
        teachers (the EMA only shrinks the gap by the momentum per step)."""
        self._synced = True
        if _world_size() < 2: return
        for v in self.teacher.state_dict().values(): torch.distributed.broadcast(v, 0)

    def optimizer_stepped(self) -> None:
        m = momentum_at(self.momentum, float(getattr(self.learn, 'pct_train', 0.)), self.momentum_schedule)
        self.teacher.update([self.pretext_backbone, self.teacher_head(self.pretext_head)], m)

    # -- fit lifecycle -------------------------------------------------------------------------------------
    def before_fit(self):
        super().before_fit()
        self._synced = False
        self._lr_find_state = copy.deepcopy(self.state_dict()) if _in_lr_find(self.learn) else None

    def _restore(self):
        was = self.attached
        super()._restore()
        if was and self._lr_find_state is not None:
            state, self._lr_find_state = self._lr_find_state, None
            self.load_state_dict(state)

    def state_dict(self) -> dict:
        st = super().state_dict()
        if self.teacher is not None: st['teacher'] = {k: v.clone() for k, v in self.teacher.state_dict().items()}
        return st

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get('teacher') is None: return
        if self.teacher is None: self._pending_teacher = state['teacher']; return  # applied when it is made
        dev = next(self.teacher.parameters()).device
        self.teacher.load_state_dict({k: v.to(dev) for k, v in state['teacher'].items()})

    # -- the metric ----------------------------------------------------------------------------------------
    def _correct(self, pred, *yb):
        "Queries whose most similar teacher output (of the batch's other view) is their own series': count and total."
        z = nn.functional.normalize(pred.detach().float(), dim=1)
        t = nn.functional.normalize(yb[-1].detach().float(), dim=1)
        n = z.shape[0] // 2
        hits = ((z[:n] @ t[n:].T).argmax(1) == torch.arange(n, device=z.device)).sum()
        hits = hits + ((z[n:] @ t[:n].T).argmax(1) == torch.arange(n, device=z.device)).sum()
        return hits, 2 * n
