"""Tests of tsai_ssl.augment: shapes, padding masks, integer safety and crop bookkeeping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tsai_ssl.augment import (
    Compose,
    Jitter,
    RandomApply,
    RandomCrop,
    Resize,
    Scaling,
    SegmentPermutation,
    TimeMask,
    gather_segments,
    overlapping_crops,
)

PAD_SENTINEL = 7.25  # written into padded input positions to check they are left untouched


def make_batch(bs=6, C=3, L=50, seed=0, integer=False, pad_value=0.0, with_mask=True):
    """Right-padded batch with one full-length series and a length-1 series."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-20, 20, (bs, C, L), generator=g).float() if integer else torch.randn(bs, C, L, generator=g)
    if not with_mask:
        return x, None
    lengths = torch.randint(1, L + 1, (bs,), generator=g)
    lengths[0], lengths[-1] = L, 1
    mask = torch.arange(L)[None] < lengths[:, None]
    return x.masked_fill(~mask[:, None], pad_value), mask


def position_batch(bs=5, C=2, L=40, seed=0):
    """Values that encode (series, channel, time): equal values <=> same original position."""
    x = (torch.arange(L)[None, None] + 1000 * torch.arange(C)[None, :, None]
         + 100000 * torch.arange(bs)[:, None, None]).float()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (bs,), generator=g)
    lengths[0] = L
    mask = torch.arange(L)[None] < lengths[:, None]
    return x.masked_fill(~mask[:, None], 0.0), mask


def assert_prefix_mask(m: torch.Tensor):
    assert m.dtype == torch.bool and m.ndim == 2
    # True...True False...False on every row: never switches from False back to True.
    assert not (~m[:, :-1] & m[:, 1:]).any()


def is_integer(x: torch.Tensor) -> bool:
    return bool(torch.equal(x, x.round()))


PRESERVING = [
    Jitter(0.1), Scaling(0.2), Scaling(0.2, per_channel=True), TimeMask(0.3, 3.0), TimeMask(0.3, 3.0, per_channel=True),
    SegmentPermutation(4), SegmentPermutation(3, random_cuts=False), RandomApply(Jitter(0.5), p=0.5),
]
CHANGING = [RandomCrop(0.3, 0.9), RandomCrop(0.5, 1.0, keep_len=True), Resize(0.5, 1.5), Resize(0.7, 1.3, mode="nearest"),
            Compose([RandomCrop(), Jitter(), TimeMask()])]


@pytest.mark.parametrize("aug", PRESERVING, ids=repr)
def test_layout_preserving(aug):
    x, mask = make_batch(pad_value=PAD_SENTINEL)
    y, m = aug(x, mask, generator=torch.Generator().manual_seed(0))
    assert m is mask and y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[~mask[:, None].expand_as(x)], x[~mask[:, None].expand_as(x)])  # padding untouched
    assert not torch.equal(y, x)
    # Without a mask: no padding in, none out.
    y2, m2 = aug(x, None, generator=torch.Generator().manual_seed(0))
    assert m2 is None and y2.shape == x.shape


@pytest.mark.parametrize("aug", CHANGING, ids=repr)
def test_layout_changing(aug):
    x, mask = make_batch()
    for m_in in (mask, None):
        y, m = aug(x, m_in, generator=torch.Generator().manual_seed(0))
        assert y.shape[:2] == x.shape[:2] and m.shape == (x.shape[0], y.shape[-1])
        assert_prefix_mask(m)
        assert m.any(dim=1).all()  # every series keeps at least one step
        assert (y.masked_select(~m[:, None]) == 0).all()  # new padding holds pad_value


@pytest.mark.parametrize("aug", PRESERVING + CHANGING, ids=repr)
def test_deterministic_with_generator(aug):
    x, mask = make_batch()
    a = aug(x, mask, generator=torch.Generator().manual_seed(1))
    b = aug(x, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("aug", PRESERVING + CHANGING, ids=repr)
def test_integer_safety(aug):
    x, mask = make_batch(integer=True)
    y, _ = aug(x, mask, generator=torch.Generator().manual_seed(2))
    if aug.integer_safe:
        assert is_integer(y)
    elif not isinstance(aug, Compose):
        assert not is_integer(y)


def test_integer_safe_flags():
    assert SegmentPermutation().integer_safe and RandomCrop().integer_safe and TimeMask().integer_safe
    assert not TimeMask(value=0.5).integer_safe
    assert not Jitter().integer_safe and not Scaling().integer_safe
    assert Resize(mode="nearest").integer_safe and not Resize().integer_safe
    assert Compose([RandomCrop(), TimeMask()]).integer_safe and not Compose([RandomCrop(), Jitter()]).integer_safe


def test_permutation_and_masking_keep_values_exact():
    x, mask = make_batch(integer=True, L=60)
    y, _ = SegmentPermutation(5)(x, mask, generator=torch.Generator().manual_seed(3))
    for i in range(x.shape[0]):  # same multiset of real values per channel
        n = int(mask[i].sum())
        assert torch.equal(y[i, :, :n].sort(-1).values, x[i, :, :n].sort(-1).values)
    y, _ = TimeMask(0.4, 4.0, value=-1.0)(x, mask, generator=torch.Generator().manual_seed(3))
    changed = y != x
    assert (y[changed] == -1).all()


def test_segment_permutation_is_a_shuffle_of_contiguous_segments():
    x, mask = position_batch(L=60)
    k = 4
    y, _ = SegmentPermutation(k)(x, mask, generator=torch.Generator().manual_seed(4))
    for i in range(x.shape[0]):
        n = int(mask[i].sum())
        t = y[i, 0, :n] - 100000 * i  # original time index of every output step
        assert sorted(t.long().tolist()) == list(range(n))
        assert int((t[1:] != t[:-1] + 1).sum()) <= k - 1  # at most k contiguous pieces
        assert torch.equal(y[i, 1, :n] - y[i, 0, :n], torch.full((n,), 1000.0))  # channels move together
    # A single segment is the identity.
    y1, _ = SegmentPermutation(1)(x, mask, generator=torch.Generator().manual_seed(4))
    assert torch.equal(y1, x)


def test_time_mask_ratio_and_fill():
    x = torch.randn(8, 2, 5000) + 10.0
    y, _ = TimeMask(0.2, 5.0, value=0.0)(x, None, generator=torch.Generator().manual_seed(5))
    masked = y == 0
    assert abs(masked.float().mean().item() - 0.2) < 0.03
    assert torch.equal(masked[:, 0], masked[:, 1])  # same spans for all channels by default


def test_random_crop_windows():
    x, mask = position_batch(bs=8, L=50)
    lengths = mask.sum(1)
    aug = RandomCrop(0.4, 0.8)
    y, m = aug(x, mask, generator=torch.Generator().manual_seed(6))
    crop = m.sum(1)
    assert torch.all(crop >= torch.floor(0.4 * lengths).clamp(min=1)) and torch.all(crop <= torch.ceil(0.8 * lengths))
    assert y.shape[-1] == int(crop.max())
    for i in range(x.shape[0]):
        c = int(crop[i])
        start = int(y[i, 0, 0]) - 100000 * i
        assert 0 <= start and start + c <= int(lengths[i])
        assert torch.equal(y[i, :, :c], x[i, :, start:start + c])


def test_overlapping_crops_overlap_info():
    x, mask = position_batch(bs=16, L=64, seed=7)
    lengths = mask.sum(1)
    x1, m1, x2, m2, ov = overlapping_crops(x, mask, min_overlap_len=4, generator=torch.Generator().manual_seed(7))
    assert_prefix_mask(m1)
    assert_prefix_mask(m2)
    assert (x1.masked_select(~m1[:, None]) == 0).all() and (x2.masked_select(~m2[:, None]) == 0).all()
    n1, n2 = m1.sum(1), m2.sum(1)
    assert torch.all(ov.length >= torch.minimum(lengths, torch.tensor(4)))
    assert torch.all(ov.length >= 1)
    assert torch.all(ov.start1 + ov.length <= n1) and torch.all(ov.start2 + ov.length <= n2)
    for i in range(x.shape[0]):
        s1, s2, o, a = (int(v[i]) for v in (ov.start1, ov.start2, ov.length, ov.orig_start))
        seg1, seg2 = x1[i, :, s1:s1 + o], x2[i, :, s2:s2 + o]
        # Same values from the same original positions (values encode the positions).
        assert torch.equal(seg1, seg2) and torch.equal(seg1, x[i, :, a:a + o])
        # Each crop is a contiguous window of the real part of the series.
        for xc, n in ((x1, n1), (x2, n2)):
            first = int(xc[i, 0, 0]) - 100000 * i
            assert 0 <= first and first + int(n[i]) <= int(lengths[i])
            assert torch.equal(xc[i, :, :int(n[i])], x[i, :, first:first + int(n[i])])
    # The overlap may be smaller than the crops (views are not identical).
    assert (n1 > ov.length).any() and (n2 > ov.length).any()


def test_overlapping_crops_align_representations():
    """The overlap info aligns per-timestep outputs, e.g. of an encoder returning (bs, L, d)."""
    x, mask = position_batch(bs=6, L=30, seed=8)
    x1, m1, x2, m2, ov = overlapping_crops(x, mask, min_overlap_frac=0.5, generator=torch.Generator().manual_seed(8))
    z1, z2 = x1.transpose(1, 2), x2.transpose(1, 2)  # identity "encoder", (bs, L, C)
    o1, om = gather_segments(z1, ov.start1, ov.length, dim=1)
    o2, om2 = gather_segments(z2, ov.start2, ov.length, dim=1)
    assert torch.equal(om, om2) and torch.equal(om.sum(1), ov.length)
    assert torch.equal(o1, o2)
    assert (o1[~om] == 0).all()
    assert torch.all(ov.length >= torch.ceil(0.5 * mask.sum(1)))


def test_overlapping_crops_without_mask_and_short_series():
    x = torch.randn(4, 1, 3)
    x1, m1, x2, m2, ov = overlapping_crops(x, None, min_overlap_len=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ov.length, torch.full((4,), 3))  # clamped to the series length
    assert torch.equal(x1, x) and torch.equal(x2, x)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_resize_matches_interpolate_per_series(mode):
    x, mask = make_batch(bs=8, L=40, seed=9)
    y, m = Resize(0.5, 2.0, mode=mode)(x, mask, generator=torch.Generator().manual_seed(9))
    torch_mode = "linear" if mode == "linear" else "nearest-exact"
    for i in range(x.shape[0]):
        n, new = int(mask[i].sum()), int(m[i].sum())
        assert abs(new - n) <= n + 1 and new >= 1
        ref = F.interpolate(x[i:i + 1, :, :n], size=new, mode=torch_mode,
                            **({"align_corners": False} if mode == "linear" else {}))
        torch.testing.assert_close(y[i, :, :new], ref[0], rtol=1e-5, atol=1e-5)


def test_resize_max_len():
    x = torch.randn(3, 2, 100)
    y, m = Resize(2.0, 3.0, max_out=150)(x, None, generator=torch.Generator().manual_seed(0))
    assert y.shape[-1] == 150 and m.all()


def test_random_apply():
    x, mask = make_batch(bs=64)
    y, _ = RandomApply(Jitter(1.0), p=0.0)(x, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, x)
    y, _ = RandomApply(Jitter(1.0), p=0.5)(x, mask, generator=torch.Generator().manual_seed(0))
    changed = (y != x).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    with pytest.raises(ValueError):
        RandomApply(RandomCrop())


def test_validation():
    for bad in (lambda: RandomCrop(0.0), lambda: RandomCrop(0.8, 0.5), lambda: Jitter(-1), lambda: Resize(mode="cubic"),
                lambda: SegmentPermutation(0), lambda: TimeMask(ratio=1.0),
                lambda: overlapping_crops(torch.randn(2, 1, 5), min_overlap_frac=2.0)):
        with pytest.raises(ValueError):
            bad()


def test_long_series_smoke():
    # Realistic length: all augmentations stay vectorised and cheap.
    x, mask = make_batch(bs=4, C=2, L=30720, seed=10)
    pipe = Compose([RandomCrop(0.5, 1.0), Resize(0.8, 1.2), SegmentPermutation(8), TimeMask(), Scaling(), Jitter()])
    y, m = pipe(x, mask, generator=torch.Generator().manual_seed(10))
    assert_prefix_mask(m)
    x1, m1, x2, m2, ov = overlapping_crops(x, mask, generator=torch.Generator().manual_seed(10))
    assert torch.all(ov.start1 + ov.length <= m1.sum(1)) and torch.all(ov.start2 + ov.length <= m2.sum(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("aug", PRESERVING + CHANGING, ids=repr)
def test_cuda(aug):
    x, mask = make_batch()
    y, m = aug(x.cuda(), mask.cuda(), generator=torch.Generator().manual_seed(0))
    y_cpu, m_cpu = aug(x, mask, generator=torch.Generator().manual_seed(0))
    assert y.device.type == "cuda"
    assert y.shape == y_cpu.shape
    if aug.integer_safe:  # a CPU generator draws the same numbers, whatever the target device
        assert torch.equal(y.cpu(), y_cpu)
