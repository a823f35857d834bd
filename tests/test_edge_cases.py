"Rows of the bad-input matrix (issue 8) that span several modules: a single series, a too-short series for a task."
import numpy as np
import pytest
import torch
from helpers import fit_quiet
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

from tsai_ssl import ContrastivePretrain, MaskedValuePretrain, NextStepPretrain, get_ssl_dls


@pytest.mark.parametrize('task', [MaskedValuePretrain, NextStepPretrain])
def test_single_series_trains(task):
    X = [np.random.default_rng(0).integers(0, 41, (1, 64)).astype(np.uint8)]
    learn = ts_learner(get_ssl_dls(X, bs=8), ResNetPlus, cbs=task(save_as='one'))
    fit_quiet(learn, 1)
    assert np.isfinite(learn.recorder.values[-1][0])
    assert (learn.path / learn.model_dir / 'one.pth').exists()  # no validation set: the last epoch is saved


def test_single_series_contrastive_warns_and_leaves_learner_usable():
    X = [np.random.default_rng(0).integers(0, 41, (1, 64)).astype(np.uint8)]
    learn = ts_learner(get_ssl_dls(X, bs=8), ResNetPlus, cbs=ContrastivePretrain())
    clf = learn.model
    with pytest.warns(UserWarning, match='no negatives'):
        fit_quiet(learn, 1)
    assert learn.model is clf


def test_next_step_series_shorter_than_the_lookahead_warns():
    "causal='shift' predicts from the output R steps back: 16-step series under ResNetPlus (R=18) give no targets."
    X = [np.random.default_rng(i).integers(0, 41, (1, 16)).astype(np.uint8) for i in range(8)]
    learn = ts_learner(get_ssl_dls(X, bs=4), ResNetPlus, cbs=NextStepPretrain())
    with pytest.warns(UserWarning, match="causal='pad'"): fit_quiet(learn, 1)


@pytest.mark.parametrize('n_values', [41, None])
def test_next_step_horizon_longer_than_series(n_values):
    "Horizon 20 on 16-step series: targets 16+ steps ahead do not exist and are not scored; the nearer ones train."
    X = [np.random.default_rng(i).integers(0, 41, (1, 16)).astype(np.uint8) for i in range(8)]
    task = NextStepPretrain(horizon=20, n_values=n_values, causal='pad')  # 'shift' has no prediction before step 18
    learn = ts_learner(get_ssl_dls(X, bs=4), ResNetPlus, cbs=task)
    fit_quiet(learn, 1)
    assert np.isfinite(learn.recorder.values[-1][0]) and learn.recorder.values[-1][0] > 0
    x = torch.tensor(np.stack(X[:2]), dtype=torch.float32)
    (xb, _), yb = task.make_batch(x, None, x, None)
    if n_values: assert (yb[0][:, 15:] == -100).all() and (yb[0][:, :15] != -100).any()
    assert not task.attached
