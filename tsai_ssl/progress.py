"""Progress of long runs: one bar with ETA on stderr, advanced in work units (series x steps) after each epoch.

Only the standard library at module level; `tick_callback` imports fastai when a fit needs it.
"""
from __future__ import annotations

import sys
import time

__all__ = ['Progress', 'tick_callback', 'hms']


def hms(s: float) -> str:
    "Seconds as m:ss, or h:mm:ss from an hour."
    s = int(max(0, s))
    return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60}:{s % 60:02d}'


class Progress:
    "A minimal progress bar with ETA on stderr (redrawn in place on a terminal, a line every `log_every` s otherwise)."

    def __init__(self, total: float, desc: str = '', file=None, enabled: bool = True, width: int = 28,
                 log_every: float = 20.):
        self.total, self.desc, self.file, self.enabled = max(float(total), 1e-9), desc, file or sys.stderr, enabled
        self.width, self.log_every, self.done, self.note = width, log_every, 0., ''
        self.t0 = self._last = time.time()
        self.tty = hasattr(self.file, 'isatty') and self.file.isatty()
        self._draw(force=True)

    def advance(self, units: float = 0., note: str | None = None):
        "Add `units` of finished work; `note` replaces the text after the bar."
        self.done = min(self.total, self.done + units)
        if note is not None: self.note = note
        self._draw()

    def _line(self) -> str:
        frac = self.done / self.total
        el = time.time() - self.t0
        eta = f'ETA {hms(el / frac - el)}' if frac > 0.01 else 'ETA ?'
        bar = '#' * int(round(frac * self.width)) + '-' * (self.width - int(round(frac * self.width)))
        return f'{self.desc} [{bar}] {100 * frac:3.0f}% {hms(el)} elapsed, {eta}  {self.note}'

    def _draw(self, force: bool = False):
        if not self.enabled: return
        now = time.time()
        if self.tty:
            if force or now - self._last > 0.2:
                self.file.write('\r' + self._line()[:150].ljust(150)); self.file.flush(); self._last = now
        elif force or now - self._last >= self.log_every:
            self.file.write(self._line() + '\n'); self.file.flush(); self._last = now

    def close(self):
        "Fill the bar and end its line."
        if not self.enabled: return
        self.done = self.total
        self.note = f'done in {hms(time.time() - self.t0)}'
        if self.tty: self.file.write('\r' + self._line()[:150].ljust(150) + '\n')
        else: self.file.write(self._line() + '\n')
        self.file.flush()


def tick_callback(progress: Progress | None, units_per_epoch: float, log: bool = False):
    "A fastai callback that advances `progress` after each epoch; with `log`, one line per epoch (losses, metrics) on stderr."
    from fastai.callback.core import Callback

    class _Tick(Callback):
        order = 90
        _trained = False
        def before_fit(self): self.t0 = time.time()
        def after_train(self): self._trained = True
        def after_epoch(self):
            if not self._trained: return  # get_preds/validate run epoch events too, without a training phase
            self._trained = False
            if progress is not None: progress.advance(units_per_epoch)
            rec = getattr(self.learn, 'recorder', None)
            if not log or rec is None: return
            vals = rec.log[1:-1] if len(rec.log) > 2 else []
            names = [n for n in rec.metric_names[1:-1]]
            parts = [f'{n} {v:.4g}' for n, v in zip(names, vals) if isinstance(v, (int, float)) and v == v]
            print(f'  epoch {self.epoch + 1}/{self.n_epoch}: ' + ', '.join(parts) + f' ({hms(time.time() - self.t0)})',
                  file=sys.stderr, flush=True)
    return _Tick()
