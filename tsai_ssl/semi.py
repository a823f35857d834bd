"""Semi-supervised fine-tuning: a pretext loss on unlabeled series stays on while the classifier trains.

    dls_u = get_ssl_dls(X_unlabeled, bs=32, max_len=1024)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy,
                     cbs=SemiSupervised(MaskedValuePretrain(n_values=41), dls_u.train, weight=1.))
    load_pretrained(clf, 'ssl_resnet')  # optional: start from pretrained weights as well
    clf.fit_one_cycle(40, 1e-3)

At every training step the callback takes the next batch of the unlabeled loader (cycling through it), turns it into
the task's inputs and targets, runs it through the classifier's own backbone and the task's head, and adds
``weight`` x the task's loss to the classifier's loss before the backward pass: one backward, one optimizer step,
both kinds of batch in one fit. That is how the semi-supervised methods that beat supervised CNNs on UCR at 10%
labels train (SemiTime, Fan et al., ICASSP 2021; TS-TFC, Liu et al., AAAI 2023): the pretext loss keeps the
backbone's features general while a few labels pull them toward the classes.

Validation and prediction see the classifier alone. The task's head joins the optimizer for the fit and leaves
after it (its optimizer state is kept for the next fit); an ``lr_find`` leaves the head as it found it.
The unlabeled loader's padding mask reaches the backbone through `PaddingAware`, as in pretraining. Pretext
batches leave BatchNorm's running statistics alone: they are the labeled series'.
Under ``learn.distrib_ctx()`` each process takes its own share of the unlabeled series (fastai's `DistributedDL`),
and the head's gradients are averaged over the processes (the backbone's are, by DDP).

``pseudo_threshold``: also a pseudo-label consistency term on the same unlabeled batch, as in FixMatch (Sohn et al.,
NeurIPS 2020): the classifier's prediction on the series as it is (the weak view, no gradient) becomes the target of
its prediction on a strongly augmented view (scaling, jitter, masked spans: `tsai_ssl.augment`) wherever its
confidence reaches the threshold; ``pseudo_weight`` x that cross-entropy (averaged over the whole batch: series below
the threshold count as 0) joins the loss. With ``task=None`` that term is the only one (plain FixMatch).
When `IgnorePadding` is attached, the classifier's unlabeled forwards ignore padding as its labeled ones do.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from fastai.callback.core import Callback, CancelEpochException, CancelFitException
from fastai.distributed import DistributedDL

from .augment import Compose, Jitter, Scaling, TimeMask
from .backbone import PretextModel, infer_c_in, split_backbone
from .data import batch_pad_mask, batch_raw_input, batch_series_index
from .losses import _dist_world_size
from .padding import IgnorePadding, PaddingAware, clean_input
from .tasks.base import PretextTask, _in_lr_find, add_to_opt, remove_from_opt

__all__ = ['SemiSupervised', 'default_strong_aug']


def _tuples(o):  # random.setstate needs the nested tuples back (a checkpoint stores lists)
    return tuple(_tuples(v) for v in o) if isinstance(o, (list, tuple)) else o


@contextlib.contextmanager
def _running_stats_untouched(model: nn.Module):
    """BatchNorm layers normalise with batch statistics but leave their running statistics alone. Two reasons: the
    classifier's forward of this step saved them for its backward (autograd checks that nothing changed them in
    place), and pretext inputs (masked spans, augmented views) are not what the classifier will be evaluated on."""
    saved = [(m, m.running_mean, m.running_var) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.running_mean is not None]
    for m, _, _ in saved: m.running_mean = m.running_var = None
    try: yield
    finally:
        for m, mean, var in saved: m.running_mean, m.running_var = mean, var


def default_strong_aug() -> Compose:
    "FixMatch's strong view for 1-D series: amplitude scaling, jitter and masked spans (the mean after standardizing)."
    return Compose([Scaling(0.2), Jitter(0.2), TimeMask(ratio=0.3, mean_span=10.)])


class SemiSupervised(Callback):
    """fastai callback: classifier loss on labeled batches + ``weight`` x a pretext task's loss on unlabeled ones
    (+ ``pseudo_weight`` x a FixMatch pseudo-label term with ``pseudo_threshold``).

    Args:
        task: a pretext task (`tsai_ssl.tasks`), used for its head, batches and loss only; it is not added to the
            Learner. Next-step prediction needs ``causal='shift'`` (the default): 'pad' would change the
            classifier's own layers for the whole fit. None: the pseudo-label term alone.
        unlabeled: a DataLoader of unlabeled series, e.g. ``get_ssl_dls(X_u, bs=32, max_len=1024).train``;
            its batch transforms should match the labeled loader's.
        weight: weight of the pretext loss.
        pseudo_threshold: confidence (max softmax probability) from which a prediction becomes a pseudo-label;
            None: no pseudo-label term. FixMatch uses 0.95.
        pseudo_weight: weight of the pseudo-label term.
        strong_aug: the strong view, an augmentation ``(x, pad_mask, generator) -> (x, pad_mask)`` that keeps the
            layout; None: `default_strong_aug`.

    Example:
        ```python
        dls_u = get_ssl_dls(X_unlabeled, bs=32, max_len=1024, batch_tfms=[TSStandardize()])
        semi = SemiSupervised(MaskedValuePretrain(n_values=41), dls_u.train, weight=1., pseudo_threshold=0.95)
        clf = ts_learner(dls, ResNetPlus, metrics=accuracy, cbs=semi)
        clf.load('ssl', strict=False, with_opt=False)
        clf.fit_one_cycle(20, 1e-3)
        ```
    """
    order = 5  # after_loss inside MixedPrecision's autocast (10), before its loss scaling in before_backward

    def __init__(self, task: PretextTask | None, unlabeled, weight: float = 1., pseudo_threshold: float | None = None,
                 pseudo_weight: float = 1., strong_aug=None):
        if task is None and pseudo_threshold is None: raise ValueError('give a task, a pseudo_threshold or both')
        if task is not None and not isinstance(task, PretextTask):
            raise TypeError(f'task must be a tsai_ssl pretext task or None, got {type(task).__name__}')
        if getattr(task, 'causal_mode', 'shift') != 'shift':
            raise ValueError("SemiSupervised runs next-step prediction with causal='shift' only: causal='pad' rewires "
                             "the classifier's layers for the whole fit")
        if weight < 0: raise ValueError(f'weight must be >= 0, got {weight}')
        if pseudo_threshold is not None and not 0 <= pseudo_threshold < 1:
            raise ValueError(f'pseudo_threshold must be in [0, 1), got {pseudo_threshold}')
        if pseudo_weight < 0: raise ValueError(f'pseudo_weight must be >= 0, got {pseudo_weight}')
        strong_aug = default_strong_aug() if strong_aug is None else strong_aug
        if getattr(strong_aug, 'changes_layout', False): raise ValueError('strong_aug must keep the layout (no crops)')
        self.task, self.unlabeled, self.weight = task, unlabeled, weight
        self.pseudo_threshold, self.pseudo_weight, self.strong_aug = pseudo_threshold, pseudo_weight, strong_aug
        self._it, self._pa, self._ctx, self._n_opt, self._head_state = None, None, None, None, {}
        self._model, self._lr_find_head, self._dl = None, None, unlabeled
        self._pass_rng, self._pos, self._resume = None, 0, None
        self.pretext_loss = None  # the last training batch's pretext loss (a float), for logging
        self.pseudo_loss = self.pseudo_share = None  # the last batch's pseudo-label loss and share above the threshold

    def before_fit(self):
        self.after_fit()  # left over from a fit that ended in an exception (fastai then runs no after_fit)
        self._dl = DistributedDL(self.unlabeled) if _dist_world_size() > 1 else self.unlabeled
        self._resume = None
        self._guard_epochs()
        if self.task is not None: self._set_up_task()

    def _guard_epochs(self):
        orig = self.learn._do_epoch
        def guarded_do_epoch():  # fastai runs no after_fit when an exception escapes an epoch: clean up here then
            try: orig()
            except BaseException as e:
                if not isinstance(e, (CancelFitException, CancelEpochException)): self.after_fit()
                raise
        self.learn._do_epoch = guarded_do_epoch

    def _set_up_task(self):
        t, clf = self.task, self.learn.model
        t.learn = self.learn  # what the task reads of it: the loader's channels, the model (it gets no events)
        bb = split_backbone(clf)
        p = next(clf.parameters())
        t.pretext_backbone = bb  # before make_head: a task with an EMA teacher copies it there
        if t.pretext_head is None: t.pretext_head = t.make_head(bb.nf, getattr(self.dls, 'vars', None) or infer_c_in(clf))
        t.pretext_head.to(p.device)
        self._ctx = t.wrap_backbone(bb)  # next-step: measures the look-ahead it shifts by
        self._ctx.__enter__()
        self._pa = PaddingAware(bb).__enter__() if t.pad_aware else None
        self._model = PretextModel(bb, t.pretext_head, self._pa)
        self._n_opt = add_to_opt(self.learn, list(t.pretext_head.parameters()), self._head_state)
        # an LR sweep leaves the head and the task's state (an EMA teacher, a queue) as it found them
        self._lr_find_head = (copy.deepcopy((t.pretext_head.state_dict(), t.state_dict())) if _in_lr_find(self.learn)
                              else None)

    def _next_batch(self):
        if self._it is None: self._start_pass()
        try: b = next(self._it)
        except StopIteration:
            self._start_pass()
            b = next(self._it)
        self._pos += 1
        return b

    def _start_pass(self, rng_state=None, skip: int = 0):
        "A new pass over the unlabeled loader (from a saved shuffling state, `skip` batches in, when resuming)."
        dl = getattr(self._dl, 'dl', self._dl)  # DistributedDL shuffles with the loader it wraps
        if rng_state is not None: dl.rng.setstate(rng_state)
        self._pass_rng, self._pos = dl.rng.getstate(), 0
        self._it = iter(self._dl)
        for _ in range(skip): next(self._it); self._pos += 1

    def loader_state(self) -> dict | None:
        "Where the unlabeled loader is (shuffling state of this pass, batches taken), for `Checkpoint`."
        return None if self._it is None else dict(rng=self._pass_rng, pos=self._pos)

    def load_loader_state(self, st: dict | None) -> None:
        "Continue the unlabeled loader where `loader_state` was taken (the next fit's first batch follows)."
        self._resume = st

    def after_loss(self):
        pseudo = self.pseudo_threshold is not None and self.pseudo_weight > 0
        if not self.training or not ((self.task is not None and self.weight > 0) or pseudo): return
        dl = self._dl
        if self._resume is not None:  # a resumed Checkpoint run: the unlabeled batches of the interrupted one
            st, self._resume = self._resume, None
            # torch's DataLoader draws a seed from the global generator for each new iterator: the interrupted run
            # drew it at the start of this pass, before the checkpoint's random state was taken
            with torch.random.fork_rng(devices=[]): self._start_pass(_tuples(st['rng']), st['pos'])
        b = self._next_batch()
        x = b[0] if isinstance(b, (tuple, list)) else b
        dev = next(self.learn.model.parameters()).device
        raw = batch_raw_input(dl, x).as_subclass(torch.Tensor).to(dev)
        pm = batch_pad_mask(dl, x)
        x, pad_mask = clean_input(x.as_subclass(torch.Tensor).to(dev), None if pm is None else pm.to(dev))
        if self.task is not None and self.weight > 0:
            t = self.task
            idxs = batch_series_index(dl)
            t.series_index = lambda i: None if idxs is None else int(idxs[i])  # errors name the unlabeled series
            self._model.train(self.learn.model.training)
            xb, yb = t.make_batch(x, pad_mask, raw, None)
            with _running_stats_untouched(self._model): loss = t.loss(self._model(*xb), *yb)
            self.pretext_loss = float(loss.detach())
            self.learn.loss_grad = self.learn.loss_grad + self.weight * loss
        if pseudo: self.learn.loss_grad = self.learn.loss_grad + self.pseudo_weight * self._pseudo_loss(x, pad_mask)

    def _classify(self, x, pad_mask):
        "The classifier's logits, with the padding mask of `x` when `IgnorePadding` covers the classifier."
        ip = next((cb for cb in self.learn.cbs if isinstance(cb, IgnorePadding)), None)
        pa = ip._pa if ip is not None and ip._pretext is None else None
        if pa is None: return self.learn.model(x)
        attn = ip._attn  # a TSiTPlus: its attention's key padding mask, set by model_input
        old, old_kpm = pa.pad_mask, attn.key_padding_mask if attn is not None else None
        inp, pa.pad_mask = ip.model_input(x, pad_mask)  # a Transformer: padded to its seq_len
        try: return self.learn.model(inp)
        finally:
            pa.pad_mask = old
            if attn is not None: attn.key_padding_mask = old_kpm

    def _pseudo_loss(self, x, pad_mask):
        "FixMatch: the confident predictions on `x` are the targets of the predictions on a strong view of `x`."
        model = self.learn.model
        with _running_stats_untouched(model):
            with torch.no_grad(): prob = torch.softmax(self._classify(x, pad_mask).float(), -1)
            conf, target = prob.max(-1)
            keep = (conf >= self.pseudo_threshold).float()
            xs, _ = self.strong_aug(x, pad_mask)
            if pad_mask is not None: xs = xs.masked_fill(~pad_mask[:, None], 0.)
            ce = nn.functional.cross_entropy(self._classify(xs, pad_mask).float(), target, reduction='none')
        loss = (ce * keep).mean()
        self.pseudo_loss, self.pseudo_share = float(loss.detach()), float(keep.mean())
        return loss

    def after_step(self):
        if self.task is not None and self.task.pretext_head is not None and self.weight > 0: self.task.optimizer_stepped()

    def after_backward(self):
        if _dist_world_size() < 2 or self.task is None or self.task.pretext_head is None: return
        for p in self.task.pretext_head.parameters():  # not in the DDP module: average its gradients by hand
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= _dist_world_size()

    def after_fit(self):
        self.learn.__dict__.pop('_do_epoch', None)
        remove_from_opt(self.learn, self._n_opt, self._head_state)
        self._n_opt = None
        if self._pa is not None: self._pa.__exit__(None, None, None)
        if self._ctx is not None: self._ctx.__exit__(None, None, None)
        self._pa = self._ctx = None
        if self._lr_find_head is not None and self.task is not None:
            head, state = self._lr_find_head
            self.task.pretext_head.load_state_dict(head); self.task.load_state_dict(state)
        self._lr_find_head, self._it = None, None
        if self.task is not None: self.task.__dict__.pop('series_index', None)  # the unlabeled batch's lookup
