"""Does self-supervised pretraining help, and at which amount of labels? The experiment's public names in one place.

    data = load_npz('data.npz')                      # or synthetic_data(...), ucr_data('GunPoint')
    cfg = RunConfig(pretrain_epochs=10, finetune_epochs=10, bs=32)
    rows = compare(data.X_train, data.y_train, data.X_test, data.y_test, X_unlabeled=data.X_unlabeled,
                   config=cfg, tasks=('masked', 'next'), fractions=(0.05, 0.2, 1.0), seeds=(0, 1))
    table, sentence = summarize(rows, chance=1 / 4)
    plot_results(rows, 'accuracy.png')

The code lives in modules by job, all importable without torch (the functions that train import it):

* `tsai_ssl.series`: the input rules (shapes, NaN padding, n_values) every layer shares;
* `tsai_ssl.labels`: label fractions and stratified subsets (`label_subset`);
* `tsai_ssl.inputs`: `SplitData`, `split_data`, `load_npz`, synthetic and UCR data, `describe_data`;
* `tsai_ssl.config`: `RunConfig` (the settings every fit shares), architectures, devices;
* `tsai_ssl.runs`: `pretrain`, `finetune`, `evaluate`, `compare`;
* `tsai_ssl.report`: `aggregate`, `paired_ci`, `summarize`, `plot_results`, `save_results`;
* `tsai_ssl.progress`: the progress bar.

Pretrained weights load with ``learn.load(name, strict=False, with_opt=False)`` or `tsai_ssl.load_pretrained`.
`ExperimentError` is `tsai_ssl.errors.InputError` (kept under its old name).
"""
from __future__ import annotations

from .config import ARCHS, RECIPES, STANDARDIZE, RunConfig, get_arch, normalize_arch, recorded_arch, recorded_standardize, resolve_device
from .errors import InputError
from .inputs import SplitData, demo_data, describe_data, load_npz, split_data, synthetic_data, ucr_data, ucr_names
from .labels import DEFAULT_FRACTIONS, check_fractions, fmt_frac, label_subset, min_fraction, n_labels
from .progress import Progress, hms
from .report import aggregate, method_label, paired_ci, plot_pool_curve, plot_results, pool_curve, save_results, summarize
from .runs import MVP, SCRATCH, compare, epochs_for_steps, evaluate, finetune, normalize_task, pretrain, pretrain_mvp, seconds_per_unit
from .series import as_series, check_series, infer_n_values

ExperimentError = InputError  # the old name: `except ExperimentError` still catches every input error

__all__ = ['ExperimentError', 'RECIPES', 'InputError', 'RunConfig', 'ARCHS', 'DEFAULT_FRACTIONS', 'SCRATCH', 'SplitData',
           'normalize_task', 'normalize_arch', 'get_arch', 'resolve_device', 'recorded_arch', 'recorded_standardize',
           'STANDARDIZE', 'infer_n_values',
           'as_series', 'check_series', 'check_fractions', 'label_subset', 'min_fraction', 'n_labels', 'fmt_frac',
           'evaluate', 'load_npz', 'synthetic_data', 'demo_data', 'ucr_data', 'ucr_names', 'split_data', 'describe_data',
           'pretrain', 'pretrain_mvp', 'MVP', 'finetune', 'epochs_for_steps', 'seconds_per_unit', 'compare', 'aggregate',
           'paired_ci', 'summarize', 'method_label', 'pool_curve', 'plot_pool_curve', 'plot_results', 'save_results', 'Progress', 'hms']
