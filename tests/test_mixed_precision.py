"""Mixed precision on the CPU: every task under autocast, as fastai's `to_fp16` runs them on a GPU.

fastai's `MixedPrecision` hard-codes CUDA autocast, so on a CPU-only machine `to_fp16()` changes nothing and
`tests/test_gpu.py` is skipped. `CPUAutocast` enters CPU autocast (bfloat16) at the same events as
`MixedPrecision` (``before_batch`` .. ``after_loss``), which exercises what breaks under mixed precision: half
precision activations reaching the pretext heads, losses, padding-aware BatchNorm, the memory saver's recomputation
and the metrics. GradScaler (fp16 loss scaling) is not covered: it needs CUDA."""
import pytest
import torch
from conftest import ar_counts
from fastai.callback.core import Callback
from fastai.metrics import accuracy
from helpers import ALL_TASKS, fit_quiet
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import (
    IgnorePadding,
    MemorySaver,
    get_ssl_dls,
    load_pretrained,
)
from tsai_ssl.tasks import task_names


class CPUAutocast(Callback):
    "bfloat16 autocast on the CPU at `MixedPrecision`'s events (forward and loss; backward and step outside)."
    order = 10  # as fastai's MixedPrecision: after the pretext task has built the batch

    def before_fit(self): self.ctx, self.dtypes = None, []

    def before_batch(self):
        self.ctx = torch.autocast('cpu', dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_pred(self):
        p = self.learn.pred
        p = p if torch.is_tensor(p) else p[0]  # a tuple: the VAE's (out, mu, logvar)
        self.dtypes.append(p.dtype if torch.is_tensor(p) else None)

    def after_loss(self): self._exit()
    def after_cancel_batch(self): self._exit()  # cancelled before after_loss: leave autocast all the same

    def _exit(self):
        if self.ctx is not None: self.ctx.__exit__(None, None, None)
        self.ctx = None


def _dls(n=40, labels=False):
    X, y = ar_counts(n, n_classes=2 if labels else 0, min_len=48, max_len=160)
    return get_ssl_dls(X, y if labels else None, splits=(range(n - 12), range(n - 12, n)), bs=12, seed=0), X, y


@pytest.mark.parametrize('task', ALL_TASKS, ids=task_names())
@pytest.mark.parametrize('saver', [False, True])
def test_tasks_under_autocast(task, saver, tmp_path):
    dls, X, y = _dls()
    ac = CPUAutocast()
    learn = ts_learner(dls, ResNetPlus, cbs=[task(save_as=tmp_path / 'bb'), ac] + ([MemorySaver()] if saver else []))
    fit_quiet(learn, 2)
    assert torch.bfloat16 in ac.dtypes  # the forward really ran in half precision
    assert all(torch.isfinite(torch.tensor(v[:2])).all() for v in learn.recorder.values)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in learn.model.parameters())
    assert not torch.is_autocast_enabled('cpu')  # left as found
    # the weights transfer into a classifier fine-tuned (padding-aware) under autocast too
    dls_l, _, _ = _dls(labels=True)
    clf = ts_learner(dls_l, ResNetPlus, metrics=accuracy, cbs=[IgnorePadding(), CPUAutocast()])
    assert load_pretrained(clf, tmp_path / 'bb').transferred
    fit_quiet(clf, 1)
    probs, _ = clf.get_preds(dl=dls_l.test_dl(X[:5]))
    assert probs.shape == (5, 2) and torch.isfinite(probs).all()
