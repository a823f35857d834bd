"""Tests of tsai_ssl.masking.span_mask."""

from __future__ import annotations

import pytest
import torch

from tsai_ssl.masking import span_mask


def _runs(mask: torch.Tensor, value: bool) -> torch.Tensor:
    """Lengths of the maximal runs equal to ``value`` that touch neither end of a row.

    Runs cut by the sequence ends are dropped because their lengths are censored.
    """
    lengths = []
    for row in mask.tolist():
        start = None
        for t, v in enumerate(row):
            if v == value and start is None:
                start = t
            elif v != value and start is not None:
                if start > 0:
                    lengths.append(t - start)
                start = None
    return torch.tensor(lengths, dtype=torch.float64)


@pytest.mark.parametrize("ratio,mean_span", [(0.15, 5.0), (0.3, 3.0), (0.5, 10.0), (0.05, 1.0)])
def test_ratio_and_mean_span(ratio, mean_span):
    g = torch.Generator().manual_seed(0)
    m = span_mask(16, 20000, ratio, mean_span, generator=g)
    assert m.dtype == torch.bool and m.shape == (16, 20000)
    assert abs(m.float().mean().item() - ratio) < 0.02
    masked_runs, unmasked_runs = _runs(m, True), _runs(m, False)
    assert abs(masked_runs.mean().item() - mean_span) < 0.1 * mean_span
    expected_unmasked = mean_span * (1 - ratio) / ratio
    assert abs(unmasked_runs.mean().item() - expected_unmasked) < 0.1 * expected_unmasked
    if mean_span == 1.0:  # masked spans all have length one
        assert (masked_runs == 1).all()


def test_stationary_from_first_position():
    # Every position, in particular the first and the last, is masked with probability ratio.
    g = torch.Generator().manual_seed(1)
    m = span_mask(40000, 12, 0.2, 4.0, generator=g).float().mean(0)
    assert torch.all((m - 0.2).abs() < 0.015), m


def test_never_masks_padding_and_ratio_on_real_positions():
    g = torch.Generator().manual_seed(2)
    bs, L = 32, 4000
    lengths = torch.randint(1, L + 1, (bs,), generator=g)
    pad = torch.arange(L)[None] < lengths[:, None]
    m = span_mask(bs, L, 0.25, 6.0, pad_mask=pad, generator=g)
    assert not (m & ~pad).any()
    assert abs(m[pad].float().mean().item() - 0.25) < 0.02
    # Arbitrary (non right-padded) masks are respected too.
    holes = torch.rand(bs, L, generator=g) > 0.5
    assert not (span_mask(bs, L, 0.25, 6.0, pad_mask=holes, generator=g) & ~holes).any()


def test_deterministic_with_generator():
    a = span_mask(4, 500, generator=torch.Generator().manual_seed(3))
    b = span_mask(4, 500, generator=torch.Generator().manual_seed(3))
    c = span_mask(4, 500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rows_are_independent():
    m = span_mask(64, 300, 0.3, 5.0, generator=torch.Generator().manual_seed(5))
    assert len({tuple(r) for r in m.tolist()}) == 64


def test_edge_shapes():
    assert span_mask(0, 10).shape == (0, 10)
    assert span_mask(3, 0).shape == (3, 0)
    assert span_mask(3, 1).shape == (3, 1)


def test_validation():
    for kw in [dict(ratio=0.0), dict(ratio=1.0), dict(ratio=-0.1), dict(mean_span=0.5),
               dict(ratio=0.9, mean_span=5.0)]:  # 0.9 > 5 / 6: unmasked mean run < 1
        with pytest.raises(ValueError):
            span_mask(2, 10, **kw)
    with pytest.raises(ValueError):
        span_mask(2, 10, pad_mask=torch.ones(2, 9, dtype=torch.bool))
    span_mask(2, 10, ratio=5 / 6, mean_span=5.0)  # boundary is allowed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device():
    pad = torch.ones(4, 1000, dtype=torch.bool, device="cuda")
    pad[:, 700:] = False
    m = span_mask(4, 1000, pad_mask=pad)
    assert m.device.type == "cuda" and not (m & ~pad).any()
    m = span_mask(4, 1000, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    assert m.device.type == "cuda"
    # A CPU generator draws on CPU: identical masks on both devices.
    a = span_mask(4, 1000, device="cuda", generator=torch.Generator().manual_seed(0))
    b = span_mask(4, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.cpu(), b)
