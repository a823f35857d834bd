"""Tests of the tsai-ssl command line: one end-to-end comparison in a subprocess, pretrain/finetune in process,
and every bad-input case (exit status 2, one message on stderr, no traceback)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tsai_ssl import experiment as E
from tsai_ssl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _write_npz(path: Path, n: int = 40, n_unlabeled: int = 8, seed: int = 0, **override) -> Path:
    "n labeled variable-length integer series (4 classes, a class-specific bump) + unlabeled extras, with a split."
    rng = np.random.default_rng(seed)
    N = n + n_unlabeled
    X = np.empty(N, dtype=object)
    y = np.r_[np.arange(n) % 4, -np.ones(n_unlabeled, dtype=int)]
    for i in range(N):
        L = int(rng.integers(96, 160))
        x = rng.poisson(3, L).astype(np.int64)
        c = y[i] if y[i] >= 0 else rng.integers(4)
        pos = int(rng.integers(0, L - 20))
        x[pos:pos + 12] += 5 * (c + 1)
        X[i] = np.minimum(x, 40)[None]
    split = np.where(np.arange(N) % 5 == 4, 'test', 'train')  # test: 8 labeled series, 2 per class
    arrays = dict(X=X, y=y, split=split)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture(scope='module')
def npz(tmp_path_factory) -> Path:
    return _write_npz(tmp_path_factory.mktemp('data') / 'data.npz')


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.pop('TSAI_SSL_DEBUG', None)
    return env


def test_compare_end_to_end(npz, tmp_path):
    out = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'tsai_ssl.cli', 'compare', str(npz), '--tasks', 'masked', '--fractions', '50%',
           '--seeds', '1', '--epochs', '1', '--bs', '16', '--device', 'cpu', '--threads', '1', '--out', str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    assert 'from scratch' in r.stdout and 'masked-value' in r.stdout and '50% (n=' in r.stdout
    assert 'ETA' in r.stderr and 'plan: 1 pretraining and 3 classifier fits' in r.stderr  # the plan, the bar
    assert 'tasks masked (41-way targets); semi-supervised masked (weight 1); fractions 50%' in r.stderr
    doc = json.loads((out / 'results.json').read_text())
    cfg = doc['config']
    assert cfg['n_unlabeled'] == 8 and cfg['n_train'] == 32 and cfg['n_test'] == 8
    assert cfg['tasks'] == ['masked'] and cfg['fractions'] == [0.5] and cfg['n_values'] == 41
    fits = [r for r in doc['runs'] if r['accuracy'] is not None]
    assert sorted(r['method'] for r in fits) == ['masked', 'masked+semi', 'scratch']  # semi-supervised by default
    assert all(0 <= r['accuracy'] <= 1 and r['n_labeled'] == 16 and r['fraction'] == 0.5 for r in fits)
    pre = [r for r in doc['runs'] if r['fraction'] is None]
    assert len(pre) == 1 and Path(pre[0]['weights']).exists()
    assert {(a['method'], a['fraction']) for a in doc['summary']} == {('scratch', 0.5), ('masked', 0.5), ('masked+semi', 0.5)}
    assert cfg['finetune_steps'] is None and cfg['max_len'] == 512 and cfg['semi_weight'] == 1.0  # --epochs: no budget
    assert doc['sentence'] in r.stdout and doc['sentence'].endswith('.')
    rows = list(csv.DictReader(open(out / 'results.csv')))
    assert len(rows) == 4 and {'method', 'fraction', 'seed', 'accuracy'} <= set(rows[0])
    assert (out / 'summary.csv').exists()
    assert (out / 'accuracy.png').read_bytes()[:4] == b'\x89PNG'


@pytest.fixture
def torch_threads():
    "The CLI's --threads sets torch's global thread count: put it back for the tests that follow."
    import torch
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.filterwarnings('ignore:load_learner')
def test_pretrain_then_finetune_and_export(npz, tmp_path, capsys, torch_threads):
    "The architecture's config travels with the weights: finetune rebuilds the same model without being told."
    w = tmp_path / 'w' / 'ssl.pth'
    assert main(['pretrain', str(npz), '--task', 'masked', '--epochs', '1', '--bs', '16', '--device', 'cpu',
                 '--arch-config', '{"nf": 16}', '--threads', '1', '--out', str(w), '--quiet']) == 0
    out = capsys.readouterr().out
    assert str(w) in out and w.exists()
    assert 'strict=False, with_opt=False' in out and 'ts_learner(dls, ResNetPlus, nf=16)' in out  # the documented call is quiet
    meta = json.loads(w.with_name(w.name + '.json').read_text())
    assert meta['arch'] == 'ResNetPlus' and meta['arch_config'] == {'nf': 16}
    pkl = tmp_path / 'clf.pkl'
    assert main(['finetune', str(npz), '--weights', str(w), '--fraction', '0.5', '--epochs', '1', '--bs', '16',
                 '--device', 'cpu', '--threads', '1', '--export', str(pkl), '--quiet']) == 0
    out = capsys.readouterr().out
    assert 'test accuracy:' in out and 'ResNetPlus {"nf": 16}' in out and pkl.exists()
    _bad(capsys, ['finetune', str(npz), '--weights', str(w), '--arch-config', '{"nf": 32}'],
         'conflict with', 'pretrained with ResNetPlus {"nf": 16}', 'leave them out')
    _bad(capsys, ['finetune', str(npz), '--weights', str(w), '--arch', 'InceptionTime'], '--arch InceptionTime conflict')
    from fastai.learner import load_learner
    learn = load_learner(pkl)
    series = [np.random.default_rng(0).poisson(3, (1, L)) for L in (100, 150)]
    with learn.no_bar():
        preds, _ = learn.get_preds(dl=learn.dls.test_dl(series))
    assert preds.shape == (2, 4)


@pytest.mark.parametrize('sub', [None, 'compare', 'demo', 'pretrain', 'finetune', 'tasks'])
def test_help(sub, capsys, monkeypatch):
    "Plain text (no RST markup), wrapped to the terminal's width."
    monkeypatch.setenv('COLUMNS', '80')
    assert main(([sub] if sub else []) + ['--help']) == 0
    out = capsys.readouterr().out
    assert 'usage: tsai-ssl' in out
    if sub in ('compare', 'pretrain', 'finetune'): assert 'X_test' in out and '--arch' in out
    assert '``' not in out
    assert max(len(line) for line in out.splitlines()) <= 80, [line for line in out.splitlines() if len(line) > 80]


# -- bad input: exit status 2, one clear message, no traceback ------------------------------------------
def _bad(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'Traceback' not in err
    for n in needles: assert n in err, err
    return err


def test_missing_file(capsys, tmp_path):
    _bad(capsys, ['compare', str(tmp_path / 'missing.npz')], 'error: data file not found', 'missing.npz')
    _bad(capsys, ['finetune', str(tmp_path / 'missing.npz')], 'data file not found')


def test_wrong_keys(capsys, tmp_path):
    p = tmp_path / 'keys.npz'
    np.savez(p, series=np.zeros((8, 1, 32)), labels=np.zeros(8))
    _bad(capsys, ['compare', str(p)], "missing ['X', 'y']", "required keys 'X' and 'y'")
    q = tmp_path / 'extra.npz'
    np.savez(q, X=np.zeros((8, 1, 32)), y=np.zeros(8), X_tset=np.zeros((2, 1, 32)))
    _bad(capsys, ['pretrain', str(q)], "unexpected keys ['X_tset']")


def test_labels_of_wrong_length(capsys, tmp_path):
    p = _write_npz(tmp_path / 'short.npz', y=np.arange(30) % 4)
    _bad(capsys, ['compare', str(p)], 'y has 30 labels for 48 series')
    q = _write_npz(tmp_path / 'split.npz', split=np.array(['train'] * 5))
    _bad(capsys, ['compare', str(q)], 'split has 5 entries for 48 series')
    x = [np.ones((1, 50))] * 6
    r = tmp_path / 'test.npz'
    np.savez(r, X=np.stack(x), y=np.array([0, 1] * 3), X_test=np.stack(x[:3]), y_test=np.array([0, 1]))
    _bad(capsys, ['finetune', str(r)], 'y_test has 2 labels for 3 series')


def test_fraction_leaving_a_class_without_label(capsys, npz):
    # 32 labeled training series, 4 classes: 5% is 2 labels
    _bad(capsys, ['compare', str(npz), '--fractions', '5%,50%'], 'leaves a class without a label', 'at least 0.125')
    _bad(capsys, ['finetune', str(npz), '--fraction', '0.05'], 'leaves a class without a label')
    _bad(capsys, ['compare', str(npz), '--fractions', '1.5'], 'above 1')
    _bad(capsys, ['compare', str(npz), '--fractions', '0'], 'outside (0, 1]')
    _bad(capsys, ['compare', str(npz), '--fractions', 'half'], 'not a fraction')


def test_unknown_arch_and_task(capsys, npz):
    _bad(capsys, ['compare', str(npz), '--arch', 'LSTMPlus'], "unknown architecture 'LSTMPlus'", 'ResNetPlus')
    _bad(capsys, ['pretrain', str(npz), '--arch', 'Transformer'], 'unknown architecture')
    _bad(capsys, ['compare', str(npz), '--tasks', 'masked,jigsaw'], "unknown task 'jigsaw'", 'contrastive')
    _bad(capsys, ['pretrain', str(npz), '--task', 'rotation'], "unknown task 'rotation'")
    _bad(capsys, ['compare', str(npz), '--tasks', 'mpv'], "unknown task 'mpv'")
    from tsai_ssl import cli
    cli._check_task_names('masked,MVP')  # mvp: tsai's own MVP, a reference method (not an alias of masked)
    assert cli._resolve_tasks(argparse.Namespace(tasks='masked,MVP')) == ['masked', 'mvp']


def test_other_bad_input(capsys, npz, tmp_path):
    _bad(capsys, ['compare'], 'no data')
    _bad(capsys, ['compare', str(npz), '--synthetic'], 'only one data source')
    _bad(capsys, ['compare', '--ucr', 'NoSuchSet'], "unknown UCR data set 'NoSuchSet'", 'GunPoint')
    _bad(capsys, ['compare', str(npz), '--seeds', 'x'], '--seeds')
    _bad(capsys, ['compare', str(npz), '--device', 'tpu'], "--device 'tpu'")
    _bad(capsys, ['compare', str(npz), '--semi-weight', '-1'], '--semi-weight must be >= 0')
    _bad(capsys, ['compare', str(npz), '--semi-weight', '0', '--pseudo-threshold', '0.9'], 'give --semi-weight too')
    _bad(capsys, ['compare', str(npz), '--semi-weight', '1', '--pseudo-threshold', '1.5'], '--pseudo-threshold must be in')
    _bad(capsys, ['compare', str(npz), '--finetune-steps', '0'], '--finetune-steps must be >= 1')
    _bad(capsys, ['compare', str(npz), '--tasks', 'masked', '--semi-tasks', 'next', '--epochs', '1'],
         '--semi-tasks next not among --tasks masked')
    _bad(capsys, ['compare', str(npz), '--pool-fractions', '150'], '--pool-fractions: 150 is above 1')
    _bad(capsys, ['finetune', str(npz), '--weights', str(tmp_path / 'none.pth')], 'weights file not found')
    _bad(capsys, ['compare', str(npz), '--epochs', '0'], '--epochs must be at least 1')
    p = tmp_path / 'nan.npz'
    X = np.ones((12, 1, 40)); X[3, 0, 5] = np.nan
    np.savez(p, X=X, y=np.arange(12) % 2)
    _bad(capsys, ['compare', str(p), '--epochs', '1'], 'X[3] has NaN at step 5, inside the series')
    _bad(capsys, ['compare', str(npz), '--arch-config', '{nf: 32'], 'not valid JSON')
    _bad(capsys, ['compare', str(npz), '--bogus-option'], 'unrecognized arguments')  # argparse's own status 2


def test_bad_input_in_a_real_process(tmp_path):
    "The console entry point: status 2, one line on stderr, no traceback."
    r = subprocess.run([sys.executable, '-m', 'tsai_ssl.cli', 'compare', str(tmp_path / 'nope.npz')],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr and 'data file not found' in r.stderr
    assert r.stdout == ''
    assert len([l for l in r.stderr.splitlines() if 'error' in l]) == 1


def test_nan_error_names_the_series_in_the_file_and_the_step(capsys, tmp_path):
    "#2: the index in the user's file (117), not the position after the train/test split (88), and the step."
    X = np.random.default_rng(0).poisson(3, (160, 1, 40)).astype(np.float32)
    X[117, 0, 5] = np.nan
    p = tmp_path / 'nan117.npz'
    np.savez(p, X=X, y=np.arange(160) % 2, split=np.where(np.arange(160) % 4 == 0, 'test', 'train'))
    err = _bad(capsys, ['compare', str(p)], 'X[117] has NaN at step 5, inside the series')
    assert 'series 88' not in err


def test_stray_non_integer_in_counts(capsys, tmp_path):
    "#4: one 3.5 among counts 0..40 is refused, saying where it is and how to choose either way."
    X = np.random.default_rng(0).poisson(3, (40, 1, 50)).astype(np.float32)
    X[7, 0, 12] = 3.5
    p = tmp_path / 'counts.npz'
    np.savez(p, X=X, y=np.arange(40) % 2)
    _bad(capsys, ['compare', str(p)], 'X[7] has value 3.5 at step 12', '--n-values 41', '--n-values 0')
    _bad(capsys, ['pretrain', str(p), '--n-values', '41'], 'X[7] has value 3.5 at step 12', '--n-values 0')
    _bad(capsys, ['compare', str(p), '--n-values', 'lots'], "--n-values 'lots'")
    # continuous targets chosen: the data passes, and the next problem (an unknown task) is reported instead
    _bad(capsys, ['compare', str(p), '--n-values', 'none', '--tasks', 'jigsaw'], "unknown task 'jigsaw'")


def test_internal_error_shows_traceback(npz, capsys, monkeypatch, torch_threads):
    "#13: a ValueError raised by a bug mid-training is not bad input: traceback and status 1."
    def broken(*a, **k): raise ValueError('an internal bug')
    monkeypatch.setattr(E, 'finetune', broken)
    code = main(['finetune', str(npz), '--fraction', '0.5', '--device', 'cpu', '--threads', '1', '--quiet'])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' in err and 'ValueError: an internal bug' in err and 'error:' not in err


def test_tasks_command(capsys):
    assert main(['tasks']) == 0
    out = capsys.readouterr().out
    for name in ('masked', 'next', 'contrastive', 'ts2vec'): assert f'{name}: ' in out
    assert 'masked-value' in out and 'ratio=0.15' in out and 'aliases:' in out


def test_cli_import_is_light():
    "tsai-ssl --help and input errors must not wait for torch, fastai or tsai."
    code = ("import sys, tsai_ssl, tsai_ssl.cli; from tsai_ssl import InputError, RunConfig; "
            "heavy = [m for m in ('torch', 'fastai', 'tsai', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_public_name_imports_from_the_lazy_package():
    import tsai_ssl
    for name in tsai_ssl.__all__:
        assert getattr(tsai_ssl, name) is not None, name
    from tsai_ssl import MaskedValuePretrain, get_ssl_dls, load_pretrained  # noqa: F401
    with pytest.raises(AttributeError):
        tsai_ssl.no_such_name


def test_busy_cores_is_a_share_of_the_machine():
    import os

    from tsai_ssl.cli import _busy_cores
    busy = _busy_cores(0.1)
    assert busy is not None and 0 <= busy <= (os.cpu_count() or 1) + 1e-9


@pytest.mark.parametrize('tasks, given, expected', [
    (['masked', 'next', 'contrastive', 'mvp'], None, ['masked', 'contrastive']),  # compare's defaults
    (['next', 'mvp'], None, ['next']),  # no default among --tasks: the first task
    (['masked', 'contrastive'], 'contrastive', ['contrastive']),
])
def test_semi_tasks_defaults(tasks, given, expected):
    from tsai_ssl.cli import COMPARE, DEMO, _semi_tasks
    args = argparse.Namespace(semi_tasks=given)
    assert _semi_tasks(args, tasks, COMPARE['semi_tasks']) == expected
    assert _semi_tasks(argparse.Namespace(semi_tasks=None), ['masked', 'contrastive'], DEMO['semi_tasks']) == ['contrastive']


@pytest.mark.parametrize('tasks, weight, threshold, expected', [
    (['masked', 'contrastive'], 1., None, '; semi-supervised masked, contrastive (weight 1)'),
    (['masked'], 0.3, 0.95, '; semi-supervised masked (weight 0.3, FixMatch from 0.95)'),
    (['masked'], 0., 0.95, ''),  # no semi-supervised fits: nothing to name
    ([], 1., None, ''),
])
def test_header_names_the_semi_supervised_fits(tasks, weight, threshold, expected):
    from tsai_ssl.cli import _semi_text
    assert _semi_text(tasks, weight, threshold) == expected


def test_demo_defaults_run_contrastive_semi_supervised():
    from tsai_ssl.cli import build_parser
    a = build_parser().parse_args(['demo'])
    assert a.semi_weight == 1. and a.semi_tasks is None and a.tasks == 'masked,contrastive'  # DEMO's semi_tasks apply
    assert build_parser().parse_args(['compare', 'x.npz']).semi_weight == 1.
