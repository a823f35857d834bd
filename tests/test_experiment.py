"""Tests of tsai_ssl.experiment that train nothing: label subsets, inputs, registries, summaries, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tsai_ssl import experiment as E
from tsai_ssl.experiment import ExperimentError, label_subset


# -- label_subset ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('fraction', [0.05, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize('seed', [0, 3])
def test_label_subset_stratified(fraction, seed):
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    idx = label_subset(y, fraction, seed)
    assert idx.dtype.kind == 'i' and np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert len(idx) == round(fraction * len(y))  # fraction respected exactly
    counts = np.bincount(y[idx], minlength=3)
    assert (counts >= 1).all()  # at least one per class
    # proportional to the class sizes, up to rounding and the one-per-class floor
    assert np.all(np.abs(counts - fraction * np.bincount(y)) <= 1.01)


def test_label_subset_deterministic_nested_and_seeded():
    y = np.repeat(np.array(['a', 'b', 'c', 'd']), 25)
    a, b = label_subset(y, 0.2, seed=1), label_subset(y, 0.2, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, label_subset(y, 0.2, seed=2))
    small, big = label_subset(y, 0.08, seed=1), label_subset(y, 0.4, seed=1)
    assert set(small) <= set(big)  # growing fractions of one seed are nested
    assert np.array_equal(label_subset(y, 1.0, seed=5), np.arange(100))


def test_label_subset_rare_class_gets_one():
    y = np.array([0] * 97 + [1] * 2 + [2])
    idx = label_subset(y, 0.05, 0)  # proportional rounding would give classes 1 and 2 nothing
    assert len(idx) == 5 and set(y[idx]) == {0, 1, 2}


@pytest.mark.parametrize('bad', [-0.1, 0, 1.5, float('nan')])
def test_label_subset_rejects_fraction_out_of_range(bad):
    with pytest.raises(ExperimentError, match='outside'):
        label_subset(np.array([0, 1] * 10), bad, 0)


def test_label_subset_fraction_leaving_a_class_without_label():
    y = np.repeat(np.arange(4), 10)
    with pytest.raises(ExperimentError, match='leaves a class without a label'):
        label_subset(y, 0.05, 0)  # 2 labels for 4 classes
    assert len(label_subset(y, E.min_fraction(y), 0)) == 4


# -- inputs ---------------------------------------------------------------------------------------------
def test_infer_vocab():
    ints = [np.array([[0, 3, 40]], dtype=np.uint8), np.array([[1., 2.]])]
    assert E.infer_vocab(ints) == 41
    assert E.infer_vocab([np.array([[0, 41]])]) is None
    assert E.infer_vocab([np.array([[0.5, 2]])]) is None
    assert E.infer_vocab([np.array([[-1, 2]])]) is None


def test_split_data_modes():
    rng = np.random.default_rng(0)
    X = [rng.integers(0, 41, (1, int(L))) for L in rng.integers(20, 40, 30)]
    y = np.array([0, 1, 2] * 8 + [-1] * 6)
    d = E.split_data(X, y)  # automatic stratified hold-out of the labeled series
    assert len(d.X_unlabeled) == 6 and len(d.X_train) + len(d.X_test) == 24 and set(d.y_test) == {0, 1, 2}
    split = np.array(['train', 'test'] * 15)
    d = E.split_data(X, y, split=split)
    assert len(d.X_train) + len(d.X_test) == 24 and len(d.X_unlabeled) == 6
    d = E.split_data(X, y, X_test=X[:5], y_test=np.array([0, 1, 2, 0, 1]))
    assert len(d.X_train) == 24 and len(d.X_test) == 5
    assert len(d.X_pretrain) == 30
    with pytest.raises(ExperimentError, match='19 labels for 30 series'):
        E.split_data(X, y[:19])
    with pytest.raises(ExperimentError, match='split has 4 entries'):
        E.split_data(X, y, split=split[:4])
    with pytest.raises(ExperimentError, match='do not occur'):
        E.split_data(X, y, X_test=X[:2], y_test=np.array([0, 7]))


def test_load_npz_errors(tmp_path):
    with pytest.raises(ExperimentError, match='not found'):
        E.load_npz(tmp_path / 'nope.npz')
    p = tmp_path / 'bad.npz'
    np.savez(p, data=np.zeros((4, 1, 10)))
    with pytest.raises(ExperimentError, match=r"missing \['X', 'y'\]"):
        E.load_npz(p)
    p = tmp_path / 'junk.npz'
    p.write_text('not a zip')
    with pytest.raises(ExperimentError, match='cannot read'):
        E.load_npz(p)


def test_load_npz_variable_length(tmp_path):
    rng = np.random.default_rng(1)
    X = np.empty(12, dtype=object)
    for i in range(12): X[i] = rng.normal(size=int(rng.integers(20, 50)))
    p = tmp_path / 'd.npz'
    np.savez(p, X=X, y=np.array([0, 1] * 5 + [-1, -1]), split=np.array([0, 0, 1] * 4))
    d = E.load_npz(p)
    assert len(d.X_unlabeled) == 2 and all(x.ndim == 2 for x in d.X_train)
    assert E.infer_vocab(d.X_pretrain) is None
    assert 'real values' in E.describe_data(d)


# -- registries -----------------------------------------------------------------------------------------
def test_task_registry(monkeypatch):
    assert E.normalize_task('next-step') == 'next' and E.normalize_task('MASKED') == 'masked'
    with pytest.raises(ExperimentError, match="unknown task 'jigsaw'"):
        E.normalize_task('jigsaw')
    assert E.get_task('masked').__name__ == 'MaskedValuePretrain'
    monkeypatch.setitem(E.TASKS, 'contrastive', ('not_written_yet', 'ContrastivePretrain', 'contrastive'))
    assert not E.task_available('contrastive') and 'contrastive' not in E.available_tasks()
    with pytest.raises(ExperimentError, match='task contrastive is not available'):
        E.get_task('contrastive')


def test_arch_registry():
    assert E.normalize_arch('resnetplus') == 'ResNetPlus'
    with pytest.raises(ExperimentError, match="unknown architecture 'LSTM'"):
        E.normalize_arch('LSTM')


# -- summaries ------------------------------------------------------------------------------------------
def _rows():
    rows = []
    for seed, noise in ((0, 0.0), (1, 0.02)):
        for f, base in ((0.05, 0.40), (1.0, 0.90)):
            rows.append(dict(method='scratch', fraction=f, n_labeled=int(f * 100), seed=seed, accuracy=base + noise))
            rows.append(dict(method='masked', fraction=f, n_labeled=int(f * 100), seed=seed,
                             accuracy=base + noise + (0.15 if f < 1 else 0.0)))
            rows.append(dict(method='next', fraction=f, n_labeled=int(f * 100), seed=seed, accuracy=base + noise - 0.01))
        rows.append(dict(method='masked', fraction=None, n_labeled=0, seed=seed, accuracy=None, best_valid_loss=1.0))
    return rows


def test_aggregate_and_summarize():
    agg = E.aggregate(_rows())
    cell = {(a['method'], a['fraction']): a for a in agg}
    assert len(agg) == 6 and cell['scratch', 0.05]['n_seeds'] == 2
    assert cell['masked', 0.05]['gain_points'] == pytest.approx(15.0)
    assert cell['scratch', 1.0]['std'] == pytest.approx(np.std([0.9, 0.92], ddof=1))
    table, sentence = E.summarize(_rows())
    assert 'from scratch' in table and '5% (n=5)' in table and '±' in table
    assert sentence.count('.') >= 1 and '\n' not in sentence
    assert 'masked-value pretraining helped most at 5% labels (+15.0' in sentence
    assert 'next-step did not help' in sentence and 'no task helped at 100%, where' in sentence


def test_summarize_no_gain():
    rows = [r for r in _rows() if r['method'] != 'masked']
    _, sentence = E.summarize(rows)
    assert sentence.startswith('No pretraining improved')


def test_summarize_partial_results():
    "While a comparison runs, some fractions have only scratch results (partial results.json is written then)."
    rows = [r for r in _rows() if not (r['method'] != 'scratch' and r['fraction'] == 1.0)]
    table, sentence = E.summarize(rows)
    assert '-' in table.splitlines()[-1] and 'no task helped at 100%' not in sentence
    rows = [r for r in _rows() if r['method'] == 'scratch' or r['fraction'] is None]
    assert E.summarize(rows)[1].startswith('Only training from scratch')


def test_save_results_and_plot(tmp_path):
    paths = E.save_results(_rows(), tmp_path / 'out', config={'arch': 'ResNetPlus'})
    doc = json.loads(paths['json'].read_text())
    assert doc['config']['arch'] == 'ResNetPlus' and len(doc['runs']) == 14 and len(doc['summary']) == 6
    assert paths['png'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    header = paths['summary_csv'].read_text().splitlines()[0]
    assert header == 'method,fraction,n_labeled,n_seeds,mean,std,gain_points'


def test_progress_bar(capsys):
    import sys
    bar = E.Progress(10, 'x', file=sys.stderr, log_every=0)
    bar.advance(5, 'half')
    bar.close()
    err = capsys.readouterr().err
    assert '50%' in err and 'ETA' in err and '100%' in err
