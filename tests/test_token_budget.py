"""Token-budget batches (`get_ssl_dls(..., max_tokens=N)`): the budget holds, every series is seen once per epoch,
the length fastai reads before an epoch is the epoch's, padding stays small, and every task trains on them."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import ALL_TASKS, fit_quiet
from tsai.learner import ts_learner
from tsai.models.ResNetPlus import ResNetPlus

import tsai_ssl.data as D
from tsai_ssl.data import get_ssl_dls


def _loguniform(n, lo=512, hi=30720, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 41, (1, int(np.exp(rng.uniform(np.log(lo), np.log(hi)))))).astype(np.uint8) for _ in range(n)]


def _epoch(dl):
    "Batches of one epoch: (number of series, padded length, dataset indices)."
    out = []
    for b in dl: out.append((b[0].shape[0], b[0].shape[-1], dl.batch_idxs.tolist()))
    return out


@pytest.mark.parametrize('bs, max_tokens', [(16, 32768), (64, 65536), (4, 10 ** 6), (16, 1000)])
def test_budget_cap_and_every_series_once(bs, max_tokens):
    X = _loguniform(80)
    dl = get_ssl_dls(X, bs=bs, max_tokens=max_tokens, seed=0).train
    epochs = []
    for _ in range(2):
        n_before = len(dl)  # what fastai reads before iterating
        ep = _epoch(dl)
        assert len(ep) == n_before
        for n, L, _ in ep:
            assert n <= bs and (n * L <= max_tokens or n == 1)  # over budget only alone
        idx = [i for _, _, ids in ep for i in ids]
        assert sorted(idx) == list(range(80))
        epochs.append(idx)
    assert epochs[0] != epochs[1]  # shuffled anew every epoch


def test_padding_stays_small_where_fixed_batches_pad_a_quarter():
    "The issue's case: 80 series, log-uniform 512..30720 steps, at most 16 per batch."
    X = _loguniform(80)
    fixed = get_ssl_dls(X, bs=16, seed=0).train.padded_fraction()
    budget = get_ssl_dls(X, bs=16, max_tokens=16 * 2048, seed=0).train
    assert fixed > 0.2 and budget.padded_fraction() < 0.10
    sizes = budget.batch_sizes()
    assert sum(sizes) == 80 and max(sizes) > 1


def test_same_seed_same_plan_and_crops_count_cropped_lengths():
    X = _loguniform(40, seed=1)
    a = [ids for _, _, ids in _epoch(get_ssl_dls(X, bs=8, max_tokens=8192, seed=3).train)]
    b = [ids for _, _, ids in _epoch(get_ssl_dls(X, bs=8, max_tokens=8192, seed=3).train)]
    assert a == b
    dl = get_ssl_dls(X, bs=8, max_tokens=4096, max_len=1024, seed=0).train  # crops: every series is <= 1024 steps
    ep = _epoch(dl)
    assert all(L <= 1024 and n * L <= 4096 for n, L, _ in ep) and max(n for n, _, _ in ep) >= 4


def test_validation_and_test_loaders_follow_the_budget():
    X = _loguniform(30, lo=100, hi=3000, seed=2)
    y = np.arange(30) % 2
    dls = get_ssl_dls(X, y, splits=(range(20), range(20, 30)), bs=8, max_tokens=2000, seed=0)
    assert all(n * L <= 2000 or n == 1 for n, L, _ in _epoch(dls.valid))
    Xt = [np.ones((1, 500))] * 6 + [np.ones((1, 200))] * 6  # two lengths, six each
    td = dls.test_dl(Xt)
    shapes = [(b[0].shape[0], b[0].shape[-1]) for b in td]
    assert sorted(shapes) == sorted([(4, 500), (2, 500), (6, 200)])  # exact lengths, at most 2000 // 500 = 4 of 500
    assert len(td) == 3


def test_loader_length_is_right_before_and_during_an_epoch():
    X = _loguniform(50, seed=4)
    dl = get_ssl_dls(X, bs=16, max_tokens=20000, seed=0).train
    n = len(dl)
    it = iter(dl)
    next(it)
    assert len(dl) == n  # during the epoch: its own plan, not the next one's
    rest = sum(1 for _ in it)
    assert rest == n - 1


def test_every_task_trains_on_token_budget_batches():
    X = _loguniform(24, lo=48, hi=400, seed=5)
    for Task in ALL_TASKS:
        dls = get_ssl_dls(X, splits=(range(16), range(16, 24)), bs=8, max_tokens=1200, seed=0)
        learn = ts_learner(dls, ResNetPlus, nf=8, cbs=Task())
        fit_quiet(learn, 1)
        assert all(np.isfinite(v) for v in learn.recorder.values[-1][:2]), Task.__name__


# ----------------------------------------------------------------------------------------------------
# two processes (fastai's DistributedDL, gloo)
# ----------------------------------------------------------------------------------------------------
def test_distributed_order_gives_each_process_whole_batches(monkeypatch):
    "The order DistributedDL slices: equal shares, each a whole number of batches, as many on every process."
    plan = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5]), np.array([6, 7, 8, 9]), np.array([10])]
    split = D._split_to_multiple(plan, 2)
    assert len(split) == 6 and sorted(int(i) for b in split for i in b) == list(range(11))  # no series twice
    order = D._distributed_order(split, 2)
    half = len(order) // 2
    assert len(order) % 2 == 0
    for share, mine in zip((order[:half], order[half:]), (split[0::2], split[1::2])):
        assert share.count(D._END) == 3 and [i for i in share if i >= 0] == [int(i) for b in mine for i in b]
    assert len(D._split_to_multiple([np.array([0]), np.array([1]), np.array([2])], 2)) == 4  # singletons: repeat


WORLD = 2


def _ddp_worker(rank, port, out_dir):
    import json
    import os
    import sys

    import torch
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    if sys.platform.startswith('linux'): os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings('ignore')
    from fastai.distributed import DistributedDL
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    from tsai_ssl import MaskedValuePretrain, get_ssl_dls

    def broadcast_cpu(self, t, src):  # fastai broadcasts a CUDA tensor (NCCL); gloo takes a CPU one
        t = torch.LongTensor(t)
        torch.distributed.broadcast(t, src)
        return t.tolist()
    DistributedDL._broadcast = broadcast_cpu
    torch.distributed.init_process_group('gloo')
    X = _loguniform(60, lo=64, hi=2000, seed=0)
    dls = get_ssl_dls(X, splits=(range(48), range(48, 60)), bs=16, max_tokens=4000, seed=0)
    ddl = DistributedDL(dls.train)
    res = dict(len=len(ddl), epochs=[])
    for _ in range(2):
        res['epochs'].append([(b[0].shape[0], b[0].shape[-1], dls.train.batch_idxs.tolist()) for b in ddl])
    learn = ts_learner(get_ssl_dls(X, splits=(range(48), range(48, 60)), bs=16, max_tokens=4000, seed=0, drop_last=True),
                       ResNetPlus, nf=8, cbs=MaskedValuePretrain())
    with learn.distrib_ctx(sync_bn=False, cpu=True):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    res['fit'] = [float(v) for v in learn.recorder.values[-1][:2]]
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f: json.dump(res, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_token_budgets_under_two_processes(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as sk:
        sk.bind(('127.0.0.1', 0)); port = sk.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(WORLD))
    for e in range(2):
        b0, b1 = r0['epochs'][e], r1['epochs'][e]
        assert len(b0) == len(b1) == r0['len'] == r1['len']  # the same number of batches: no process waits forever
        seen = [i for _, _, ids in b0 + b1 for i in ids]
        assert sorted(seen) == list(range(48))  # every training series once, on one process
        assert all(n <= 16 and (n * L <= 4000 or n == 1) for n, L, _ in b0 + b1)
    assert r0['epochs'][0] != r0['epochs'][1]
    assert r0['fit'] == pytest.approx(r1['fit'], rel=1e-6) and all(v == v for v in r0['fit'])


def test_bad_budget():
    with pytest.raises(ValueError, match='max_tokens must be >= 1'): get_ssl_dls(_loguniform(4), bs=2, max_tokens=0)
