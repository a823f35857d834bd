"""Batched, padding-aware 1D augmentations for self-supervised time-series learning.

Every augmentation is a small callable object with the signature::

    x, pad_mask = aug(x, pad_mask, generator=None)

where ``x`` is a float batch ``(bs, C, L)``, right-padded, and ``pad_mask`` is the
boolean padding mask ``(bs, L)`` (``True`` at real positions, ``None`` = no
padding).  Each call transforms the whole batch at once with tensor operations
(no per-sample Python loops), on ``x.device``, and only reads and writes real
positions:

* layout-preserving augmentations (:class:`Jitter`, :class:`Scaling`,
  :class:`TimeMask`, :class:`SegmentPermutation`) return the input padding mask object
  unchanged (``None`` stays ``None``) and leave padded positions bit-for-bit
  untouched;
* layout-changing augmentations (:class:`RandomCrop`, :class:`Resize`,
  :func:`overlapping_crops`) return a new left-aligned, right-padded batch, whose
  padded positions hold ``pad_value`` (0 by default), and always return a padding mask.

Augmentations compose with :class:`Compose` (or a plain list passed to it) and can
be applied to a random subset of the series with :class:`RandomApply`, in the
spirit of the augmentation pipelines of the ``self_supervised`` library.

Integer-valued series (counts, quantised sensors stored as floats): every class has
an ``integer_safe`` attribute that is ``True`` when the augmentation only moves,
drops or overwrites values (with an integer fill value), so integer-valued inputs
stay exactly integer-valued; ``False`` when it creates new values (noise,
multiplication, interpolation).

The augmentations follow the time-series augmentation literature: jitter, scaling
and permutation (Um et al., "Data Augmentation of Wearable Sensor Data for
Parkinson's Disease Monitoring using Convolutional Neural Networks", ICMI 2017;
used as weak/strong augmentations by TS-TCC, Eldele et al., IJCAI 2021), span
masking (Zerveas et al., KDD 2021) and overlapping random crops for contextual
consistency (TS2Vec, Yue et al., AAAI 2022).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from .masking import _rand_device, span_mask

__all__ = [
    "Augmentation", "Compose", "RandomApply", "RandomCrop", "Jitter", "Scaling", "TimeMask",
    "Resize", "SegmentPermutation", "CropOverlap", "overlapping_crops", "gather_segments",
]

Mask = torch.Tensor | None


# ----------------------------------------------------------------------------- helpers

def _lengths(x: torch.Tensor, pad_mask: Mask) -> torch.Tensor:
    """Per-series number of real steps, int64 ``(bs,)`` (masks are right-padding masks)."""
    if pad_mask is None:
        return torch.full((x.shape[0],), x.shape[-1], dtype=torch.long, device=x.device)
    return pad_mask.sum(dim=1)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``U[0, 1)`` float32 samples drawn on the generator's device, returned on ``device``."""
    return torch.rand(shape, generator=generator, device=_rand_device(generator, device)).to(device)


def _randint_between(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform integers in the per-element closed ranges ``[low, high]`` (requires ``low <= high``)."""
    u = _rand(tuple(low.shape), generator, low.device)
    r = low + (u * (high - low + 1).to(u.dtype)).long()
    return torch.minimum(r, high)  # guards against u * n rounding up to n in float32


def gather_segments(
    x: torch.Tensor,
    start: torch.Tensor,
    length: torch.Tensor,
    out_len: int | None = None,
    dim: int = -1,
    pad_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extract one contiguous segment per series and left-align them in a padded batch.

    Used by the crops below, and by the contrastive task to cut the overlapping part
    out of the representations of two crops (see :class:`CropOverlap`).

    Args:
        x: tensor whose first dimension is the batch, e.g. ``(bs, C, L)`` (use
            ``dim=-1``) or representations ``(bs, L, d)`` (use ``dim=1``).
        start: int64 ``(bs,)`` start index of each segment along ``dim``.
        length: int64 ``(bs,)`` segment lengths; ``start + length <= x.shape[dim]``.
        out_len: length of the output along ``dim``; defaults to ``length.max()``.
        dim: time dimension of ``x`` (not the batch dimension).
        pad_value: value written at the padded positions of the output.

    Returns:
        ``(segments, pad_mask)``: ``segments`` is ``x`` with ``dim`` resized to
        ``out_len``, ``segments[i, ..., t] = x[i, ..., start[i] + t]`` for
        ``t < length[i]`` and ``pad_value`` elsewhere; ``pad_mask`` is the ``(bs, out_len)``
        padding mask (``True`` for ``t < length[i]``).
    """
    dim = dim % x.ndim
    if dim == 0:
        raise ValueError("dim must be a time dimension, not the batch dimension 0")
    if out_len is None:
        out_len = int(length.max()) if length.numel() else 0
    xt = x.movedim(dim, -1)
    L = xt.shape[-1]
    t = torch.arange(out_len, device=x.device)
    valid = t < length[:, None]
    # Clamp so that padded output positions gather a harmless in-range element; they
    # are overwritten with pad_value right after.
    idx = (start[:, None] + t).clamp_(0, max(L - 1, 0))
    idx = idx.view(idx.shape[0], *([1] * (xt.ndim - 2)), out_len).expand(*xt.shape[:-1], out_len)
    out = xt.gather(-1, idx) if L > 0 else xt.new_zeros(*xt.shape[:-1], out_len)
    vmask = valid.view(valid.shape[0], *([1] * (xt.ndim - 2)), out_len)
    out = out.masked_fill(~vmask, pad_value)
    return out.movedim(-1, dim), valid


# ----------------------------------------------------------------------------- base / pipeline

class Augmentation:
    """Base class of the batched augmentations.

    Subclasses implement ``__call__(x, pad_mask, generator=None) -> (x, pad_mask)``.

    Attributes:
        integer_safe: the output of integer-valued input is integer-valued (the
            augmentation only moves, drops or overwrites values).
        changes_layout: the augmentation may change the sequence lengths / padding
            (then it always returns a padding mask).
    """

    integer_safe: bool = False
    changes_layout: bool = False

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


AugmentFn = Callable[..., tuple[torch.Tensor, Mask]]


class Compose(Augmentation):
    """Apply augmentations one after the other, threading the padding mask and the generator.

    Args:
        transforms: augmentations (or any callables with the same signature).
    """

    def __init__(self, transforms: Sequence[AugmentFn]):
        self.transforms = list(transforms)

    @property
    def integer_safe(self) -> bool:  # type: ignore[override]
        return all(getattr(t, "integer_safe", False) for t in self.transforms)

    @property
    def changes_layout(self) -> bool:  # type: ignore[override]
        return any(getattr(t, "changes_layout", True) for t in self.transforms)

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        for t in self.transforms:
            x, pad_mask = t(x, pad_mask, generator=generator)
        return x, pad_mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomApply(Augmentation):
    """Apply a layout-preserving augmentation to each series independently with probability ``p``.

    The augmentation is computed for the whole batch and then selected per series
    with ``torch.where``: simple and loop-free, at the cost of computing it for the
    series that keep their original values.

    Args:
        transform: augmentation with ``changes_layout = False``.
        p: probability of applying it to a series.
    """

    def __init__(self, transform: Augmentation, p: float = 0.5):
        if getattr(transform, "changes_layout", True):
            raise ValueError(f"RandomApply needs a layout-preserving augmentation, got {transform!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.transform, self.p = transform, p

    @property
    def integer_safe(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.transform, "integer_safe", False))

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        apply = _rand((x.shape[0],), generator, x.device) < self.p
        y, _ = self.transform(x, pad_mask, generator=generator)
        return torch.where(apply.view(-1, *([1] * (x.ndim - 1))), y, x), pad_mask


# ----------------------------------------------------------------------------- value augmentations

class Jitter(Augmentation):
    """Add i.i.d. Gaussian noise ``N(0, sigma^2)`` to every real value (Um et al., 2017).

    Not integer-safe: the output is real-valued.  Padded positions are untouched.

    Args:
        sigma: noise standard deviation (in the units of the, usually standardised, input).
    """

    integer_safe = False

    def __init__(self, sigma: float = 0.03):
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = sigma

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        rdev = _rand_device(generator, x.device)
        noise = torch.randn(x.shape, generator=generator, device=rdev, dtype=x.dtype).to(x.device)
        y = x + self.sigma * noise
        if pad_mask is not None:
            y = torch.where(pad_mask[:, None], y, x)
        return y, pad_mask


class Scaling(Augmentation):
    """Multiply each series by a random factor ``N(1, sigma^2)`` (Um et al., 2017).

    One factor per series (shared by its channels), or one per series and channel
    with ``per_channel=True``.  Not integer-safe.  Padded positions are untouched.

    Args:
        sigma: standard deviation of the factor.
        per_channel: draw an independent factor for every channel.
    """

    integer_safe = False

    def __init__(self, sigma: float = 0.1, per_channel: bool = False):
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma, self.per_channel = sigma, per_channel

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        shape = (x.shape[0], x.shape[1] if self.per_channel else 1, 1)
        rdev = _rand_device(generator, x.device)
        factor = 1.0 + self.sigma * torch.randn(shape, generator=generator, device=rdev).to(x.device, x.dtype)
        y = x * factor
        if pad_mask is not None:
            y = torch.where(pad_mask[:, None], y, x)
        return y, pad_mask


class TimeMask(Augmentation):
    """Overwrite random geometric-length spans of time steps with ``value``.

    Spans come from :func:`tsai_ssl.masking.span_mask` (expected masked fraction
    ``ratio`` of the real steps, mean span ``mean_span``); padding is never masked.
    Integer-safe when ``value`` is an integer: the other values are kept exactly.

    Args:
        ratio: expected fraction of masked real steps.
        mean_span: mean span length.
        value: fill value.
        per_channel: independent spans per channel (default: the same spans for all
            channels of a series).
    """

    def __init__(self, ratio: float = 0.15, mean_span: float = 5.0, value: float = 0.0,
                 per_channel: bool = False):
        span_mask(1, 1, ratio, mean_span)  # validate the arguments early
        self.ratio, self.mean_span, self.value, self.per_channel = ratio, mean_span, value, per_channel

    @property
    def integer_safe(self) -> bool:  # type: ignore[override]
        return float(self.value).is_integer()

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        bs, C, L = x.shape
        if self.per_channel:
            pad = pad_mask.repeat_interleave(C, dim=0) if pad_mask is not None else None
            m = span_mask(bs * C, L, self.ratio, self.mean_span, pad, generator, x.device).view(bs, C, L)
        else:
            m = span_mask(bs, L, self.ratio, self.mean_span, pad_mask, generator, x.device)[:, None]
        return x.masked_fill(m, self.value), pad_mask


# ----------------------------------------------------------------------------- layout augmentations

class RandomCrop(Augmentation):
    """Crop a random contiguous window of each series and left-align the crops.

    The crop length of series ``i`` is ``round(f * len_i)`` with ``f ~ U[min_frac,
    max_frac]`` (at least ``min(min_len, len_i)``), at a uniform random position
    inside the series' own real part.  Integer-safe (values are copied).

    Args:
        min_frac, max_frac: range of the crop length as a fraction of each series' length.
        min_len: minimum crop length in steps.
        keep_len: keep the input length ``L`` (default: trim the output to the longest crop).
        pad_value: value of the new padded positions.

    Returns (from ``__call__``): the cropped batch and its padding mask.
    """

    integer_safe = True
    changes_layout = True

    def __init__(self, min_frac: float = 0.5, max_frac: float = 1.0, min_len: int = 1,
                 keep_len: bool = False, pad_value: float = 0.0):
        if not 0.0 < min_frac <= max_frac <= 1.0:
            raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
        if min_len < 1:
            raise ValueError(f"min_len must be >= 1, got {min_len}")
        self.min_frac, self.max_frac, self.min_len = min_frac, max_frac, min_len
        self.keep_len, self.pad_value = keep_len, pad_value

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = _lengths(x, pad_mask)
        frac = self.min_frac + (self.max_frac - self.min_frac) * _rand(tuple(lengths.shape), generator, x.device)
        crop = torch.round(frac * lengths).long()
        crop = torch.minimum(torch.maximum(crop, lengths.clamp(max=self.min_len)), lengths)
        start = _randint_between(torch.zeros_like(lengths), lengths - crop, generator)
        out_len = x.shape[-1] if self.keep_len else None
        return gather_segments(x, start, crop, out_len, dim=-1, pad_value=self.pad_value)


class CropOverlap(NamedTuple):
    """Where the overlapping segment of two crops lies (all int64 ``(bs,)``).

    ``x1[i, :, start1[i] + t]`` and ``x2[i, :, start2[i] + t]`` come from the same
    original time step for ``0 <= t < length[i]``.  To align per-timestep
    representations ``z1``, ``z2`` of shape ``(bs, L_k, d)``::

        o1, omask = gather_segments(z1, ov.start1, ov.length, dim=1)
        o2, _ = gather_segments(z2, ov.start2, ov.length, dim=1)

    Attributes:
        start1: start of the overlap in crop 1.
        start2: start of the overlap in crop 2.
        length: overlap length.
        orig_start: start of the overlap in the original series.
    """

    start1: torch.Tensor
    start2: torch.Tensor
    length: torch.Tensor
    orig_start: torch.Tensor


def overlapping_crops(
    x: torch.Tensor,
    pad_mask: Mask = None,
    min_overlap_frac: float = 0.0,
    min_overlap_len: int = 2,
    generator: torch.Generator | None = None,
    pad_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, CropOverlap]:
    """Two random crops per series that share an overlapping segment (TS2Vec's contextual consistency).

    Following Yue et al., "TS2Vec: Towards Universal Representation of Time Series",
    AAAI 2022, per series of real length ``n``:

    * the overlap ``[a, a + o)`` has length ``o ~ U{lo, ..., n}`` with
      ``lo = min(n, max(min_overlap_len, ceil(min_overlap_frac * n)))`` and start
      ``a ~ U{0, ..., n - o}``;
    * crop 1 is ``[e1, a + o)`` with ``e1 ~ U{0, ..., a}`` (the overlap is its suffix);
    * crop 2 is ``[a, e2)`` with ``e2 ~ U{a + o, ..., n}`` (the overlap is its prefix).

    Unlike TS2Vec, which draws one overlap length per batch for equal-length series,
    every series draws its own lengths here (variable-length batches), so the
    overlaps have different lengths and are reported per series.  Crops are
    left-aligned and right-padded with ``pad_value``.  Values are copied exactly
    (integer-safe).

    Args:
        x: batch ``(bs, C, L)``.
        pad_mask: padding mask ``(bs, L)`` or ``None``.
        min_overlap_frac: minimum overlap as a fraction of each series' length.
        min_overlap_len: minimum overlap in steps (TS2Vec uses ``2 ** (temporal_unit + 1)``);
            a series shorter than that is used whole, by both crops.
        generator: optional ``torch.Generator``.
        pad_value: value of the padded positions of the crops.

    Returns:
        ``(x1, m1, x2, m2, overlap)``: the two crops ``(bs, C, L1)``, ``(bs, C, L2)``,
        their padding masks, and a :class:`CropOverlap`.
    """
    if not 0.0 <= min_overlap_frac <= 1.0:
        raise ValueError(f"min_overlap_frac must be in [0, 1], got {min_overlap_frac}")
    if min_overlap_len < 1:
        raise ValueError(f"min_overlap_len must be >= 1, got {min_overlap_len}")
    n = _lengths(x, pad_mask)
    lo = torch.ceil(min_overlap_frac * n.double()).long().clamp(min=min_overlap_len)
    lo = torch.minimum(lo, n)
    o = _randint_between(lo, n, generator)
    zero = torch.zeros_like(n)
    a = _randint_between(zero, n - o, generator)
    e1 = _randint_between(zero, a, generator)
    e2 = _randint_between(a + o, n, generator)
    x1, m1 = gather_segments(x, e1, a + o - e1, dim=-1, pad_value=pad_value)
    x2, m2 = gather_segments(x, a, e2 - a, dim=-1, pad_value=pad_value)
    return x1, m1, x2, m2, CropOverlap(start1=a - e1, start2=zero, length=o, orig_start=a)


def _lerp_gather(x: torch.Tensor, src: torch.Tensor, lengths: torch.Tensor, linear: bool) -> torch.Tensor:
    """Sample ``x (bs, C, L)`` at fractional source positions ``src (bs, T)``, clamped to each series."""
    last = (lengths - 1).clamp(min=0)[:, None]
    src = torch.minimum(src.clamp(min=0), last.to(src.dtype))
    i0 = src.floor().long()
    C = x.shape[1]
    g0 = x.gather(-1, i0[:, None].expand(-1, C, -1))
    if not linear:
        return g0
    i1 = torch.minimum(i0 + 1, last)
    g1 = x.gather(-1, i1[:, None].expand(-1, C, -1))
    w = (src - i0.to(src.dtype))[:, None].to(x.dtype)
    return torch.lerp(g0, g1, w)


class Resize(Augmentation):
    """Resample each series to a random new length (uniform time stretch / squeeze).

    Series ``i`` of real length ``n_i`` is resampled to ``round(s_i * n_i)`` steps,
    ``s_i ~ U[min_scale, max_scale]``, with the same sampling grid as
    ``F.interpolate(mode="linear" | "nearest-exact", align_corners=False)`` applied to
    its real part alone.  ``F.interpolate`` itself cannot be used on the batch
    because it resizes every row to one common size and would mix padding into the
    edge samples; the per-series resampling is done with two gathers and a lerp.
    ``mode="nearest"`` copies values (integer-safe); ``"linear"`` does not.

    Args:
        min_scale, max_scale: range of the length scale factor.
        mode: ``"linear"`` or ``"nearest"``.
        max_out: optional cap on the new lengths (memory on long series).
        pad_value: value of the padded positions of the output.
    """

    changes_layout = True

    def __init__(self, min_scale: float = 0.8, max_scale: float = 1.2, mode: str = "linear",
                 max_out: int | None = None, pad_value: float = 0.0):
        if not 0.0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if mode not in ("linear", "nearest"):
            raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
        self.min_scale, self.max_scale, self.mode = min_scale, max_scale, mode
        self.max_out, self.pad_value = max_out, pad_value

    @property
    def integer_safe(self) -> bool:  # type: ignore[override]
        return self.mode == "nearest"

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = _lengths(x, pad_mask)
        s = self.min_scale + (self.max_scale - self.min_scale) * _rand(tuple(n.shape), generator, x.device)
        new = torch.round(s * n).long().clamp(min=1)
        if self.max_out is not None:
            new = new.clamp(max=self.max_out)
        new = torch.where(n > 0, new, n)  # empty series stay empty
        out_len = int(new.max()) if new.numel() else 0
        j = torch.arange(out_len, device=x.device, dtype=torch.float32)
        scale = n.float() / new.clamp(min=1).float()
        if self.mode == "linear":  # half-pixel centres, as F.interpolate(align_corners=False)
            src = (j[None] + 0.5) * scale[:, None] - 0.5
        else:  # nearest-exact: floor of the centre's source coordinate
            src = ((j[None] + 0.5) * scale[:, None]).floor()
        y = _lerp_gather(x, src, n, linear=self.mode == "linear")
        m = j[None] < new[:, None]
        return y.masked_fill(~m[:, None], self.pad_value), m


class SegmentPermutation(Augmentation):
    """Cut each series into ``n_segments`` pieces and shuffle them (Um et al., 2017; TS-TCC).

    Cut points are uniform random positions in the real part of each series (or equal
    splits with ``random_cuts=False``); each series gets its own permutation.
    Vectorised: the output position ``t`` is mapped to its output segment with
    ``torch.searchsorted`` on the cumulative permuted segment lengths, then to its
    source position, and everything is fetched with one gather.  Values are copied
    (integer-safe); padded positions are untouched.

    Args:
        n_segments: number of segments (some may be empty when cut points coincide).
        random_cuts: random cut points (default) or equal-length segments.
    """

    integer_safe = True

    def __init__(self, n_segments: int = 5, random_cuts: bool = True):
        if n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {n_segments}")
        self.n_segments, self.random_cuts = n_segments, random_cuts

    def __call__(self, x: torch.Tensor, pad_mask: Mask = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Mask]:
        bs, C, L = x.shape
        k = self.n_segments
        n = _lengths(x, pad_mask)[:, None]
        if self.random_cuts:
            cuts = (_rand((bs, k - 1), generator, x.device) * (n + 1).float()).long()
            cuts = torch.minimum(cuts, n).sort(dim=1).values
        else:
            cuts = torch.arange(1, k, device=x.device)[None] * n // k
        starts = torch.cat([torch.zeros_like(n), cuts], dim=1)
        seg_len = torch.cat([cuts, n], dim=1) - starts
        perm = _rand((bs, k), generator, x.device).argsort(dim=1)
        p_start, p_len = starts.gather(1, perm), seg_len.gather(1, perm)
        out_end = p_len.cumsum(dim=1)
        t = torch.arange(L, device=x.device).expand(bs, L).contiguous()
        seg = torch.searchsorted(out_end, t, right=True).clamp_(max=k - 1)  # empty segments are skipped
        src = p_start.gather(1, seg) + t - (out_end - p_len).gather(1, seg)
        src = torch.where(t < n, src, t)  # padding maps to itself
        return x.gather(-1, src[:, None].expand(-1, C, -1)), pad_mask
