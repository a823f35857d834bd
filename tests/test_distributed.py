"""`learn.distrib_ctx()` end to end: two CPU processes (gloo) pretrain with each task under fastai's
`DistributedTrainer` (DDP via accelerate), as several GPUs would.

On CPU fastai needs ``learn.distrib_ctx(sync_bn=False, cpu=True)`` (SyncBatchNorm is GPU-only; accelerate only
starts CPU processes with ``cpu=True``), and its `DistributedDL` broadcasts the shuffled indices as a CUDA tensor
(NCCL only takes those), which is patched here to a CPU tensor for gloo."""
import json
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
TASKS = ['MaskedValuePretrain', 'NextStepPretrain', 'ContrastivePretrain', 'MoCoPretrain', 'BYOLPretrain']


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    if sys.platform.startswith('linux'): os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings('ignore')
    from conftest import ar_counts
    from fastai.distributed import DistributedDL
    from fastai.torch_core import set_seed
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    import tsai_ssl
    from tsai_ssl import get_ssl_dls

    def broadcast_cpu(self, t, src):
        t = torch.LongTensor(t)
        torch.distributed.broadcast(t, src)
        return t.tolist()
    DistributedDL._broadcast = broadcast_cpu

    X, _ = ar_counts(40, min_len=48, max_len=120)
    res = {}
    for name in TASKS:
        set_seed(0)
        dls = get_ssl_dls(X, splits=(range(24), range(24, 40)), bs=6, seed=0, drop_last=True)
        task = getattr(tsai_ssl, name)(save_as=os.path.join(out_dir, f'bb_{name}'))
        learn = ts_learner(dls, ResNetPlus, cbs=task)
        clf = learn.model
        if rank == 1 and hasattr(task, 'teacher'):  # models that start apart: DDP syncs the student, the task the teacher
            from tsai_ssl.backbone import split_backbone
            with torch.no_grad():
                for p in split_backbone(clf).parameters(): p.add_(0.05)  # (the classifier head is not pretrained)
        with learn.distrib_ctx(sync_bn=False, cpu=True):
            with learn.no_bar(): learn.fit_one_cycle(2, 1e-3)
        res[name] = dict(values=[[float(v) for v in row] for row in learn.recorder.values],
                         restored=learn.model is clf and learn.loss_func is not task.loss,
                         saved=[str(p) for p in task.saved_paths],
                         weights=[float(p.detach().double().sum()) for p in clf.parameters()],
                         hooks=sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in clf.modules()),
                         # an EMA teacher follows the same student on both processes; MoCo's queue holds both's keys
                         teacher=[float(p.double().sum()) for p in task.teacher.parameters()] if hasattr(task, 'teacher') else [],
                         queue=task.queue.keys().double().sum(1).tolist() if hasattr(task, 'queue') else [])
    # semi-supervised fine-tuning: labeled batches are sharded by DistributedDL, the unlabeled loader is the same on
    # both; DDP averages the backbone's gradients and SemiSupervised the head's, so both replicas stay equal
    set_seed(0)
    Xl, yl = ar_counts(24, min_len=48, max_len=120, n_classes=2, seed=1)
    task = tsai_ssl.MaskedValuePretrain()
    semi = tsai_ssl.SemiSupervised(task, get_ssl_dls(X, bs=6, seed=0, drop_last=True).train, weight=1.)
    learn = ts_learner(get_ssl_dls(Xl, yl, splits=(range(16), range(16, 24)), bs=4, seed=0, drop_last=True), ResNetPlus,
                       cbs=semi)
    with learn.distrib_ctx(sync_bn=False, cpu=True):
        with learn.no_bar(): learn.fit_one_cycle(2, 1e-3)
    res['semi'] = dict(weights=[float(p.detach().double().sum()) for p in learn.model.parameters()],
                       head=[float(p.detach().double().sum()) for p in task.pretext_head.parameters()],
                       pretext_loss=semi.pretext_loss, n_opt=[len(g) for g in learn.opt.param_lists])
    # SyncBatchNorm (distrib_ctx's default) needs GPUs: a clear error before the task swaps the model
    learn = ts_learner(get_ssl_dls(X, bs=6, seed=0), ResNetPlus, cbs=tsai_ssl.MaskedValuePretrain())
    clf = learn.model
    try:
        with learn.distrib_ctx(cpu=True):
            with learn.no_bar(): learn.fit(1)
        res['sync_bn_error'] = None
    except ValueError as e:
        res['sync_bn_error'] = str(e)
    res['sync_bn_restored'] = learn.model is clf
    # no validation split: fastai's DistributedDL would divide by zero after the first epoch; a clear error first
    learn = ts_learner(get_ssl_dls(X, bs=6, seed=0), ResNetPlus, cbs=tsai_ssl.MaskedValuePretrain())
    try:
        with learn.distrib_ctx(sync_bn=False, cpu=True):
            with learn.no_bar(): learn.fit(1)
        res['no_valid_error'] = None
    except ValueError as e:
        res['no_valid_error'] = str(e)
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f: json.dump(res, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [json.loads((out / f'rank{r}.json').read_text()) for r in range(WORLD)]


@pytest.mark.parametrize('name', TASKS)
def test_tasks_under_distrib_ctx(ranks, name):
    out, res = ranks
    r0, r1 = res[0][name], res[1][name]
    assert len(r0['values']) == 2 and all(v == v for v in r0['values'][-1])  # two epochs, no NaN
    # losses are averaged over the processes by fastai, metric counts added up by the task: the same on both
    assert torch.allclose(torch.tensor(r0['values']), torch.tensor(r1['values']), rtol=1e-6)
    assert r0['weights'] == pytest.approx(r1['weights'], rel=1e-5)  # DDP kept the replicas in step
    assert r0['restored'] and r1['restored'] and r0['hooks'] == r1['hooks'] == 0
    assert r0['teacher'] == pytest.approx(r1['teacher'], rel=1e-5) and r0['queue'] == pytest.approx(r1['queue'], rel=1e-5)
    if name == 'MoCoPretrain': assert len(r0['queue']) == 2 * 2 * 6 * 2 * 2  # 2 batches x 2 views x 6 x 2 processes x 2 epochs
    assert r0['saved'] and r1['saved'] == []  # only the first process writes the backbone
    from conftest import ar_counts
    from tsai.learner import ts_learner
    from tsai.models.ResNetPlus import ResNetPlus

    from tsai_ssl import get_ssl_dls, load_pretrained
    X, y = ar_counts(12, n_classes=2)
    assert load_pretrained(ts_learner(get_ssl_dls(X, y, bs=4), ResNetPlus), r0['saved'][0]).transferred


def test_semi_supervised_under_distrib_ctx(ranks):
    _, res = ranks
    r0, r1 = res[0]['semi'], res[1]['semi']
    assert r0['pretext_loss'] is not None and r0['pretext_loss'] == r0['pretext_loss']
    assert r0['weights'] == pytest.approx(r1['weights'], rel=1e-5)
    assert r0['head'] == pytest.approx(r1['head'], rel=1e-5)  # the head's gradients were averaged too
    assert r0['n_opt'] == r1['n_opt'] and len(r0['n_opt']) == 2  # the head left the optimizer


def test_sync_batchnorm_on_cpu_says_what_to_do(ranks):
    _, res = ranks
    for r in res:
        assert 'sync_bn=False' in r['sync_bn_error'] and r['sync_bn_restored']


def test_an_empty_validation_set_is_refused_before_training(ranks):
    _, res = ranks
    for r in res: assert 'needs a validation split' in r['no_valid_error']
