"""Writing a `RaggedStore` series by series, so a corpus never has to fit in memory.

    with RaggedStore.create('corpus', channels=1, dtype=np.uint8, n_values=41) as w:
        for s in read_my_series():          # (L,) or (C, L) arrays, any number of them
            w.append(s)
    store = RaggedStore.load('corpus')      # memory-mapped

    build_store('folder_of_npy_files', 'corpus', dtype=np.uint8, n_values=41)    # or: tsai-ssl store build SRC DEST

How, and why it is safe:

* The data file is a ``.npy`` in Fortran order: element ``(c, t)`` of the ``(C, total)`` array lies at
  ``t * C + c``, so appending a series is appending its ``(L, C)`` rows at the end of the file (a C-order
  ``(C, total)`` array could not grow). The header reserves room for any shape and is rewritten when the writer
  closes. `RaggedStore.load` reads both orders; ``data[:, a:b]`` is a ``(C, L)`` view either way.
* Memory: the writer holds the offsets (8 bytes per series) and one series at a time.
* Atomic: a new store is written under ``.partial`` names and renamed into place when the writer closes, the
  offsets last. A crash before that leaves only ``.partial`` files, which `RaggedStore.load` never reads; a writer
  left by an exception (``with`` block) removes them. Appending to an existing store writes past the end of its
  data and commits by replacing its offsets file: a crash before the commit leaves the old store as it was (the
  old header and offsets ignore the new bytes).
* Validation streams: each appended series is checked (NaN, infinite values, channels and, with ``n_values``,
  integers in ``0..n_values-1``) before it is written, and the error names its index in the store and the step.

Only numpy is imported here, so the command line can build a store without loading torch.
"""
from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import InputError
from .series import check_series

__all__ = ['StoreWriter', 'build_store', 'iter_series_files', 'store_summary', 'open_store_series']

_HEADER_LEN = 256  # bytes for magic + version + length + header dict: room for any (C, total) shape
_MAGIC = b'\x93NUMPY\x01\x00'


def _header(dtype: np.dtype, shape: tuple[int, int], size: int = _HEADER_LEN) -> bytes:
    "A numpy format 1.0 header of exactly `size` bytes (so it can be rewritten in place)."
    d = "{'descr': %r, 'fortran_order': True, 'shape': (%d, %d), }" % (np.lib.format.dtype_to_descr(dtype), *shape)
    body = d.encode('latin1')
    pad = size - len(_MAGIC) - 2 - len(body) - 1
    if pad < 0: raise InputError(f'a header of {size} bytes cannot hold the shape {shape}: rebuild the store.')
    return _MAGIC + (size - len(_MAGIC) - 2).to_bytes(2, 'little') + body + b' ' * pad + b'\n'


def _read_header(f) -> tuple[np.dtype, bool, tuple[int, ...], int]:
    "dtype, fortran order, shape and data offset of an open ``.npy`` file."
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return dtype, fortran, shape, f.tell()


class StoreWriter:
    """Appends series to a `RaggedStore` on disk; use `RaggedStore.create` to make one (see the module docstring).

    Args:
        path: the store's path prefix (``path.data.npy`` and ``path.offsets.npy``).
        channels: channels of every series.
        dtype: the stored dtype (values are cast to it after validation; uint8 holds counts 0..255).
        n_values: when given, every value must be an integer in ``0..n_values-1``.
        append: add to the existing store at `path` (same channels and dtype) instead of creating one.
        overwrite: replace an existing store at `path` (otherwise creating over one is refused).

    Example:
        ```python
        with RaggedStore.create('my_corpus', channels=1, dtype=np.uint8, n_values=41) as w:
            w.append(np.array([0, 3, 40, 2]))
            w.extend([np.ones(10), np.zeros((1, 7))])
        len(RaggedStore.load('my_corpus'))   # 3
        ```
    """

    def __init__(self, path: str | Path, channels: int = 1, dtype=np.float32, n_values: int | None = None,
                 append: bool = False, overwrite: bool = False):
        self.path, self.channels, self.dtype, self.n_values = Path(path), int(channels), np.dtype(dtype), n_values
        self.append_mode, self.closed = append, False
        self._data_final, self._off_final = Path(f'{path}.data.npy'), Path(f'{path}.offsets.npy')
        if channels < 1: raise ValueError(f'channels must be >= 1, got {channels}')
        if self.n_values is not None and np.issubdtype(self.dtype, np.integer) and self.n_values - 1 > np.iinfo(self.dtype).max:
            raise ValueError(f'n_values={n_values} does not fit dtype {self.dtype}')
        exists = self._data_final.exists() or self._off_final.exists()
        if append:
            if not (self._data_final.exists() and self._off_final.exists()):
                raise FileNotFoundError(f'No store at {path} to append to (expected {self._data_final} and {self._off_final}).')
            self._open_for_append()
        else:
            if exists and not overwrite:
                raise FileExistsError(f'A store exists at {path}: pass append=True to add to it or overwrite=True to replace it.')
            self._data_path = Path(f'{path}.data.npy.partial')
            self._off_path = Path(f'{path}.offsets.npy.partial')
            self._f = open(self._data_path, 'wb')
            self._f.write(_header(self.dtype, (self.channels, 0)))
            self._data_start = _HEADER_LEN
            self._offsets = array('q', [0])

    def _open_for_append(self):
        with open(self._data_final, 'rb') as f: dtype, fortran, shape, start = _read_header(f)
        C, total = shape
        if C != self.channels or dtype != self.dtype:
            raise InputError(f'The store at {self.path} holds {C}-channel {dtype} series; this writer was asked for '
                             f'{self.channels}-channel {self.dtype}.')
        if not fortran and C > 1:
            raise InputError(f'The store at {self.path} was written by RaggedStore.save (channel-major): it cannot grow in '
                             'place. Rebuild it with RaggedStore.create / build_store.')
        with open(self._data_final, 'rb') as f:
            if f.read(len(_MAGIC)) != _MAGIC:  # a format 2.0 header (np.save of a huge dtype description)
                raise InputError(f'The store at {self.path} has a header this writer cannot rewrite: rebuild it.')
        self._offsets = array('q', np.load(self._off_final).tolist())
        if self._offsets[-1] != total:
            raise InputError(f'The store at {self.path} is inconsistent (offsets end at {self._offsets[-1]}, data holds '
                             f'{total} steps): rebuild it.')
        self._data_path, self._off_path = self._data_final, Path(f'{self.path}.offsets.npy.partial')
        self._f = open(self._data_path, 'r+b')
        self._data_start = start
        self._f.seek(start + total * C * self.dtype.itemsize)
        self._f.truncate()  # bytes of an earlier append that crashed before its commit

    def __len__(self) -> int: return len(self._offsets) - 1

    def append(self, series) -> None:
        "Validate and write one series, ``(L,)`` or ``(C, L)``."
        if self.closed: raise ValueError('This StoreWriter is closed.')
        x = np.asarray(series)
        if x.ndim == 1: x = x[None]
        i = len(self)
        name = f'series {i} of the store'
        check_series([x], n_values=self.n_values, name=lambda _: name)
        if x.shape[0] != self.channels:
            raise InputError(f'{name} has {x.shape[0]} channels; the store holds {self.channels}-channel series.')
        if x.shape[1] == 0: raise InputError(f'{name} is empty.')
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            if x.min() < info.min or x.max() > info.max or (np.issubdtype(x.dtype, np.floating) and (x != np.round(x)).any()):
                c, t = map(int, np.argwhere((x < info.min) | (x > info.max) | (x != np.round(x)))[0])
                raise InputError(f'{name} has value {x[c, t]:g} at step {t}, which {self.dtype} cannot hold exactly.')
        self._f.write(np.ascontiguousarray(x.T, dtype=self.dtype).tobytes())  # (L, C) rows: Fortran order
        self._offsets.append(self._offsets[-1] + x.shape[1])

    def extend(self, series: Iterable) -> None:
        "`append` every series of an iterable."
        for s in series: self.append(s)

    def close(self) -> Path:
        "Finish the store: rewrite the header, then commit (rename into place). Returns the path prefix."
        if self.closed: return self.path
        total = self._offsets[-1]
        self._f.flush()
        os.fsync(self._f.fileno())
        offsets = np.frombuffer(self._offsets, dtype=np.int64)
        with open(self._off_path, 'wb') as fo:  # np.save on a file object: no '.npy' appended to the name
            np.save(fo, offsets)
            fo.flush(); os.fsync(fo.fileno())
        if self.append_mode:
            # offsets first, header after: in between, the old header (old total) and new offsets disagree and the
            # store refuses to load rather than reading a half-made one
            os.replace(self._off_path, self._off_final)
            self._f.seek(0); self._f.write(_header(self.dtype, (self.channels, total), self._data_start))
            self._f.flush(); os.fsync(self._f.fileno())
            self._f.close()
        else:
            self._f.seek(0); self._f.write(_header(self.dtype, (self.channels, total))); self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            if self._off_final.exists(): self._off_final.unlink()  # an overwritten store: never new data + old offsets
            os.replace(self._data_path, self._data_final)
            os.replace(self._off_path, self._off_final)  # the commit
        self.closed = True
        return self.path

    def abort(self) -> None:
        "Give up: remove what this writer wrote (an append leaves the existing store as it was)."
        if self.closed: return
        self.closed = True
        if self.append_mode:  # the header still holds the old total: cut the file back to it
            with open(self._data_final, 'rb') as f: _, _, shape, start = _read_header(f)
            self._f.truncate(start + shape[1] * shape[0] * self.dtype.itemsize)
            self._f.close()
        else:
            self._f.close()
            self._data_path.unlink(missing_ok=True)
        self._off_path.unlink(missing_ok=True)

    def __enter__(self) -> 'StoreWriter': return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None: self.close()
        else: self.abort()


# ----------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------
def _series_in_array(a: np.ndarray) -> Iterator[np.ndarray]:
    "A 1-D or 2-D array is one series ``(L,)`` / ``(C, L)``; a 3-D one is N series ``(N, C, L)``."
    if a.ndim in (1, 2): yield a
    elif a.ndim == 3: yield from a
    else: raise InputError(f'an array of shape {a.shape}: expected (L,), (C, L) or (N, C, L)')


def _series_files(src: str | Path) -> list[Path]:
    src = Path(src)
    if not src.is_dir(): raise InputError(f'{src} is not a folder.')
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in ('.npy', '.npz', '.csv'))
    if not files: raise InputError(f'{src} holds no .npy, .npz or .csv files.')
    return files


def iter_series_files(src: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(where, series)`` from a folder of ``.npy`` / ``.npz`` / ``.csv`` files, in file-name order.

    ``.npy``: one series ``(L,)`` / ``(C, L)``, or N series ``(N, C, L)``; ``.npz``: each array in it, likewise;
    ``.csv``: one one-channel series per line (lines may differ in length; empty lines are skipped)."""
    for p in _series_files(src):
        try:
            if p.suffix.lower() == '.npy':
                for k, s in enumerate(_series_in_array(np.load(p, mmap_mode='r'))): yield f'{p.name}[{k}]', s
            elif p.suffix.lower() == '.npz':
                with np.load(p) as z:
                    for key in z.files:
                        for k, s in enumerate(_series_in_array(z[key])): yield f'{p.name}:{key}[{k}]', s
            else:
                with open(p) as f:
                    for line_no, line in enumerate(f, 1):
                        if line.strip(): yield f'{p.name} line {line_no}', np.array([float(v) for v in line.split(',')])
        except InputError as e: raise InputError(f'{p}: {e}') from None
        except ValueError as e: raise InputError(f'{p}: cannot read it ({e}).') from None


def build_store(src: str | Path | Iterable, dest: str | Path, dtype=np.float32, n_values: int | None = None,
                channels: int | None = None, append: bool = False, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Write the series of a folder (`iter_series_files`) or of an iterable of arrays into a `RaggedStore` at `dest`,
    one at a time. `channels`: None = those of the first series. Errors name the file (or the iterable's index),
    the store index and the step. Returns `dest`.

    Example:
        ```python
        build_store((np.random.randint(0, 41, 1000) for _ in range(5)), 'counts', dtype=np.uint8, n_values=41,
                    progress=False)
        ```
    """
    from .progress import Progress
    if isinstance(src, (str, Path)): it, total = iter_series_files(src), len(_series_files(src))
    else: it, total = ((f'item {i}', s) for i, s in enumerate(src)), None
    writer = None
    bar = Progress(total or 1, desc='store', enabled=progress and total is not None)
    last_file = None
    try:
        for where, s in it:
            s = np.asarray(s)
            if writer is None:
                c = channels if channels is not None else (1 if s.ndim == 1 else s.shape[0])
                writer = StoreWriter(dest, channels=c, dtype=dtype, n_values=n_values, append=append, overwrite=overwrite)
            try: writer.append(s)
            except InputError as e:
                kept = 'the store is as it was' if append else 'no store was written'
                raise InputError(f'{where}: {e} Nothing of this run was kept ({kept}).') from None
            f = where.split('[')[0].split(':')[0].split(' line')[0]
            if f != last_file:
                if last_file is not None: bar.advance(1, note=f'{len(writer)} series')
                last_file = f
        if writer is None: raise InputError('no series to write.')
        bar.note = f'{len(writer)} series'
        bar.close()
        return writer.close()
    except BaseException:
        if writer is not None: writer.abort()
        raise


def store_summary(path: str | Path) -> str:
    "One line about the store at `path`: series, channels, dtype, lengths, size on disk (reads the header and offsets)."
    data = Path(f'{path}.data.npy')
    with open(data, 'rb') as f: dtype, _, shape, _ = _read_header(f)
    lengths = np.diff(np.load(f'{path}.offsets.npy'))
    size = data.stat().st_size + Path(f'{path}.offsets.npy').stat().st_size
    return (f'{path}: {len(lengths)} series, {shape[0]} channel{"s" if shape[0] > 1 else ""} {dtype}, lengths '
            f'{lengths.min()}..{lengths.max()} (mean {lengths.mean():.0f}), {size / 2 ** 20:.1f} MiB')


def open_store_series(path: str | Path) -> list[np.ndarray]:
    """The series of the store at `path` as memory-mapped ``(C, L_i)`` views (numpy only: what `RaggedStore.load`
    gives without importing torch). `FileNotFoundError` naming the missing file."""
    for f in (Path(f'{path}.data.npy'), Path(f'{path}.offsets.npy')):
        if not f.exists(): raise FileNotFoundError(f'no store there ({f} is missing; build one with tsai-ssl store build)')
    data, off = np.load(f'{path}.data.npy', mmap_mode='r'), np.load(f'{path}.offsets.npy')
    if data.ndim != 2 or off[0] != 0 or off[-1] != data.shape[1]:
        raise InputError(f'the store {path} is inconsistent (offsets end at {off[-1]}, data holds {data.shape}): rebuild it')
    return [data[:, a:b] for a, b in zip(off[:-1], off[1:])]
