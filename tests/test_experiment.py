"""Tests of tsai_ssl.experiment that train nothing: label subsets, inputs, settings, task names, summaries, plots."""

from __future__ import annotations

import json
from pathlib import Path

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
def test_infer_n_values():
    ints = [np.array([[0, 3, 40]], dtype=np.uint8), np.array([[1., 2.]])]
    assert E.infer_n_values(ints) == 41
    assert E.infer_n_values([np.array([[0.5, 2.7, 1.3]])]) is None  # real values: continuous targets
    assert E.infer_n_values([np.array([[-1.5, 2.25]] * 3)]) is None


def test_infer_n_values_refuses_counts_with_a_stray_value():
    "One 3.5 in count data must not silently switch to continuous targets: say where, and how to choose."
    X = [np.random.default_rng(i).integers(0, 41, (1, 200)).astype(np.float32) for i in range(10)]
    X[7][0, 12] = 3.5
    with pytest.raises(ExperimentError, match=r'X\[7\] has value 3.5 at step 12.*n_values=41.*n_values=None'):
        E.infer_n_values(X)
    with pytest.raises(ExperimentError, match=r'--n-values 41.*--n-values 0'):
        E.infer_n_values(X, require='--n-values 41', continuous='--n-values 0')


def test_experiment_error_is_input_error():
    from tsai_ssl.errors import InputError
    assert E.ExperimentError is InputError and issubclass(InputError, ValueError)


def test_split_data_names_series_by_their_index_in_the_file():
    X = np.ones((160, 1, 40)); X[117, 0, 5] = np.nan
    split = np.where(np.arange(160) % 4 == 0, 'test', 'train')
    with pytest.raises(ExperimentError, match=r'X\[117\] has NaN at step 5, inside the series'):
        E.split_data(X, np.arange(160) % 2, split=split)
    X[117, 0, 5] = 1.
    d = E.split_data(X, np.arange(160) % 2, split=split)
    assert d.name('train')(87) == 'X[117]' and d.name('test')(1) == 'X[4]'


def test_run_config():
    cfg = E.RunConfig(arch='resnetplus', arch_config={'nf': 16})
    assert cfg.arch == 'ResNetPlus' and cfg.replace(lr=0.1).lr == 0.1 and cfg.lr == 1e-3
    with pytest.raises(ExperimentError, match='unknown setting.*epochz.*pretrain_epochs'):
        cfg.replace(epochz=3)
    for bad in (dict(bs=0), dict(lr=-1), dict(max_len=4), dict(n_values=1), dict(device='tpu'), dict(arch='LSTM')):
        with pytest.raises(ExperimentError):
            E.RunConfig(**bad)
    assert E.RunConfig(n_values=None).n_values is None and E.RunConfig(n_values=range(41)).n_values == 41


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
    assert E.infer_n_values(d.X_pretrain) is None
    assert 'real values' in E.describe_data(d)


# -- registries -----------------------------------------------------------------------------------------
def test_task_names_come_from_the_registry():
    assert E.normalize_task('next-step') == 'next' and E.normalize_task('MASKED') == 'masked'
    with pytest.raises(ExperimentError, match="unknown task 'jigsaw'"):
        E.normalize_task('jigsaw')
    with pytest.raises(ExperimentError, match="unknown task 'mvp'"):
        E.normalize_task('mvp')  # tsai's MVP is another method, not the masked-value task
    for gone in ('TASKS', 'task_available', 'available_tasks', 'get_task'):
        assert not hasattr(E, gone)


def test_unknown_task_option_is_refused(counts):
    "A misspelt task option raises, naming the accepted ones (it used to be dropped silently)."
    X, _ = counts
    with pytest.raises(ExperimentError, match=r"no option 'ratoi'.*ratio"):
        E.pretrain(X, 'masked', task_kwargs={'ratoi': 0.9}, device='cpu')


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
    assert '-1.0 points, 95% CI -1.0 to -1.0; 2 seeds' in sentence and 'within noise' not in sentence  # -1 on each seed


def test_summarize_every_method_at_chance():
    "At chance everywhere, the verdict is about the budget, not about pretraining."
    rows = [dict(method=m, fraction=f, n_labeled=10, seed=s, accuracy=0.25 + 0.01 * s)
            for m in ('scratch', 'masked') for f in (0.1, 1.0) for s in (0, 1)]
    _, sentence = E.summarize(rows, chance=0.25)
    assert sentence.startswith('Every method is at chance level (1/n_classes = 25.0%')
    assert 'the training budget is too small to compare' in sentence
    assert not E.summarize(_rows(), chance=0.25)[1].startswith('Every method')  # 40-90%: far above chance


def _pair_rows(scratch, masked, fraction=0.5):
    return [dict(method=m, fraction=fraction, n_labeled=10, seed=s, accuracy=a)
            for m, accs in (('scratch', scratch), ('masked', masked)) for s, a in enumerate(accs)]


def test_summarize_gain_within_noise():
    "+2 points on average, but -8 on one seed: the paired interval holds 0."
    _, sentence = E.summarize(_pair_rows((0.60, 0.70, 0.80), (0.72, 0.62, 0.82)), chance=0.25)
    assert 'within noise' in sentence and 'helped most' not in sentence and '95% CI' in sentence


def test_summarize_consistent_gain_is_not_noise():
    "+2 points on every seed is a gain even when the seeds' stds (10 points) overlap: the test is paired."
    table, sentence = E.summarize(_pair_rows((0.60, 0.70, 0.80), (0.62, 0.725, 0.815)), chance=0.25)
    assert 'masked-value pretraining helped most at 50% labels (+2.0' in sentence and 'within noise' not in sentence
    assert 'paired 95% CI' in sentence and 'difference to scratch (points), paired over seeds' in table


@pytest.mark.parametrize('diffs', [(1.0, 2.0), (2.0, 5.0, -1.0), (0.5, 0.5, 0.5, 4.0, -3.0)])
def test_paired_ci_is_the_t_interval(diffs):
    "Against the textbook formula: mean ± t_{0.975, n-1} * s / sqrt(n) (t quantiles from tables)."
    t975 = {1: 12.706, 2: 4.303, 4: 2.776}[len(diffs) - 1]
    d = np.array(diffs)
    half = t975 * d.std(ddof=1) / np.sqrt(len(d))
    assert E.paired_ci(diffs) == pytest.approx((d.mean() - half, d.mean() + half), abs=2e-3 * max(half, 1))
    assert E.paired_ci([3.0]) is None


def test_aggregate_pairs_only_seeds_both_ran():
    rows = _pair_rows((0.6, 0.7, 0.8), (0.7, 0.8))  # masked has seeds 0 and 1 only
    cell = {a['method']: a for a in E.aggregate(rows)}
    assert cell['masked']['paired_seeds'] == 2 and cell['masked']['ci95'] == [10.0, 10.0]
    assert cell['masked']['gain_points'] == 10.0  # on those two seeds (the means differ by 5)
    assert cell['scratch']['ci95'] is None and cell['scratch']['gain_points'] is None


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
    assert header == 'method,fraction,n_labeled,n_seeds,mean,std,gain_points,paired_seeds,ci95'


def test_progress_bar(capsys):
    import sys
    bar = E.Progress(10, 'x', file=sys.stderr, log_every=0)
    bar.advance(5, 'half')
    bar.close()
    err = capsys.readouterr().err
    assert '50%' in err and 'ETA' in err and '100%' in err


def test_recipes_and_semi_supervised_in_compare(tmp_path, counts):
    import torch

    from tsai_ssl import load_pretrained, split_backbone
    X, y = counts
    y = np.arange(len(X)) % 2
    cfg = E.RunConfig(arch_config={'nf': 8}, pretrain_epochs=1, finetune_epochs=2, bs=8, device='cpu', semi_weight=0.5)
    with pytest.raises(ExperimentError, match='recipe must be one of full, lp-ft, frozen'): cfg.replace(recipe='lpft')
    with pytest.raises(ExperimentError, match='semi_weight'): cfg.replace(semi_weight=-1)
    rows = E.compare(X[:32], y[:32], X[32:], y[32:], config=cfg.replace(recipe='lp-ft'), tasks=('masked',),
                     fractions=(1.0,), seeds=(0,), workdir=tmp_path, progress=False)
    methods = [r['method'] for r in rows if r['fraction'] is not None]
    assert methods == ['scratch', 'masked', 'masked+semi']
    with pytest.raises(ExperimentError, match=r"semi-supervised tasks \['next'\] are not in tasks"):
        E.compare(X[:32], y[:32], X[32:], y[32:], config=cfg, tasks=('masked',), semi_tasks=('next',), fractions=(1.0,),
                  seeds=(0,), workdir=tmp_path, progress=False)
    assert all(0 <= r['accuracy'] <= 1 for r in rows if r['fraction'] is not None)
    assert E.method_label('masked+semi') == 'masked-value + semi-supervised'
    # 'frozen': the loaded backbone's convolutions are exactly the pretrained ones after fine-tuning
    w = next(Path(tmp_path, 'weights').glob('masked_*.pth'))
    acc, learn = E.finetune(X[:32], y[:32], X[32:], y[32:], cfg.replace(recipe='frozen'), weights=w, return_learner=True)
    ref = E.finetune(X[:32], y[:32], X[32:], y[32:], cfg.replace(finetune_epochs=1), weights=w, return_learner=True)[1]
    load_pretrained(ref, w)
    convs = lambda m: [k for k, v in split_backbone(m).state_dict().items() if v.ndim == 3]
    a, b = split_backbone(learn.model).state_dict(), split_backbone(ref.model).state_dict()
    assert convs(learn.model) and all(torch.equal(a[k], b[k]) for k in convs(learn.model))


def test_finetune_runs_fixmatch_alone_on_the_unlabeled_series(counts):
    "semi_task=None + pseudo_threshold + X_unlabeled: FixMatch's term alone, on those series; without them, no callback."
    from tsai_ssl.semi import SemiSupervised
    X, _ = counts
    y = np.arange(len(X)) % 2
    cfg = E.RunConfig(arch_config={'nf': 8}, finetune_steps=4, bs=8, device='cpu', max_len=64, pseudo_threshold=0.)
    _, learn = E.finetune(X[:16], y[:16], X[32:], y[32:], cfg, X_unlabeled=X[16:], return_learner=True)
    semi = [cb for cb in learn.cbs if isinstance(cb, SemiSupervised)]
    assert len(semi) == 1 and semi[0].task is None and semi[0].pseudo_threshold == 0.
    assert semi[0].pseudo_share == 1. and np.isfinite(semi[0].pseudo_loss) and len(semi[0]._dl.dataset) == len(X) - 16
    for kw in (dict(X_unlabeled=X[16:]), {}):  # no threshold, or no unlabeled series: a plain fit
        c = cfg.replace(pseudo_threshold=None) if kw else cfg
        _, learn = E.finetune(X[:16], y[:16], X[32:], y[32:], c, return_learner=True, **kw)
        assert not any(isinstance(cb, SemiSupervised) for cb in learn.cbs)
    assert E.method_label('fixmatch') == 'FixMatch' and E.method_label('masked+semi+fixmatch') == \
        'masked-value + semi-supervised + FixMatch'


def test_tsai_mvp_is_a_reference_method_in_compare(tmp_path, counts, capsys):
    X, _ = counts
    y = np.arange(len(X)) % 2
    cfg = E.RunConfig(arch_config={'nf': 8}, pretrain_epochs=1, finetune_epochs=1, bs=8, device='cpu', max_len=64)
    rows = E.compare(X[:32], y[:32], X[32:], y[32:], config=cfg, tasks=('mvp',), fractions=(1.0,), seeds=(0,),
                     workdir=tmp_path, progress=True)
    assert 'plan: 1 pretraining and 2 classifier fits over 1 seed(s); about ' in capsys.readouterr().err
    assert 0 < E.seconds_per_unit(cfg, 1, 2, 64) < 1e-2
    assert [(r['method'], r['fraction']) for r in rows] == [('scratch', 1.0), ('mvp', None), ('mvp', 1.0)]
    assert 0 <= rows[-1]['accuracy'] <= 1 and np.isfinite(rows[1]['best_valid_loss'])
    assert E.method_label('mvp') == "tsai's MVP"
    with pytest.raises(ExperimentError, match='head attribute'):
        E.pretrain_mvp(X[:8], cfg.replace(arch='ResNet', arch_config=None), path=tmp_path / 'x.pth')


def test_step_budgets():
    "A budget in steps: the fewest whole epochs that reach it, whatever the number of labels (drop_last counted)."
    cfg = E.RunConfig(bs=16, finetune_steps=100, pretrain_steps=50, finetune_epochs=3)
    assert cfg.epochs('finetune', 5) == 100 and cfg.epochs('finetune', 500) == 4  # 1 and 32 batches per epoch
    assert cfg.epochs('finetune', 33) == 50  # 33 % 16 == 1: the last batch of one is dropped, 2 per epoch
    assert cfg.epochs('pretrain', 160) == 5 and E.RunConfig(pretrain_epochs=7).epochs('pretrain', 160) == 7
    assert E.RunConfig(finetune_epochs=3, finetune_min_steps=10, bs=4).epochs('finetune', 8) == 5
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ExperimentError, match='finetune_steps'): cfg.replace(finetune_steps=bad)


def test_finetune_runs_the_step_budget_and_lp_ft_stages(counts, monkeypatch, tmp_path):
    "finetune_steps=7 at bs 4: 3 epochs on 10 series, 4 on 9; lp-ft: a head-only fit, then every layer."
    import fastai.callback.schedule  # noqa: F401  (puts fit_one_cycle on Learner)
    from fastai.learner import Learner

    from tsai_ssl import split_backbone
    X, _ = counts
    y = np.arange(len(X)) % 2
    fits, original = [], Learner.fit_one_cycle

    def spy(self, n_epoch, *args, **kw):
        grads = [p.requires_grad for p in split_backbone(self.model).parameters() if p.ndim == 3]  # convolutions
        out = original(self, n_epoch, *args, **kw)
        fits.append((n_epoch, self.train_iter, grads))
        return out
    monkeypatch.setattr(Learner, 'fit_one_cycle', spy)
    cfg = E.RunConfig(arch_config={'nf': 8}, bs=4, device='cpu', finetune_steps=7, max_len=64)
    E.finetune(X[:10], y[:10], X[10:20], y[10:20], cfg)
    assert fits[-1][:2] == (3, 9)  # 3 epochs of 3 batches
    E.finetune(X[:9], y[:9], X[10:20], y[10:20], cfg)
    assert fits[-1][:2] == (4, 8)  # 9 = 2 x 4 + 1: the last batch of one is dropped, 2 batches per epoch
    w = E.pretrain(X[:16], 'masked', cfg.replace(pretrain_epochs=1, finetune_steps=None), path=tmp_path / 'w.pth')
    E.finetune(X[:10], y[:10], X[10:20], y[10:20], cfg.replace(recipe='lp-ft', finetune_steps=12), weights=w)
    (n_lp, _, grads_lp), (n_ft, _, grads_ft) = fits[-2:]
    assert (n_lp, n_ft) == (1, 3) and not any(grads_lp) and all(grads_ft)  # 4 epochs: a quarter head-only (and BatchNorm)


def test_pretrain_probe_curve_reports_and_changes_nothing(counts, tmp_path):
    "The probe curve: at most five points, the last at the last epoch; the weights are those of a run without it."
    import torch
    X, _ = counts
    y = np.arange(len(X)) % 2
    cfg = E.RunConfig(arch_config={'nf': 8}, pretrain_epochs=6, bs=8, device='cpu', max_len=64)
    w0, info0 = E.pretrain(X[:32], 'masked', cfg, path=tmp_path / 'a.pth', return_info=True)
    w1, info1 = E.pretrain(X[:32], 'masked', cfg, path=tmp_path / 'b.pth', probe=(X[:20], y[:20]), return_info=True)
    assert 'probe_curve' not in info0 and [e for e, _ in info1['probe_curve']] == [2, 4, 6]  # at most five probes
    assert all(0 <= a <= 1 for _, a in info1['probe_curve'])
    a, b = torch.load(w0, map_location='cpu'), torch.load(w1, map_location='cpu')
    a, b = (d.get('model', d) for d in (a, b))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = E.compare(X[:32], y[:32], X[32:], y[32:], config=cfg.replace(pretrain_epochs=2, finetune_epochs=1),
                     tasks=('masked',), fractions=(1.0,), seeds=(0,), workdir=tmp_path, progress=False)
    pre = next(r for r in rows if r['fraction'] is None)
    assert [e for e, _ in pre['probe_curve']] == [1, 2]
    paths = E.save_results(rows, tmp_path / 'out')
    assert paths['probe_png'].read_bytes()[:4] == b'\x89PNG'
    assert 'probe_png' not in E.save_results([r for r in rows if r['fraction'] is not None], tmp_path / 'out2')


def test_step_budget_shorter_than_an_epoch_draws_its_series(counts, tmp_path, monkeypatch):
    "A corpus larger than the budget: one epoch over steps * bs drawn series, valid_pct of the drawn ones held out."
    from fastai.learner import Learner
    X, _ = counts
    fits = []
    original = Learner.fit_one_cycle

    def spy(self, n_epoch, *args, **kw):
        fits.append((n_epoch, len(self.dls.train.dataset), len(self.dls.valid.dataset)))
        return original(self, n_epoch, *args, **kw)
    monkeypatch.setattr(Learner, 'fit_one_cycle', spy)
    cfg = E.RunConfig(arch_config={'nf': 8}, bs=4, device='cpu', max_len=64, pretrain_steps=3, valid_pct=0.2)
    _, info = E.pretrain(X[:40], 'masked', cfg, path=tmp_path / 'w.pth', return_info=True)
    assert fits[-1] == (1, 12, 3) and (info['n_series'], info['n_train'], info['n_valid']) == (40, 12, 3)  # ceil(12 / 0.8)
    _, info = E.pretrain(X[:12], 'masked', cfg.replace(pretrain_steps=5), path=tmp_path / 'v.pth', return_info=True)
    assert fits[-1] == (2, 10, 2) and info['n_train'] == 10  # smaller than the budget: every series, whole epochs


def test_pool_fractions_curve(counts, tmp_path):
    "compare(pool_fractions=...): smaller nested pretraining pools, rows kept out of the main table, a curve and plot."
    X, _ = counts
    y = np.arange(len(X)) % 2
    cfg = E.RunConfig(arch_config={'nf': 8}, pretrain_epochs=1, finetune_epochs=1, bs=8, device='cpu', max_len=64)
    with pytest.raises(ExperimentError, match='pool fractions'):
        E.compare(X[:32], y[:32], X[32:], y[32:], config=cfg, tasks=('masked',), fractions=(1.0,), pool_fractions=(0,),
                  progress=False)
    with pytest.warns(UserWarning, match='mixes data with compute'):
        E.compare(X[:32], y[:32], X[32:], y[32:], config=cfg, tasks=('masked',), fractions=(1.0,), seeds=(0,),
                  workdir=tmp_path / 'epochs', pool_fractions=(0.5,), probe=False, progress=False)
    rows = E.compare(X[:32], y[:32], X[32:], y[32:], X_unlabeled=X[:16], config=cfg.replace(pretrain_steps=4),
                     tasks=('masked',), fractions=(1.0,), seeds=(0,), workdir=tmp_path, pool_fractions=(0.25, 0.5),
                     probe=False, progress=False)
    pre = [r for r in rows if r['fraction'] is None]
    assert [r['n_pretrain'] for r in pre] == [48, 24, 12] and [r['pool_fraction'] for r in pre] == [1.0, 0.5, 0.25]
    assert len(E.aggregate(rows)) == 2  # scratch and the full pool's masked
    curve = E.pool_curve(rows)
    assert [(a['method'], a['n_pretrain']) for a in curve] == [('masked', 12), ('masked', 24), ('masked', 48), ('scratch', 0)]
    paths = E.save_results(rows, tmp_path / 'out')
    assert paths['pool_png'].read_bytes()[:4] == b'\x89PNG' and 'probe_png' not in paths
    assert json.loads(paths['json'].read_text())['pool_curve'] == curve


@pytest.mark.parametrize('max_len, window, expected', [(None, None, None), (512, None, 512), (None, 1024, 1024),
                                                      (512, 1024, 512), (2048, 1024, 1024), (None, True, None)])
def test_crop_of_a_step_is_the_shorter_of_crop_and_task_window(max_len, window, expected):
    "TS2Vec cuts long series to its window, so a plan that counted whole series would overstate its cost."
    from tsai_ssl.runs import _crop, _units
    assert _crop(max_len, window) == expected
    series = [np.zeros((1, 3000)), np.zeros((1, 600))]
    cap = expected or 10 ** 9
    assert _units(series, _crop(max_len, window)) == min(3000, cap) + min(600, cap)
