"""Plots of what a pretext task predicts, in the spirit of fastai's `show_results` (matplotlib, PNG on request)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ['show_masked_preds', 'plot_next_step']


def _figure(n_rows: int, width: float = 12, height: float = 2.6):
    import matplotlib.pyplot as plt  # lazily: headless machines fall back to Agg by themselves
    fig, axs = plt.subplots(n_rows, 1, figsize=(width, height * n_rows), squeeze=False)
    return fig, axs[:, 0]


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def show_masked_preds(task, n: int = 3, dl=None, max_steps: int = 400, path: str | Path | None = None):
    """For `n` series: the original values (raw scale), the masked spans (shaded) and the predictions there."""
    out = task.pretext_batch(dl=dl, n=n)
    raw, pred = out['raw'], out['pred']
    masked = out['xb'][2]  # the masked steps, (n, L)
    fig, axs = _figure(len(raw))
    for i, ax in enumerate(axs):
        L = raw.shape[-1] if out['pad_mask'] is None else int(out['pad_mask'][i].sum())
        L = min(L, max_steps)
        t = np.arange(L)
        ax.plot(t, raw[i, 0, :L].cpu().numpy(), lw=0.8, color='0.3', label='original')
        m = masked[i, :L].cpu().numpy()
        ax.fill_between(t, 0, 1, where=m, transform=ax.get_xaxis_transform(), color='tab:orange', alpha=0.2, label='masked')
        if task.n_values is not None:
            p = pred[i].reshape(-1, task.n_values, pred.shape[-1])[0].argmax(0)[:L].cpu().numpy()
        else:  # continuous predictions live in the model-input scale
            p = pred[i, 0, :L].cpu().numpy()
        ax.scatter(t[m], p[m], s=8, color='tab:red', label='prediction', zorder=3)
        ax.set_ylabel(f'series {i}')
    axs[0].legend(loc='upper right', fontsize=8, ncol=3)
    axs[-1].set_xlabel('time step')
    fig.suptitle(f'{type(task).__name__}: predictions on masked spans')
    return _finish(fig, path)


def plot_next_step(task, item: int = 0, dl=None, start: int = 0, steps: int = 200, path: str | Path | None = None):
    """Heat map of the predicted next-value distribution over `steps` steps of one series, actual values on top."""
    out = task.pretext_batch(dl=dl, n=item + 1)
    if task.n_values is None: raise ValueError('plot_next_step shows a distribution: it needs a categorical task (n_values=...).')
    pred = out['pred'][item:item + 1]
    probs = task._logits(pred).softmax(1)[0, :, 0, 0]  # (V, L): next value given steps <= t
    L = pred.shape[-1] if out['pad_mask'] is None else int(out['pad_mask'][item].sum())
    stop = min(L - 1, start + steps)
    actual = out['raw'][item, 0, start + 1:stop + 1].cpu().numpy()
    fig, (ax,) = _figure(1, height=4)
    ax.imshow(probs[:, start:stop].cpu().numpy(), aspect='auto', origin='lower', cmap='Blues',
              extent=(start - 0.5, stop - 0.5, -0.5, task.n_values - 0.5))
    ax.plot(np.arange(start, stop), actual, '.', color='tab:red', ms=3, label='actual next value')
    ax.set_xlabel('step t (prediction of x[t+1] from x[..t])'); ax.set_ylabel('value')
    ax.legend(loc='upper right', fontsize=8)
    ax.set_title(f'{type(task).__name__}: predicted distribution of the next value')
    return _finish(fig, path)
