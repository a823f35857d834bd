"""Reporting a comparison: per-method means over seeds, a text table, one plain sentence (the verdict), a plot,
and the result files. Numpy at module level; matplotlib and the task registry (for table labels) on demand.

    table, sentence = summarize(rows, chance=1 / n_classes)
    save_results(rows, 'runs/mine', config, chance=1 / n_classes)   # results.json/.csv, summary.csv, accuracy.png
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .labels import fmt_frac
from .runs import SCRATCH

__all__ = ['aggregate', 'paired_ci', 'summarize', 'plot_results', 'plot_probe_curves', 'pool_curve', 'plot_pool_curve',
           'save_results', 'method_label']

CHANCE_MARGIN = 0.03  # a mean this close to chance (or within 2 std of it) counts as chance level


def method_label(method: str) -> str:
    "How tables and plots name a method: 'from scratch', or the task's label ('masked-value', ...)."
    if method == SCRATCH: return 'from scratch'
    if method.endswith('+semi'): return method_label(method[:-5]) + ' + semi-supervised'
    if method == 'fixmatch': return 'FixMatch'
    if method.endswith('+fixmatch'): return method_label(method[:-9]) + ' + FixMatch'
    if method == 'mvp': return "tsai's MVP"
    from .runs import _registry
    try: return _registry().task_label(method)
    except InputError: return str(method)  # rows from a task this installation does not have


def _methods(rows) -> list[str]:
    seen = []
    for r in rows:
        if r.get('accuracy') is not None and r['method'] not in seen: seen.append(r['method'])
    return ([SCRATCH] if SCRATCH in seen else []) + [m for m in seen if m != SCRATCH]


def paired_ci(diffs, level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided `level` confidence interval of the mean of paired differences (Student's t; one value per seed),
    None for fewer than two."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2: return None
    from scipy.stats import t
    h = float(t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(d.mean() - h), float(d.mean() + h)


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Mean and (sample) std of the test accuracy per method and fraction, and against training from scratch:
    ``gain_points`` (mean per-seed difference in accuracy points over the seeds both ran; the difference of the means
    when they share none), ``paired_seeds`` (seeds run by both) and ``ci95``
    (95% confidence interval of the per-seed paired difference in points, `paired_ci`; None with fewer than two
    paired seeds). All three are None for scratch or when scratch is missing; ``std`` is None for one seed."""
    fit_rows = [r for r in rows if r.get('accuracy') is not None and r.get('fraction') is not None
                and r.get('pool_fraction', 1.0) == 1.0]  # pretraining on part of the pool: see `pool_curve`
    out = []
    fracs = sorted({r['fraction'] for r in fit_rows})
    acc_of = {(r['method'], r['fraction'], r.get('seed')): float(r['accuracy']) for r in fit_rows}
    for m in _methods(fit_rows):
        for f in fracs:
            accs = np.array([r['accuracy'] for r in fit_rows if r['method'] == m and r['fraction'] == f], dtype=float)
            if not len(accs): continue
            nl = sorted({r['n_labeled'] for r in fit_rows if r['method'] == m and r['fraction'] == f})
            out.append(dict(method=m, fraction=f, n_labeled=nl[0] if len(nl) == 1 else nl, n_seeds=len(accs),
                            mean=float(accs.mean()), std=float(accs.std(ddof=1)) if len(accs) > 1 else None))
    base = {a['fraction']: a for a in out if a['method'] == SCRATCH}
    for a in out:
        b = base.get(a['fraction'])
        a['gain_points'] = a['paired_seeds'] = a['ci95'] = None
        if a['method'] == SCRATCH or b is None: continue
        seeds = sorted({s for (m, f, s) in acc_of if m == a['method'] and f == a['fraction']}
                       & {s for (m, f, s) in acc_of if m == SCRATCH and f == a['fraction']}, key=str)
        diffs = [100 * (acc_of[a['method'], a['fraction'], s] - acc_of[SCRATCH, a['fraction'], s]) for s in seeds]
        # on the seeds both ran, so that the gain and its interval describe the same runs
        a['gain_points'] = round(float(np.mean(diffs)) if diffs else 100 * (a['mean'] - b['mean']), 2)
        a['paired_seeds'] = len(seeds)
        ci = paired_ci(diffs)
        a['ci95'] = None if ci is None else [round(ci[0], 2), round(ci[1], 2)]
    return out


def summarize(rows: Sequence[dict], threshold: float = 1.0, chance: float | None = None) -> tuple[str, str]:
    """A text table (test accuracy %, mean ± std over seeds; rows = methods, columns = label fractions) and one
    plain sentence: which pretraining helped at which fraction and by how much (a gain counts when the mean accuracy
    is at least `threshold` points above training from scratch), whether gains are within the seed-to-seed noise,
    and, with `chance` (1 / n_classes), whether every method is at chance level (the budget is too small)."""
    agg = aggregate(rows)
    if not agg: return '(no results)', 'No results to summarize.'
    fracs = sorted({a['fraction'] for a in agg})
    methods = _methods(rows)
    labels = {m: method_label(m) for m in methods}
    cell = {(a['method'], a['fraction']): a for a in agg}
    n_seeds = max(a['n_seeds'] for a in agg)
    heads = []
    for f in fracs:
        nl = cell.get((methods[0], f), {}).get('n_labeled', '?')
        heads.append(f'{fmt_frac(f)} (n={nl})')

    def fmt(a):
        if a is None: return '-'
        s = f"{100 * a['mean']:.1f}"
        return s + (f" ± {100 * a['std']:.1f}" if a['std'] is not None else '')

    w0 = max(len('labeled fraction'), *(len(labels[m]) for m in methods))
    cells = [[fmt(cell.get((m, f))) for f in fracs] for m in methods]
    ws = [max(len(h), *(len(c[j]) for c in cells)) for j, h in enumerate(heads)]
    lines = [f"test accuracy (%), mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''}",
             'labeled fraction'.ljust(w0) + '  ' + '  '.join(h.rjust(w) for h, w in zip(heads, ws))]
    lines.append('-' * len(lines[-1]))
    for m, c in zip(methods, cells):
        lines.append(labels[m].ljust(w0) + '  ' + '  '.join(v.rjust(w) for v, w in zip(c, ws)))
    diff_rows = [m for m in methods if m != SCRATCH and any((cell.get((m, f)) or {}).get('ci95') for f in fracs)]
    if diff_rows:  # the paired per-seed differences say more than two overlapping stds
        def dfmt(a):
            if a is None or a['gain_points'] is None: return '-'
            if a['ci95'] is None: return f"{a['gain_points']:+.1f}"
            return f"{a['gain_points']:+.1f} [{a['ci95'][0]:+.1f}, {a['ci95'][1]:+.1f}]"
        dcells = [[dfmt(cell.get((m, f))) for f in fracs] for m in diff_rows]
        dws = [max(len(h), *(len(c[j]) for c in dcells)) for j, h in enumerate(heads)]
        lines += ['', 'difference to scratch (points), paired over seeds [95% CI]',
                  'labeled fraction'.ljust(w0) + '  ' + '  '.join(h.rjust(w) for h, w in zip(heads, dws))]
        lines.append('-' * len(lines[-1]))
        for m, c in zip(diff_rows, dcells):
            lines.append(labels[m].ljust(w0) + '  ' + '  '.join(v.rjust(w) for v, w in zip(c, dws)))
    return '\n'.join(lines), _sentence(agg, fracs, threshold, n_seeds, labels, chance)


def at_chance(a: dict, chance: float) -> bool:
    "Whether a method's mean accuracy is within noise of chance: at most chance + max(2 std, 3 points)."
    return a['mean'] <= chance + max(2 * (a['std'] or 0.), CHANCE_MARGIN)


def _within_noise(a) -> bool | None:
    "Whether the paired 95% interval of a method's difference to scratch holds 0; None without one (one seed)."
    return None if a.get('ci95') is None else a['ci95'][0] <= 0 <= a['ci95'][1]


def _ci_text(a) -> str:
    return '' if a.get('ci95') is None else f"95% CI {a['ci95'][0]:+.1f} to {a['ci95'][1]:+.1f}"


def _sentence(agg, fracs, threshold, n_seeds, labels, chance=None) -> str:
    label = lambda m: labels.get(m, m)  # noqa: E731
    tasks = [m for m in dict.fromkeys(a['method'] for a in agg) if m != SCRATCH]
    seeds = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
    if chance is not None and all(at_chance(a, chance) for a in agg):
        return (f'Every method is at chance level (1/n_classes = {100 * chance:.1f}%; best mean '
                f"{100 * max(a['mean'] for a in agg):.1f}%): the training budget is too small to compare pretraining "
                'with training from scratch; train longer (more epochs, --finetune-min-steps) or on more series.')
    if not tasks: return 'Only training from scratch was run, so there is no pretraining to compare.'
    if not any(a['method'] == SCRATCH for a in agg): return 'Training from scratch was not run, so gains cannot be measured.'
    gains = [a for a in agg if a['gain_points'] is not None]
    if not gains: return 'No labeled fraction has results both with pretraining and from scratch yet.'
    helped = [a for a in gains if a['gain_points'] >= threshold]
    if not helped:
        best = max(gains, key=lambda a: a['gain_points'])
        ci = _ci_text(best)
        within = f', {ci}: within noise' if _within_noise(best) else (f', {ci}' if ci else '')
        return (f"No pretraining improved test accuracy over training from scratch by {threshold:g} point or more at any "
                f"labeled fraction (closest: {label(best['method'])} at {fmt_frac(best['fraction'])} labels, "
                f"{best['gain_points']:+.1f} points{within}; {seeds}).")
    clear = [a for a in helped if _within_noise(a) is False]
    best = max(clear or helped, key=lambda a: a['gain_points'])
    if not clear and _within_noise(best):
        return (f"No pretraining helped by more than the seed-to-seed noise: the largest gain, {label(best['method'])} at "
                f"{fmt_frac(best['fraction'])} labels (+{best['gain_points']:.1f} points), is within noise (paired "
                f"difference to scratch over {best['paired_seeds']} seeds, {_ci_text(best)}); run more seeds to tell.")
    scratch = {a['fraction']: a['mean'] for a in agg if a['method'] == SCRATCH}
    noise = (f"; paired {_ci_text(best)} over {best['paired_seeds']} seeds" if best.get('ci95') is not None
             else '; one seed, so the noise is unknown: run more seeds to tell')
    parts = [f"{label(best['method'])} pretraining helped most at {fmt_frac(best['fraction'])} labels "
             f"(+{best['gain_points']:.1f} accuracy points: {100 * best['mean']:.1f}% vs "
             f"{100 * scratch[best['fraction']]:.1f}% from scratch{noise})"]
    for t in tasks:
        hs = [a for a in helped if a['method'] == t and a is not best]
        if hs:
            def gain(a):
                return f"+{a['gain_points']:.1f}" + (', within noise' if _within_noise(a) else '')
            where = _join([f"{fmt_frac(a['fraction'])} ({gain(a)})" for a in hs])
            also = ' also' if t == best['method'] else ''
            parts.append(f'{label(t)}{also} helped at {where}')
        elif t != best['method']:
            parts.append(f'{label(t)} did not help at any fraction')
    measured = {a['fraction'] for a in gains}
    not_helped = [f for f in fracs if f in measured and not any(a['fraction'] == f for a in helped)]
    if not_helped:
        worst = min((a for a in gains if a['fraction'] in not_helped), key=lambda a: a['gain_points'], default=None)
        hurt = (f", where pretraining lowered accuracy by up to {-worst['gain_points']:.1f} points"
                if worst is not None and worst['gain_points'] <= -threshold else '')
        parts.append(f"no task helped at {_join([fmt_frac(f) for f in not_helped], 'or')}{hurt}")
    return '; '.join(parts) + f' (mean test accuracy over {seeds}; a gain counts from {threshold:g} point).'


def _join(items: list[str], word: str = 'and') -> str:
    return items[0] if len(items) == 1 else ', '.join(items[:-1]) + f' {word} {items[-1]}'


def _figure():
    "A matplotlib Figure (no pyplot: never changes a notebook's backend or opens a window) and its axes."
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    return fig, fig.subplots()


def _save(fig, ax, path, legend_size: int = 9) -> Path:
    "Grid, legend, tight layout, and the PNG at `path` (its folder made)."
    ax.grid(alpha=0.3); ax.legend(fontsize=legend_size)
    fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_results(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                 chance: float | None = None) -> Path:
    """PNG of test accuracy vs labeled fraction (log x axis): one line per method, error bars = std over seeds;
    `chance` (e.g. 1 / n_classes) adds a dotted reference line."""
    agg = aggregate(rows)
    fig, ax = _figure()
    fracs = sorted({a['fraction'] for a in agg})
    for k, m in enumerate(_methods(rows)):
        pts = sorted((a for a in agg if a['method'] == m), key=lambda a: a['fraction'])
        x = np.array([a['fraction'] for a in pts]) * (1 + 0.015 * (k - 1.5))  # small offsets: error bars stay visible
        yv = [100 * a['mean'] for a in pts]
        err = [100 * (a['std'] or 0) for a in pts]
        ax.errorbar(x, yv, yerr=err, marker='o', capsize=3, lw=2 if m != SCRATCH else 1.5,
                    ls='--' if m == SCRATCH else '-', color='0.35' if m == SCRATCH else None, label=method_label(m))
    if chance is not None:
        ax.axhline(100 * chance, color='0.6', ls=':', lw=1, label='chance')
    if fracs:
        ax.set_xscale('log')
        ax.set_xticks(fracs); ax.set_xticklabels([fmt_frac(f) for f in fracs]); ax.minorticks_off()
    ax.set_xlabel('labeled fraction of the training series')
    ax.set_ylabel('test accuracy (%)')
    n_seeds = max((a['n_seeds'] for a in agg), default=0)
    ax.set_title(title or f"accuracy vs labels (mean ± std over {n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=10)
    return _save(fig, ax, path, legend_size=9)


def pool_curve(rows: Sequence[dict]) -> list[dict]:
    """Accuracy against the number of pretraining series (`compare` with ``pool_fractions``): per method, label
    fraction and pool size, mean and std over seeds, with scratch at that label fraction (``n_pretrain`` 0)."""
    fit_rows = [r for r in rows if r.get('accuracy') is not None and r.get('fraction') is not None]
    out = []
    keys = sorted({(r['method'], r['fraction'], r.get('n_pretrain', 0) if r['method'] != SCRATCH else 0)
                   for r in fit_rows if r['method'] == SCRATCH or 'n_pretrain' in r})
    for m, f, n in keys:
        accs = np.array([r['accuracy'] for r in fit_rows if r['method'] == m and r['fraction'] == f
                         and (m == SCRATCH or r.get('n_pretrain') == n)], dtype=float)
        out.append(dict(method=m, fraction=f, n_pretrain=int(n), n_seeds=len(accs), mean=float(accs.mean()),
                        std=float(accs.std(ddof=1)) if len(accs) > 1 else None))
    return out if any(a['method'] != SCRATCH for a in out) else []


def plot_pool_curve(rows: Sequence[dict], path: str | os.PathLike) -> Path | None:
    """PNG of test accuracy against the number of pretraining series (log x), one line per method and label
    fraction, scratch as a dashed level; None without pool rows."""
    curve = pool_curve(rows)
    if not curve: return None
    fig, ax = _figure()
    for k, (m, f) in enumerate(dict.fromkeys((a['method'], a['fraction']) for a in curve if a['method'] != SCRATCH)):
        pts = sorted((a for a in curve if a['method'] == m and a['fraction'] == f), key=lambda a: a['n_pretrain'])
        ax.errorbar([a['n_pretrain'] for a in pts], [100 * a['mean'] for a in pts], yerr=[100 * (a['std'] or 0) for a in pts],
                    marker='o', capsize=3, color=f'C{k}', label=f'{method_label(m)}, {fmt_frac(f)} labels')
        sc = next((a for a in curve if a['method'] == SCRATCH and a['fraction'] == f), None)
        if sc is not None: ax.axhline(100 * sc['mean'], color=f'C{k}', ls='--', lw=1, label=f'from scratch, {fmt_frac(f)} labels')
    ax.set_xscale('log'); ax.set_xlabel('series seen by pretraining (labels unused)'); ax.set_ylabel('test accuracy (%)')
    ax.set_title('how much data for pretraining? (mean ± std over seeds)', fontsize=10)
    return _save(fig, ax, path, legend_size=8)


def plot_probe_curves(rows: Sequence[dict], path: str | os.PathLike) -> Path | None:
    """PNG of each pretraining's linear-probe accuracy against its epochs (the ``probe_curve`` of `compare`'s
    pretraining rows), one line per task and seed: a curve still rising at the end says pretrain longer. None
    when no row has a curve."""
    curves = [r for r in rows if r.get('probe_curve') and r.get('pool_fraction', 1.0) == 1.0]
    if not curves: return None
    fig, ax = _figure()
    colors = {}
    for r in curves:
        e, acc = zip(*r['probe_curve'])
        first = r['method'] not in colors  # one legend entry per method
        c = colors.setdefault(r['method'], f'C{len(colors)}')
        ax.plot(e, [100 * a for a in acc], marker='o', color=c, alpha=0.85, label=method_label(r['method']) if first else None)
    ax.set_xlabel('pretraining epoch'); ax.set_ylabel('linear-probe accuracy (%, cross-validated)')
    ax.set_title('representation quality during pretraining (one line per seed)', fontsize=10)
    return _save(fig, ax, path, legend_size=9)


def _csv_value(v):
    if v is None: return ''
    if isinstance(v, float): return f'{v:.6g}'
    if isinstance(v, (list, tuple)): return ' '.join(map(str, v))
    return v


def save_results(rows: Sequence[dict], out: str | os.PathLike, config: dict | None = None,
                 plot: bool = True, title: str | None = None, chance: float | None = None) -> dict[str, Path]:
    """Write ``results.json`` (config, every run, the aggregate, table and sentence), ``results.csv`` (one row per
    run), ``summary.csv`` (mean/std/gain per method and fraction), ``accuracy.png`` and, when pretraining rows carry
    a linear-probe curve, ``probe.png`` (`plot_probe_curves`) into folder `out`."""
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    table, sentence = summarize(rows, chance=chance)
    agg = aggregate(rows)
    paths = dict(json=out / 'results.json', csv=out / 'results.csv', summary_csv=out / 'summary.csv')
    if plot: paths['png'] = out / 'accuracy.png'
    if plot and any(r.get('probe_curve') and r.get('pool_fraction', 1.0) == 1.0 for r in rows):
        paths['probe_png'] = out / 'probe.png'
    if plot and pool_curve(rows): paths['pool_png'] = out / 'pool.png'
    doc = dict(config=config or {}, runs=list(rows), summary=agg, pool_curve=pool_curve(rows), table=table, sentence=sentence,
               files={k: str(v) for k, v in paths.items()})
    paths['json'].write_text(json.dumps(doc, indent=1, default=_json_default))
    keys = ['method', 'fraction', 'n_labeled', 'seed', 'accuracy', 'seconds', 'best_valid_loss', 'weights', 'pool_fraction',
            'n_pretrain']
    with open(paths['csv'], 'w', newline='') as fh:
        w = csv.writer(fh); w.writerow(keys)
        for r in rows: w.writerow([_csv_value(r.get(k)) for k in keys])
    keys = ['method', 'fraction', 'n_labeled', 'n_seeds', 'mean', 'std', 'gain_points', 'paired_seeds', 'ci95']
    with open(paths['summary_csv'], 'w', newline='') as fh:
        w = csv.writer(fh); w.writerow(keys)
        for a in agg: w.writerow([_csv_value(a.get(k)) for k in keys])
    if plot: plot_results(rows, paths['png'], title=title, chance=chance)
    if 'probe_png' in paths: plot_probe_curves(rows, paths['probe_png'])
    if 'pool_png' in paths: plot_pool_curve(rows, paths['pool_png'])
    return paths


def _json_default(o):
    if isinstance(o, np.generic): return o.item()
    if isinstance(o, np.ndarray): return o.tolist()
    if isinstance(o, Path): return str(o)
    return str(o)
