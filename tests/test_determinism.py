"Same seed and data give identical losses on CPU, for every task (fastai's set_seed + the loaders' own rng)."
import pytest
from fastai.torch_core import set_seed
from helpers import ALL_TASKS, fit_quiet, unlabeled_dls
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl.tasks import task_names


@pytest.mark.parametrize('task', ALL_TASKS, ids=task_names())
def test_same_seed_same_losses(task):
    runs = []
    for _ in range(2):
        set_seed(0, reproducible=True)
        dls = unlabeled_dls(n=32, bs=8)
        dls.train.rng.seed(0)
        learn = ts_learner(dls, ResNetPlus, cbs=task())
        fit_quiet(learn, 2)
        runs.append([v[:2] for v in learn.recorder.values])
    assert runs[0] == runs[1]
