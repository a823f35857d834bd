"""Tests of tsai_ssl.tasks.registry: tasks register themselves from their class attributes."""
from __future__ import annotations

import pytest
import torch.nn as nn

import tsai_ssl
from tsai_ssl.errors import InputError
from tsai_ssl.tasks import (
    ContrastivePretrain,
    MaskedValuePretrain,
    NextStepPretrain,
    PretextTask,
    TS2VecPretrain,
    registry,
)


@pytest.fixture
def clean_registry(monkeypatch):
    "Tasks defined inside a test are forgotten afterwards."
    monkeypatch.setattr(registry, '_TASKS', dict(registry._TASKS))
    monkeypatch.setattr(registry, '_ALIASES', dict(registry._ALIASES))


def test_shipped_tasks_and_their_names():
    assert registry.task_names()[:4] == ['masked', 'next', 'contrastive', 'ts2vec']
    for name, cls in [('Masked-Value', MaskedValuePretrain), ('next_step', NextStepPretrain),
                      ('SimCLR', ContrastivePretrain), ('TS2VEC', TS2VecPretrain)]:
        assert registry.get_task(name) is cls
    assert registry.task_label('next') == 'next-step' and registry.task_label('ts2vec') == 'TS2Vec'
    assert TS2VecPretrain.epoch_cost == 2. and MaskedValuePretrain.epoch_cost == 1.


@pytest.mark.parametrize('name', ['mvp', 'bert', ''])
def test_unknown_task_names_the_known_ones(name):
    with pytest.raises(InputError, match=r"unknown task .*masked .*next .*contrastive"):
        registry.get_task(name)


def test_options_come_from_the_constructor_and_unknown_ones_raise():
    opts = registry.task_options('masked')
    assert {'ratio', 'mean_span', 'n_values', 'save_as', 'pad_aware'} <= set(opts) and opts['ratio'] == 0.15
    assert registry.make_task('masked', ratio=0.3).ratio == 0.3
    with pytest.raises(InputError, match="no option 'ratoi'.*accepts ratio, mean_span"):
        registry.make_task('masked', ratoi=0.9)


def test_a_new_task_is_one_class(clean_registry):
    "What a new task file does: subclass, declare the names; the registry, make_task and `tsai_ssl.X` find it."
    class ToyPretrain(PretextTask):
        task_name, aliases, label = 'toy', ('toy-task',), 'toy task'
        def __init__(self, width: int = 3, save_as=None, save='best', seed=0, pad_aware=True):
            super().__init__(save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
            self.width = width
        def make_head(self, nf, c_in): return nn.Conv1d(nf, c_in, 1)

    assert 'toy' in registry.task_names() and registry.get_task('TOY-TASK') is ToyPretrain
    assert registry.make_task('toy', width=5).width == 5 and registry.task_label('toy') == 'toy task'
    assert getattr(tsai_ssl, 'ToyPretrain') is ToyPretrain
    with pytest.raises(ValueError, match="already taken by MaskedValuePretrain"):
        class Clash(PretextTask):
            task_name, aliases = 'clash', ('masked',)


def test_a_base_without_a_name_is_not_registered(clean_registry):
    n = len(registry.task_names())
    class SharedBase(PretextTask): pass
    assert len(registry.task_names()) == n


def test_static_task_index_agrees_with_the_registry():
    "The CLI's import-free task index (read from the task files) lists exactly the registered tasks and aliases."
    from tsai_ssl.task_index import check_task_names, shipped_tasks
    index = shipped_tasks()
    assert sorted(index) == sorted(registry.task_names())
    for name, aliases in index.items(): assert aliases == registry.get_task(name).aliases
    assert check_task_names(['Next-Step', 'simclr']) == ['next', 'contrastive']
    with pytest.raises(InputError, match="unknown task 'mvp'"): check_task_names(['mvp'])


def test_cli_refuses_an_unknown_task_without_importing_torch(tmp_path):
    import subprocess
    import sys
    code = ('import sys\nfrom tsai_ssl import cli\nrc = cli.main(["compare", "--synthetic", "--tasks", "masked,bogus"])\n'
            'print("RC", rc, "torch" in sys.modules, "fastai" in sys.modules)')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert 'RC 2 False False' in r.stdout, (r.stdout, r.stderr[-2000:])
    assert "unknown task 'bogus'" in r.stderr
