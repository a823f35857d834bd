"""The GPU path: every task, the memory saver, checkpoints and padding-aware inference on CUDA with fastai's
mixed precision (`to_fp16`). Skipped without CUDA; the CPU suite covers the same code in float32."""
import pytest
import torch
from conftest import ar_counts
from fastai.metrics import accuracy
from helpers import ALL_TASKS, fit_quiet
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import (
    Checkpoint,
    IgnorePadding,
    MaskedValuePretrain,
    MemorySaver,
    get_embeddings,
    get_ssl_dls,
    load_pretrained,
)
from tsai_ssl.tasks import task_names

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def _dls(n=48, labels=False, **kw):
    X, y = ar_counts(n, n_classes=2 if labels else 0, **kw)
    return get_ssl_dls(X, y if labels else None, splits=(range(n - 16), range(n - 16, n)), bs=16,
                       device=torch.device('cuda'), seed=0), X, y


@pytest.mark.parametrize('task', ALL_TASKS, ids=task_names())
def test_tasks_on_cuda_fp16(task):
    dls, X, y = _dls()
    learn = ts_learner(dls, ResNetPlus, cbs=[task(save_as='gpu_bb'), MemorySaver()]).to_fp16()
    fit_quiet(learn, 2)
    assert next(learn.model.parameters()).device.type == 'cuda'
    assert all(torch.isfinite(torch.tensor(v[:2])).all() for v in learn.recorder.values)
    dls_l, _, _ = _dls(labels=True)
    clf = ts_learner(dls_l, ResNetPlus, metrics=accuracy, cbs=IgnorePadding()).to_fp16()
    assert load_pretrained(clf, 'gpu_bb').transferred
    fit_quiet(clf, 1)
    probs, _ = clf.get_preds(dl=dls_l.test_dl(X[:5]))
    assert probs.shape == (5, 2) and torch.isfinite(probs).all()
    assert get_embeddings(learn, X[:5]).shape[0] == 5


def test_memory_saver_lowers_cuda_peak():
    dls, _, _ = _dls(min_len=4000, max_len=4000)
    peaks = []
    for saver in (False, True):
        learn = ts_learner(dls, ResNetPlus, cbs=[MaskedValuePretrain()] + ([MemorySaver()] if saver else [])).to_fp16()
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        fit_quiet(learn, 1)
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] < 0.75 * peaks[0]


def test_checkpoint_resume_on_cuda():
    class Stop(Checkpoint):
        def after_epoch(self):
            super().after_epoch()
            if self.epoch == 1: raise KeyboardInterrupt
    dls, _, _ = _dls()
    learn = ts_learner(dls, ResNetPlus, cbs=[MaskedValuePretrain(), Stop('gpu_ck')]).to_fp16()
    with pytest.raises(KeyboardInterrupt): fit_quiet(learn, 3)
    learn = ts_learner(dls, ResNetPlus, cbs=[MaskedValuePretrain(), Checkpoint('gpu_ck', resume=True)]).to_fp16()
    fit_quiet(learn, 3)
    assert len(learn.recorder.values) == 3 and torch.isfinite(torch.tensor(learn.recorder.values[-1][:2])).all()
