"Small builders shared by the task tests."
from conftest import ar_counts
from fastai.callback.core import Callback
from tsai.data.preprocessing import TSStandardize

from tsai_ssl import get_ssl_dls
from tsai_ssl.tasks import get_task, task_names

ALL_TASKS = [get_task(n) for n in task_names()]  # every registered task: a new task file is covered here too


def unlabeled_dls(n=48, bs=16, tfms=True, **kw):
    X, _ = ar_counts(n, **kw)
    return get_ssl_dls(X, splits=(range(n - 16), range(n - 16, n)), bs=bs, batch_tfms=[TSStandardize()] if tfms else None)


def fit_quiet(learn, n=1, lr=1e-3, **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n, lr, **kw)


class RaiseAt(Callback):
    "Raise `exc` at the given training iteration (simulates a crash or Ctrl-C mid-epoch)."
    order = 90
    def __init__(self, it=1, exc=KeyboardInterrupt): self.it, self.exc = it, exc
    def after_batch(self):
        if self.training and self.iter == self.it: raise self.exc('boom')


def _clone(t): return None if t is None else t.clone()


class Spy(Callback):
    "Record (xb, yb) of validation batches, per epoch."
    order = 95
    def before_fit(self): self.valid = []
    def before_validate(self): self.valid.append([])
    def after_pred(self):
        if not self.training: self.valid[-1].append(([_clone(t) for t in self.learn.xb], [_clone(t) for t in self.learn.yb]))


def learner_state(learn):
    return dict(model=learn.model, loss_func=learn.loss_func, metrics=list(learn.metrics),
                n_opt=None if learn.opt is None else [len(g) for g in learn.opt.param_lists])


def assert_restored(learn, state):
    assert learn.model is state['model'] and learn.loss_func is state['loss_func']
    assert list(learn.metrics) == state['metrics']
    if state['n_opt'] is not None: assert [len(g) for g in learn.opt.param_lists] == state['n_opt']
    assert '_do_epoch' not in learn.__dict__
