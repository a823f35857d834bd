"""Variable-length data layer: validation, a ragged (memory-mappable) store, length bucketing and padding masks.

`get_ssl_dls` turns what users hold into fastai `DataLoaders` that `ts_learner` accepts:

* an array ``(N, C, L)`` (fixed length),
* a list of N arrays of shape ``(L_i,)`` or ``(C, L_i)`` (variable length),
* a tsai-style NaN-padded array ``(N, C, L_max)`` (trailing NaN marks the end of each series),
* a `RaggedStore` (one flat buffer + offsets, optionally memory-mapped from disk).

Batches are ``(TSTensor(bs, C, L_batch), TensorCategory(bs))`` when labeled and ``(TSTensor,)`` when not.
Series in a batch are right-padded with `pad_value` to the longest one. Two facts about the batch that a
model input cannot carry are kept on the DataLoader while the batch is being processed:

* ``dl.pad_mask``: bool ``(bs, L_batch)``, True at real time steps (None when nothing is padded);
* ``dl.raw_input``: the batch input *before* batch transforms (e.g. `TSStandardize`), so pretext tasks
  can predict the exact original integers.

A callback reads them with `batch_pad_mask(self.learn)` / `batch_raw_input(self.learn, x)`: fastai sets
``learn.dl`` to the loader being iterated (training, validation, `get_preds`), these helpers unwrap fastai's
`DistributedDL`, and they fall back to "no padding" / decoding the batch transforms for plain tsai loaders.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import CategoryMap
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorCategory
from fasttransform.transform import Pipeline
from tsai.data.core import TSTensor

from .errors import InputError
from .series import as_series, check_series

__all__ = ['RaggedStore', 'SeriesDataset', 'BucketedDL', 'SSLDataLoaders', 'get_ssl_dls', 'to_series_list',
           'validate_series', 'batch_pad_mask', 'batch_raw_input', 'batch_series_index']


# ----------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------
class RaggedStore:
    """Variable-length series in one flat ``(C, total_steps)`` buffer plus offsets.

    Indexing returns a view ``(C, L_i)``, so the buffer can be a `np.memmap` (values 0..40 fit in uint8:
    a million series of 30k steps is 30 GB on disk and nothing in RAM). Tasks and dataloaders only use
    ``len(store)``, ``store[i]`` and ``store.lengths``.

    Example:
        ```python
        store = RaggedStore.from_series(series, dtype=np.uint8)   # list of (C, L_i) arrays of counts 0..40
        store.save('corpus')                                       # corpus.data.npy + corpus.offsets.npy
        store = RaggedStore.load('corpus', mmap=True)          # memory-mapped: nothing read until used
        dls = get_ssl_dls(store, bs=32, max_len=2048)
        with RaggedStore.create('big', dtype=np.uint8, n_values=41) as w:   # series by series, any number
            for s in series: w.append(s)
        ```
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        if data.ndim != 2: raise ValueError(f'RaggedStore data must be (C, total_steps), got shape {data.shape}')
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != data.shape[1] or np.any(np.diff(offsets) < 0):
            raise ValueError('offsets must start at 0, be non-decreasing and end at data.shape[1]')
        self.data, self.offsets = data, offsets
        self.lengths = np.diff(offsets)

    @classmethod
    def from_series(cls, series: Sequence[np.ndarray], dtype=None) -> 'RaggedStore':
        "Concatenate a list of ``(C, L_i)`` arrays."
        series = to_series_list(series)
        offsets = np.concatenate([[0], np.cumsum([s.shape[-1] for s in series])])
        return cls(np.concatenate(series, axis=-1).astype(dtype or series[0].dtype, copy=False), offsets)

    def save(self, path: str | Path) -> Path:
        "Write ``path.data.npy`` and ``path.offsets.npy`` (load with `RaggedStore.load(path, mmap=True)`)."
        path = Path(path)
        np.save(f'{path}.data.npy', self.data)
        np.save(f'{path}.offsets.npy', self.offsets)
        return path

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> 'RaggedStore':
        "Open a store written by `save`, `create` or `tsai_ssl.store.build_store` (memory-mapped with `mmap`)."
        return cls(np.load(f'{path}.data.npy', mmap_mode='r' if mmap else None), np.load(f'{path}.offsets.npy'))

    @classmethod
    def create(cls, path: str | Path, channels: int = 1, dtype=np.float32, n_values: int | None = None,
               append: bool = False, overwrite: bool = False):
        """A `tsai_ssl.store.StoreWriter` that writes a store at `path` series by series (``append(series)``,
        ``extend(...)``; use it as a context manager), in constant memory and atomically; `append` adds to an
        existing store. See `tsai_ssl.store`."""
        from .store import StoreWriter
        return StoreWriter(path, channels=channels, dtype=dtype, n_values=n_values, append=append, overwrite=overwrite)

    def __len__(self): return len(self.lengths)
    def __getitem__(self, i): return self.data[:, self.offsets[i]:self.offsets[i + 1]]
    def __repr__(self): return f'RaggedStore(n={len(self)}, channels={self.data.shape[0]}, dtype={self.data.dtype})'


def _is_store(X) -> bool: return isinstance(X, RaggedStore)


def to_series_list(X) -> list[np.ndarray]:
    """Normalise user input into a list of ``(C, L_i)`` numpy arrays (views where possible, never clipped or cast).

    Accepts an ``(N, C, L)`` array, a list of ``(L,)`` / ``(C, L)`` arrays or tensors, or a `RaggedStore`. Trailing
    steps where every channel is NaN are tsai-style padding and are cut; any other NaN raises `InputError` naming
    the series and step (the rules of `tsai_ssl.series`, shared with the experiment code and the CLI).
    """
    if _is_store(X): return [X[i] for i in range(len(X))]
    return as_series(X)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------
def validate_series(series: Sequence[np.ndarray], y=None, min_len: int = 1, n_values=None) -> None:
    """Check a list of ``(C, L_i)`` series; raise `InputError` (a `ValueError`) naming the series, step and value.

    Refuses: empty data, NaN or infinite values, series shorter than `min_len`, mismatched channel counts,
    a label count different from the series count and, when `n_values` (n: values 0..n-1) is given,
    non-integer or out-of-range values. Nothing is clipped, cast or dropped. See `tsai_ssl.series.check_series`.

    Example:
        ```python
        try:
            validate_series([np.array([[1., 2., np.nan, 4.]])])
        except InputError as e:
            print(e)   # X[0] has NaN at step 2, inside the series: NaN is allowed only as trailing padding.
        ```
    """
    check_series(series, y, min_len=min_len, n_values=n_values)


# ----------------------------------------------------------------------------------------------------
# Dataset and DataLoader
# ----------------------------------------------------------------------------------------------------
class SeriesDataset:
    """Indexable ``(x,)`` or ``(x, y)`` items over a list/store of ``(C, L_i)`` series; ``y`` already encoded as ints.
    ``source_idx[i]``: the index of item ``i`` in the data the user passed (a subset keeps it), for error messages."""
    n_inp = 1
    source_idx = None  # datasets pickled before it existed: the item index is the source index

    def __init__(self, series, y=None, split_idx: int | None = None, source_idx=None):
        self.series, self.y, self.split_idx = series, y, split_idx
        self.lengths = np.asarray(series.lengths if _is_store(series) else [s.shape[-1] for s in series], dtype=np.int64)
        self.source_idx = np.arange(len(self.lengths)) if source_idx is None else np.asarray(source_idx, dtype=np.int64)

    def __len__(self): return len(self.lengths)

    def __getitem__(self, i):
        x = self.series[i]
        return (x,) if self.y is None else (x, self.y[i])

    def new_empty(self) -> 'SeriesDataset':
        "No series, same kind (fastai's `learn.export` keeps loaders without their data)."
        return SeriesDataset([], None if self.y is None else self.y[:0], self.split_idx)

    def subset(self, idxs) -> 'SeriesDataset':
        idxs = np.asarray(idxs, dtype=np.int64)
        series = [self.series[i] for i in idxs]
        src = idxs if self.source_idx is None else self.source_idx[idxs]
        return SeriesDataset(series, None if self.y is None else self.y[idxs], self.split_idx, source_idx=src)


class BucketedDL(TfmdDL):
    """A fastai `TfmdDL` that batches series of similar length, pads them and keeps a padding mask.

    Training order (``shuffle=True``): series are shuffled, split into pools of ``pool_batches * bs``,
    sorted by length inside each pool, cut into batches, and the batches are shuffled; every series is
    seen once per epoch. Without shuffle the order is by length (fastai's `get_preds` restores the
    dataset order). ``max_len`` crops longer series to a random window of that length (training only
    when ``crop=True``; validation and test see full series).

    ``exact=True`` (what `SSLDataLoaders.test_dl` makes): a batch only holds series of one length, so nothing is
    padded and a series' prediction cannot depend on its batch neighbours, for any model (series of a length
    that occurs once are a batch of one). Needs ``shuffle=False`` and runs in the main process.

    ``max_tokens`` (token-budget batches): a batch holds as many series as fit ``max_tokens`` padded steps
    (``len(batch) * longest <= max_tokens``), at most ``bs``; a series longer than the budget is a batch alone. Series
    are ordered as above (shuffled pools sorted by length, batches shuffled) and then cut greedily, so every series
    is seen once per epoch and a batch of 512-step series holds many more than one of 30720-step series: the cost of
    a step stays about the same across lengths. The loader runs in the main process (``num_workers=0``). Under
    fastai's `DistributedDL` every process gets whole batches of one plan, as many as every other process.

    While a batch is processed the loader keeps ``pad_mask`` (see the module docstring), ``raw_input`` and
    ``batch_idxs`` (the dataset index of each batch item, for error messages that point into the user's data).
    """

    def __init__(self, dataset, bs: int = 64, shuffle: bool = False, max_len: int | None = None, crop: bool = False,
                 pad_value: float = 0., bucket: bool = True, pool_batches: int = 50, exact: bool = False,
                 max_tokens: int | None = None, **kwargs):
        self.max_len, self.crop, self.pad_value, self.bucket, self.pool_batches = max_len, crop, pad_value, bucket, pool_batches
        if exact and shuffle: raise ValueError('exact=True batches series of one length in length order: use shuffle=False.')
        if max_tokens is not None and max_tokens < 1: raise ValueError(f'max_tokens must be >= 1, got {max_tokens}')
        self.exact, self.max_tokens = exact, max_tokens
        self.pad_mask = self.raw_input = self.batch_idxs = None  # of the batch being processed
        self._sizes = None  # the token-budget plan of the epoch being iterated
        kwargs.setdefault('num_workers', 0)
        # fastai's workers split the indices in chunks of bs: exact and token-budget batches are not
        if exact or max_tokens: kwargs['num_workers'] = 0
        super().__init__(dataset, bs=bs, shuffle=shuffle, **kwargs)
        self.after_batch = _KeepPadMask(self.after_batch, self)

    exact, batch_idxs, max_tokens, _sizes = False, None, None, None  # loaders exported before these existed

    def new(self, dataset=None, cls=None, **kwargs):
        for k in ('max_len', 'crop', 'pad_value', 'bucket', 'pool_batches', 'exact', 'max_tokens'):
            kwargs.setdefault(k, getattr(self, k))
        if kwargs.get('shuffle'): kwargs['exact'] = False
        return super().new(dataset, cls, **kwargs)

    @property
    def _budget(self) -> bool:
        # under DDP an unshuffled (validation) loader keeps fixed batches: fastai's DistributedDL counts the items it
        # hands out to un-pad gathered predictions, which the batch markers of a distributed plan would upset
        return bool(self.max_tokens) and not self.exact and (self.shuffle or _world_size() == 1)

    def __len__(self):
        if self.exact: return len(self._exact_sizes())
        if self._budget:
            if self._sizes is not None: return len(self._sizes)  # during an epoch: its own plan
            # before an epoch (fastai asks for the length first): the plan the next `randomize` will give
            nxt = random.Random()
            if self.shuffle:
                probe = random.Random(); probe.setstate(self.rng.getstate())
                nxt = random.Random(probe.randint(0, 2 ** 32 - 1))  # what fastai's randomize() does
            return len(_split_to_multiple(self._plan(nxt), _world_size()))
        return super().__len__()

    def _exact_sizes(self) -> list[int]:
        """Batch sizes of an exact loader: each run of equal lengths (in loader order) cut into chunks of at most bs
        (and of at most ``max_tokens`` steps)."""
        L = self.effective_lengths()[np.asarray(self.get_idxs(), dtype=np.int64)] if len(self.dataset) else []
        sizes, run = [], 0
        for k in range(len(L)):
            run += 1
            if k + 1 == len(L) or L[k + 1] != L[k] or run == self._cap(L[k]):
                sizes.append(run); run = 0
        return sizes

    def _cap(self, length: int) -> int:
        "The most series of `length` steps a batch holds."
        return min(self.bs, max(1, self.max_tokens // max(int(length), 1))) if self.max_tokens else self.bs

    def chunkify(self, b):
        if self.exact: return _equal_length_chunks(b, self._cap)
        if self._budget: return _marked_chunks(b) if _world_size() > 1 else _sized_chunks(b, self._sizes)
        return super().chunkify(b)

    def do_item(self, s):
        if s == _END: return _BATCH_END  # the markers of a distributed token-budget order
        if s == _SKIP: return None      # (fastai drops None items)
        return super().do_item(s)

    def after_iter(self):
        super().after_iter()
        self._sizes = None

    def _plan(self, rng: random.Random) -> list[np.ndarray]:
        "Token-budget batches of dataset indices: the epoch's order (see the class docstring), cut greedily."
        n, L = len(self.dataset), self.effective_lengths()
        if not self.shuffle: return _cut_by_tokens(np.argsort(L, kind='stable'), L, self.bs, self.max_tokens)
        if not self.bucket: return _cut_by_tokens(np.array(rng.sample(range(n), n), dtype=np.int64), L, self.bs, self.max_tokens)
        perm = np.array(rng.sample(range(n), n), dtype=np.int64)
        pool = self.bs * self.pool_batches
        order = np.concatenate([p[np.argsort(L[p], kind='stable')] for p in np.split(perm, range(pool, n, pool))])
        batches = _cut_by_tokens(order, L, self.bs, self.max_tokens)
        return [batches[i] for i in rng.sample(range(len(batches)), len(batches))]

    # -- order -----------------------------------------------------------------------------------------
    def effective_lengths(self) -> np.ndarray:
        L = self.dataset.lengths
        return np.minimum(L, self.max_len) if (self.crop and self.max_len) else L

    def get_idxs(self):
        n = len(self.dataset)
        L = self.effective_lengths()
        if self.exact: return [int(i) for i in np.argsort(L, kind='stable')]  # equal lengths next to each other
        if self._budget:
            plan = _split_to_multiple(self._plan(self.rng), _world_size())
            self._sizes = [len(b) for b in plan]
            if _world_size() > 1: return _distributed_order(plan, _world_size())
            return [int(i) for b in plan for i in b]
        if not self.bucket: return super().get_idxs()
        if not self.shuffle: return list(np.argsort(L, kind='stable'))
        perm = np.array(self.rng.sample(range(n), n), dtype=np.int64)
        pool = self.bs * self.pool_batches
        # sort inside pools (stable on the shuffled order, so equal lengths mix across epochs)
        pools = [p[np.argsort(L[p], kind='stable')] for p in np.split(perm, range(pool, n, pool))]
        order = np.concatenate(pools)
        batches = [order[i:i + self.bs] for i in range(0, n, self.bs)]
        full = [b for b in batches if len(b) == self.bs]
        rest = [b for b in batches if len(b) < self.bs]  # a short batch must stay last for fastai's chunking
        full = [full[i] for i in self.rng.sample(range(len(full)), len(full))]
        return [int(i) for b in full + rest for i in b]

    def padded_fraction(self) -> float:
        "Share of padded positions over one epoch in the current order (what bucketing keeps small)."
        if self.exact: return 0.  # batches of one length
        idxs = np.asarray(self.get_idxs(), dtype=np.int64)
        L = self.effective_lengths()[idxs]
        sizes = self._sizes if self._budget else [min(self.bs, len(L) - k) for k in range(0, len(L), self.bs)][:len(self)]
        self._sizes = None if self._budget else self._sizes  # get_idxs planned an epoch that will not run
        real = padded = 0
        for start, size in zip(np.cumsum([0, *sizes[:-1]]), sizes):
            b = L[start:start + size]
            real += b.sum(); padded += b.max() * len(b)
        return float(1 - real / padded) if padded else 0.

    def batch_sizes(self) -> list[int]:
        "The number of series in each batch of one epoch in the current order (token budgets make them differ)."
        if self.exact: return self._exact_sizes()
        n = len(self.get_idxs())
        if self._budget:
            sizes, self._sizes = self._sizes, None
            return sizes
        return [min(self.bs, n - k) for k in range(0, n, self.bs)][:len(self)]

    # -- batches ---------------------------------------------------------------------------------------
    def create_item(self, s):
        i = s if s is not None else 0
        src = getattr(self.dataset, 'source_idx', None)
        return tuple(self.dataset[i]) + (int(src[i]) if src is not None else i,)  # the user's index (`batch_idxs`)

    def create_batch(self, b):
        idxs = torch.as_tensor([o[-1] for o in b], dtype=torch.long)
        b = [o[:-1] for o in b]
        xs = [np.asarray(o[0]) for o in b]
        if self.crop and self.max_len:
            xs = [self._random_crop(x) for x in xs]
        lens = [x.shape[-1] for x in xs]
        L, C = max(lens), xs[0].shape[0]
        x = torch.full((len(xs), C, L), float(self.pad_value), dtype=torch.float32)
        for i, s in enumerate(xs): x[i, :, :s.shape[-1]] = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))
        # None when every series fills the batch: callbacks then skip masking work entirely
        mask = torch.arange(L)[None] < torch.as_tensor(lens)[:, None] if min(lens) < L else None
        out = (TSTensor(x),)
        if len(b[0]) > 1: out += (TensorCategory(torch.as_tensor(np.array([o[1] for o in b]), dtype=torch.long)),)
        return out + (mask, idxs)

    def _random_crop(self, x: np.ndarray) -> np.ndarray:
        L = x.shape[-1]
        if L <= self.max_len: return x
        start = self.rng.randint(0, L - self.max_len)
        return x[:, start:start + self.max_len]

    def do_batch(self, b):
        b = self.create_batch(self.before_batch(b))
        # keep the untransformed input when batch transforms will change it (a plain Tensor: TS transforms skip it)
        has_tfms = any(getattr(f, 'name', '') != 'noop' for f in self.after_batch.fs)
        return b + (b[0].as_subclass(torch.Tensor).clone() if has_tfms else None,)


def _equal_length_chunks(items, cap):
    "Consecutive items ``(x, ..., idx)`` grouped into lists of one length, at most ``cap(length)`` items each."
    chunk = []
    for o in items:
        if chunk and (len(chunk) == cap(np.shape(chunk[0][0])[-1]) or np.shape(o[0])[-1] != np.shape(chunk[0][0])[-1]):
            yield chunk; chunk = []
        chunk.append(o)
    if chunk: yield chunk


def _sized_chunks(items, sizes):
    "Consecutive items cut into lists of the given sizes (the token-budget plan of the epoch)."
    it = iter(items)
    for size in sizes:
        chunk = [o for _, o in zip(range(size), it)]
        if chunk: yield chunk


def _cut_by_tokens(order: np.ndarray, L: np.ndarray, bs: int, max_tokens: int, spread: float = 1.25) -> list[np.ndarray]:
    """`order` cut into consecutive batches of at most `bs` series whose padded size ``len * longest`` stays within
    `max_tokens` (a series longer than that is a batch alone). A batch of two or more also ends before a series more
    than `spread` times its shortest one: where a pool's lengths jump (log-uniform lengths leave few series per length
    range), a full budget would otherwise be mostly padding; a series is left alone only where the budget says so
    (contrastive losses and BatchNorm need two)."""
    batches, start, longest, shortest = [], 0, 0, 0
    for k, i in enumerate(order):
        n_new, longest_new = k - start + 1, max(longest, int(L[i]))
        shortest_new = min(shortest, int(L[i])) if k > start else int(L[i])
        too_spread = longest_new > spread * shortest_new and n_new > 2  # a batch of one series only where it must be
        if k > start and (n_new > bs or n_new * longest_new > max_tokens or too_spread):
            batches.append(order[start:k]); start, longest_new, shortest_new = k, int(L[i]), int(L[i])
        longest, shortest = longest_new, shortest_new
    if len(order) > start: batches.append(order[start:])
    return batches


_END, _SKIP = -1, -2  # in a distributed token-budget order: "this batch ends here" and "nothing (padding)"


class _BatchEnd:
    "The item the end marker becomes: `_marked_chunks` cuts a batch there."


_BATCH_END = _BatchEnd()


def _marked_chunks(items):
    "Items cut into batches at the end markers (a distributed token-budget order; `_distributed_order`)."
    chunk = []
    for o in items:
        if o is _BATCH_END:
            if chunk: yield chunk
            chunk = []
        else: chunk.append(o)
    if chunk: yield chunk


def _split_to_multiple(plan: list[np.ndarray], world: int) -> list[np.ndarray]:
    """The plan with its largest batches split in two until the batch count is a multiple of `world` (every process
    then runs the same number of batches; no series is repeated). Batches of one series cannot be split: then the
    first batches are repeated, as fastai's `DistributedDL` repeats indices."""
    plan = list(plan)
    while world > 1 and len(plan) % world:
        k = max(range(len(plan)), key=lambda j: len(plan[j]))
        if len(plan[k]) < 2:
            plan += plan[:world - len(plan) % world]
            break
        half = len(plan[k]) // 2
        plan[k:k + 1] = [plan[k][:half], plan[k][half:]]
    return plan


def _distributed_order(plan: list[np.ndarray], world: int) -> list[int]:
    """The index order for fastai's `DistributedDL`, which hands each process one contiguous, equal share: batch j
    goes to process j % world, each process's batches end with an end marker, and the shares are padded to one length
    with skip markers, so each process cuts exactly its own batches, as many as every other process."""
    shares = [[] for _ in range(world)]
    for j, b in enumerate(plan): shares[j % world] += [int(i) for i in b] + [_END]
    n = max(len(sh) for sh in shares)
    return [i for sh in shares for i in sh + [_SKIP] * (n - len(sh))]


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


class _KeepPadMask(Pipeline):
    """The loader's batch transforms (the same transform objects), then: keep the padding mask and the raw input on
    the loader and hand on ``(x, [y])``. Doing it here, not in ``__iter__``, keeps it working when fastai wraps the
    loader (`DistributedDL` calls ``dl.after_batch`` but not ``dl.__iter__``)."""

    def __init__(self, funcs, dl):
        super().__init__(funcs)
        self.dl = dl

    def __call__(self, b):
        *items, mask, idxs, raw = super().__call__(b)
        self.dl.pad_mask, self.dl.batch_idxs = mask, idxs
        self.dl.raw_input = items[0].as_subclass(torch.Tensor) if raw is None else raw
        return tuple(items)


class SSLDataLoaders(DataLoaders):
    """fastai `DataLoaders` with the attributes tsai's `ts_learner` reads (`vars`, `c`, `len`, `d`, `cat`) and a variable-length `test_dl`.

    Example:
        ```python
        dls = get_ssl_dls(X, y, splits=splits, bs=32)            # an SSLDataLoaders
        learn = ts_learner(dls, ResNetPlus, metrics=accuracy)
        preds, _ = learn.get_preds(dl=dls.test_dl(X_new))         # X_new: series of any length
        ```
    """

    def __init__(self, *loaders, path='.', device=None, c_in: int = 1, vocab=None, seq_len: int | None = None,
                 min_len: int = 1, n_values=None):
        super().__init__(*loaders, path=path, device=device)
        self.vars, self.len, self.d, self.min_len, self.n_values = c_in, seq_len, None, min_len, n_values
        self.vocab = vocab
        self.c = len(vocab) if vocab is not None else 1  # unlabeled: a 1-output placeholder head (unused in pretraining)
        self.cat = vocab is not None
        if vocab is not None: self.loss_func = CrossEntropyLossFlat()

    def new_empty(self) -> 'SSLDataLoaders':
        "Loaders without data but with the same vocabulary, channels and transforms (what `learn.export` keeps)."
        loaders = [dl.new(dl.dataset.new_empty()) for dl in self.loaders]
        return type(self)(*loaders, path=self.path, device=self.device, c_in=self.vars, vocab=self.vocab,
                          seq_len=self.len, min_len=self.min_len, n_values=self.n_values)

    def test_dl(self, test_items, with_labels: bool = False, y=None, bs: int | None = None, exact: bool = True,
                **kwargs) -> BucketedDL:
        """A loader over new series of any length (same batch transforms, full length, sorted by length
        for speed; `learn.get_preds(dl=...)` returns predictions in the order of `test_items`).

        ``exact=True`` (default): a batch holds series of one length only, so no series is padded and its
        prediction never depends on what it is batched with, whatever the model. Series whose length occurs once
        are a batch of one, which costs time when every length differs (docs/results.md has the measured cost);
        ``exact=False`` pads length-sorted batches (faster; add `tsai_ssl.IgnorePadding` to the Learner to keep
        predictions independent of batching)."""
        series = to_series_list(test_items)
        validate_series(series, y, min_len=self.min_len, n_values=self.n_values)
        if series[0].shape[0] != self.vars:
            raise ValueError(f'Test series have {series[0].shape[0]} channels, the model expects {self.vars}.')
        if with_labels and y is None: raise ValueError('with_labels=True needs y.')
        yy = _encode_labels(y, self.vocab) if y is not None else None
        ds = SeriesDataset(series, yy, split_idx=1)
        return self.valid.new(ds, shuffle=False, drop_last=False, crop=False, bs=bs or self.valid.bs, exact=exact,
                              **kwargs)


def _encode_labels(y, vocab: CategoryMap | None) -> np.ndarray:
    y = np.asarray(y)
    if vocab is None: raise ValueError('These dataloaders are unlabeled: there is no label vocabulary to encode y.')
    unknown = [o for o in np.unique(y).tolist() if o not in vocab.o2i]
    if unknown: raise ValueError(f'Labels {unknown[:5]} were not seen in the training labels {list(vocab)[:10]}.')
    return np.array([vocab.o2i[o] for o in y], dtype=np.int64)


def get_ssl_dls(X, y=None, splits=None, bs: int = 64, val_bs: int | None = None, batch_tfms=None,
                max_len: int | None = None, min_len: int = 8, n_values=None, pad_value: float = 0.,
                bucket: bool = True, shuffle: bool = True, drop_last: bool = False, device=None,
                path='.', num_workers: int = 0, seed: int | None = None, max_tokens: int | None = None) -> SSLDataLoaders:
    """Fastai DataLoaders over fixed- or variable-length series for pretraining (``y=None``) or fine-tuning.

    Args:
        X: ``(N, C, L)`` array, tsai NaN-padded array, list of ``(L_i,)``/``(C, L_i)`` arrays, or `RaggedStore`.
        y: labels (any hashable values) or None for unlabeled pretraining data.
        splits: ``(train_idxs, valid_idxs)`` as tsai's `get_splits` returns; None = all for training, no validation.
        batch_tfms: tsai/fastai batch transforms, e.g. ``TSStandardize()``; identical for both modes.
        max_len: training crop: longer series are cut to a random window of ``max_len`` (validation: full length).
        min_len: refuse series shorter than this (a CNN needs a few steps).
        n_values: n (values 0..n-1) to check that inputs are exact integers in range (e.g. 41 for 0..40); the same
            ``n_values`` the tasks take. (Class labels are ``y``; their categories become ``dls.vocab``, fastai's meaning.)
        bucket: group series of similar length into batches (little padding, much faster on varied lengths).
        seed: seeds the training order and crops, and torch's global generator (so a model built next is seeded too).
        max_tokens: token-budget batches: each batch holds as many series as fit ``max_tokens`` padded steps, with
            ``bs`` (and ``val_bs``) as the most series a batch holds; every series is still seen once per epoch (see
            `BucketedDL`). For series of very different lengths: a step then costs about the same at every length.
            ``drop_last`` does not apply; the loaders run in the main process; under ``learn.distrib_ctx()`` the
            validation loader keeps fixed batches.

    Example:
        ```python
        X = [np.random.randint(0, 41, (1, n)).astype(np.uint8) for n in (600, 900, 4000)]
        dls_u = get_ssl_dls(X, bs=2, max_len=1024, batch_tfms=[TSStandardize()])   # unlabeled: pretraining
        dls = get_ssl_dls(X, y=['a', 'b', 'a'], bs=2)                              # labeled: fine-tuning
        ```
    """
    series = X if _is_store(X) else to_series_list(X)
    if len(series) == 0: raise InputError('Empty data: no series given.')
    if y is not None: y = np.asarray(y)
    validate_series(series if not _is_store(series) else _StoreChecker(series), y, min_len=min_len, n_values=n_values)
    vocab = CategoryMap(y.tolist(), sort=True) if y is not None else None
    yy = _encode_labels(y, vocab) if y is not None else None
    ds = SeriesDataset(series, yy)
    if splits is None: train_idx, valid_idx = np.arange(len(ds)), np.array([], dtype=np.int64)
    else: train_idx, valid_idx = (np.asarray(s, dtype=np.int64) for s in splits[:2])
    train_ds, valid_ds = ds.subset(train_idx), ds.subset(valid_idx)
    train_ds.split_idx, valid_ds.split_idx = 0, 1
    if len(train_ds) == 0: raise InputError('The training split is empty: give splits=(train_idxs, valid_idxs) with training series.')
    if yy is not None and len(valid_idx):
        unseen = sorted(set(yy[valid_idx].tolist()) - set(yy[train_idx].tolist()))
        if unseen:
            raise InputError(f'Classes {[vocab[i] for i in unseen]} appear in the validation split but not in training: '
                             'move a series of each into the training split.')
    if seed is not None: torch.manual_seed(seed)
    common = dict(max_len=max_len, pad_value=pad_value, bucket=bucket, num_workers=num_workers, device=device,
                  after_batch=batch_tfms, max_tokens=max_tokens)
    # fastai seeds a new loader's generator from Python's global `random`, and sets up the batch transforms (e.g.
    # TSStandardize's statistics) on a batch drawn with it inside the constructor: seed that draw too
    py_state = random.getstate()
    if seed is not None: random.seed(seed)
    try:
        train = BucketedDL(train_ds, bs=min(bs, len(train_ds)), shuffle=shuffle, drop_last=drop_last, crop=True, **common)
        # the validation loader shares the (already set-up) batch transforms of the training loader
        valid = train.new(valid_ds, bs=val_bs or bs, shuffle=False, drop_last=False, crop=False)
    finally:
        if seed is not None: random.setstate(py_state)
    if seed is not None: train.rng = random.Random(seed)
    seq_len = max_len if max_len else int(max(train_ds.lengths))
    return SSLDataLoaders(train, valid, path=path, device=device, c_in=series[0].shape[0], vocab=vocab,
                          seq_len=seq_len, min_len=min_len, n_values=n_values)


class _StoreChecker:
    "Lazy list view so `validate_series` can walk a `RaggedStore` one series at a time."
    def __init__(self, store): self.store = store
    def __len__(self): return len(self.store)
    def __getitem__(self, i): return self.store[i]
    def __iter__(self): return (self.store[i] for i in range(len(self.store)))


def _source_dl(learn_or_dl):
    "The loader that made the batch: `learn.dl`, unwrapped from fastai's `DistributedDL`."
    dl = getattr(learn_or_dl, 'dl', learn_or_dl)
    while not hasattr(dl, 'pad_mask') and isinstance(getattr(dl, 'dl', None), TfmdDL): dl = dl.dl
    return dl


def batch_pad_mask(learn_or_dl, x: torch.Tensor | None = None) -> torch.Tensor | None:
    """The padding mask of the batch being processed (True = real step), or None when nothing is padded.

    Example:
        ```python
        class ShowPadding(Callback):
            def before_batch(self):
                pad_mask = batch_pad_mask(self.learn)              # (bs, L) bool, True at real steps, or None
                if pad_mask is not None: print(pad_mask.float().mean().item())
        ```
    """
    m = getattr(_source_dl(learn_or_dl), 'pad_mask', None)
    if m is None or (x is not None and m.shape != (x.shape[0], x.shape[-1])): return None
    return m


def batch_raw_input(learn_or_dl, x: torch.Tensor) -> torch.Tensor:
    """The batch before batch transforms: kept by `BucketedDL`, otherwise decoded through the loader's
    `after_batch` pipeline (tsai `get_ts_dls` + `TSStandardize` decode back to the raw scale)."""
    dl = _source_dl(learn_or_dl)
    raw = getattr(dl, 'raw_input', None)
    if raw is not None and raw.shape == x.shape: return raw
    pipe = getattr(dl, 'after_batch', None)
    if pipe is None or not getattr(pipe, 'fs', None): return x
    return torch.as_tensor(pipe.decode((TSTensor(x.detach()),))[0]).as_subclass(torch.Tensor).to(x.device)


def batch_series_index(learn_or_dl) -> torch.Tensor | None:
    "The dataset index of each item of the batch being processed (`BucketedDL`; None for other loaders)."
    return getattr(_source_dl(learn_or_dl), 'batch_idxs', None)
