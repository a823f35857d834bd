"""Span (geometric) masking for masked-value pretraining of time series.

The masks follow Zerveas et al., "A Transformer-based Framework for Multivariate
Time Series Representation Learning", KDD 2021: each series is masked by a
two-state Markov chain whose masked and unmasked segments have geometric
lengths, with mean ``mean_span`` for the masked ones and
``mean_span * (1 - ratio) / ratio`` for the unmasked ones, so that on average a
fraction ``ratio`` of the time steps is masked.  Zerveas et al. step the chain
one time step at a time in Python; here the chain is realised without any
per-step or per-sample loop (see :func:`span_mask`).

Conventions shared with the rest of :mod:`tsai_ssl`: batches are ``(bs, C, L)``,
right-padded, with a boolean padding mask ``(bs, L)`` that is ``True`` at real
positions (``None`` = no padding).
"""

from __future__ import annotations

import math

import torch

__all__ = ["span_mask"]


def _rand_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Device on which random numbers must be drawn.

    A ``torch.Generator`` only produces numbers on its own device, so when one is
    given we draw there and move the result to the target device afterwards.  This
    also makes the draws independent of the target device (same generator seed ->
    same mask on CPU and CUDA).
    """
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _geometric(shape: tuple[int, ...], p: float, generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
    """Geometric samples on {1, 2, ...} with success probability ``p`` (mean ``1/p``), as int64."""
    if p >= 1.0:  # Tensor.geometric_ requires 0 < p < 1; p == 1 means "always length 1".
        return torch.ones(shape, dtype=torch.long, device=device)
    out = torch.empty(shape, dtype=torch.float64, device=device)
    return out.geometric_(p, generator=generator).long()


def span_mask(
    bs: int,
    seq_len: int,
    ratio: float = 0.15,
    mean_span: float = 5.0,
    pad_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample span masks of geometric length for a batch of series.

    The mask of every series is a stationary two-state Markov chain (Zerveas et
    al., KDD 2021): masked runs have geometric lengths with mean ``mean_span`` and
    unmasked runs geometric lengths with mean ``mean_span * (1 - ratio) / ratio``,
    so that the expected masked fraction is ``ratio`` at every position.

    Vectorised implementation: for every series we draw enough alternating run
    lengths to cover ``seq_len`` steps, take their cumulative sums (the run end
    positions) and map every position to the run that contains it with
    ``torch.searchsorted``; the parity of the run index gives the state.  The
    first state is masked with probability ``ratio`` (the stationary
    probability), and because geometric lengths are memoryless the first run,
    seen from position 0, has the same law as any other run; hence the chain is
    stationary from position 0 on and no burn-in offset is needed.

    Args:
        bs: batch size.
        seq_len: length ``L`` of the (padded) series.
        ratio: expected fraction of masked real positions, ``0 < ratio < 1``.
        mean_span: mean length of a masked span, ``>= 1``.  Since unmasked runs
            also need a mean length of at least 1, ``ratio`` must satisfy
            ``ratio <= mean_span / (mean_span + 1)``.
        pad_mask: optional ``(bs, seq_len)`` boolean padding mask, ``True`` at real
            positions.  Padded positions are never masked; the expected masked
            fraction of the real positions is ``ratio`` (the chain is stationary,
            so this holds whatever the layout of the padding).
        generator: optional ``torch.Generator`` for reproducibility.  Random
            numbers are drawn on the generator's device and the result is moved
            to ``device``.
        device: device of the result.  Defaults to ``pad_mask.device`` if given,
            else CPU.

    Returns:
        ``torch.BoolTensor`` of shape ``(bs, seq_len)``; ``True`` = masked.

    Example:
        ```python
        m = span_mask(bs=x.shape[0], seq_len=x.shape[-1], ratio=0.15, mean_span=5, pad_mask=pad_mask)   # (bs, L) bool
        x_in = x.masked_fill(m[:, None], fill)       # what MaskedValuePretrain does with it
        ```
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must satisfy 0 < ratio < 1, got {ratio}")
    if not mean_span >= 1.0:
        raise ValueError(f"mean_span must be >= 1, got {mean_span}")
    mean_unmasked = mean_span * (1.0 - ratio) / ratio
    if mean_unmasked < 1.0 - 1e-9:  # tolerance: ratio = mean_span / (mean_span + 1) is valid
        raise ValueError(
            f"ratio={ratio} is too high for mean_span={mean_span}: unmasked runs would need a mean "
            f"length of {mean_unmasked:.3g} < 1; use ratio <= mean_span / (mean_span + 1) = "
            f"{mean_span / (mean_span + 1):.3g} or a larger mean_span")
    if bs < 0 or seq_len < 0:
        raise ValueError(f"bs and seq_len must be non-negative, got bs={bs}, seq_len={seq_len}")
    if pad_mask is not None:
        if pad_mask.shape != (bs, seq_len):
            raise ValueError(f"pad_mask has shape {tuple(pad_mask.shape)}, expected {(bs, seq_len)}")
        if device is None:
            device = pad_mask.device
    out_device = torch.device(device) if device is not None else torch.device("cpu")
    if bs == 0 or seq_len == 0:
        return torch.zeros(bs, seq_len, dtype=torch.bool, device=out_device)

    rdev = _rand_device(generator, out_device)
    p_masked, p_unmasked = 1.0 / mean_span, min(1.0, 1.0 / mean_unmasked)

    # Number of runs needed to cover seq_len: one masked+unmasked cycle lasts
    # mean_span / ratio steps on average.  Draw the expected number of runs plus a
    # generous margin so that a second draw (below) is practically never needed.
    cycle = mean_span / ratio
    n_cycles = seq_len / cycle
    n_pairs = int(math.ceil(n_cycles + 6.0 * math.sqrt(n_cycles) + 4))

    first_masked = torch.rand(bs, 1, generator=generator, device=rdev) < ratio
    chunks: list[torch.Tensor] = []
    covered = torch.zeros(bs, dtype=torch.long, device=rdev)
    while True:  # loops over chunks of runs, not over samples; normally runs once
        m = _geometric((bs, n_pairs), p_masked, generator, rdev)
        u = _geometric((bs, n_pairs), p_unmasked, generator, rdev)
        # Interleave so that run 0 has the first state, run 1 the other one, ...
        first, second = torch.where(first_masked, m, u), torch.where(first_masked, u, m)
        runs = torch.stack([first, second], dim=-1).reshape(bs, 2 * n_pairs)
        chunks.append(runs)
        covered = covered + runs.sum(dim=1)
        if bool((covered >= seq_len).all()):
            break
    runs = torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]

    ends = runs.cumsum(dim=1)  # ends[k] = first position after run k
    pos = torch.arange(seq_len, device=rdev).expand(bs, seq_len).contiguous()
    run_idx = torch.searchsorted(ends, pos, right=True)  # number of runs ending at or before pos
    # Even runs carry the first state, odd runs the other one.
    masked = (run_idx % 2 == 0) == first_masked
    masked = masked.to(out_device)
    if pad_mask is not None:
        masked = masked & pad_mask.to(device=out_device, dtype=torch.bool)
    return masked
