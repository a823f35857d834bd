"""Self-supervised losses: SimCLR's NT-Xent, MoCo's InfoNCE with a queue (both DDP-aware), BYOL's regression loss
and TS2Vec's hierarchical contrastive loss.

* :func:`nt_xent` / :class:`NTXentLoss`: the normalised-temperature cross-entropy
  (InfoNCE) loss of SimCLR (Chen et al., "A Simple Framework for Contrastive Learning
  of Visual Representations", ICML 2020), with negatives optionally gathered from all
  DistributedDataParallel processes (:func:`gather_with_grad`).
* :func:`moco_info_nce`: InfoNCE of a student's queries against an EMA teacher's keys, the other keys of the
  batch (of all processes under DDP) and a queue of keys of earlier batches (He et al., "Momentum Contrast for
  Unsupervised Visual Representation Learning", CVPR 2020; in-batch keys as in MoCo v3, Chen et al., ICCV 2021).
* :func:`byol_loss`: BYOL's ``2 - 2 cos(p, z)`` between the student's predictions and the teacher's projections
  (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020).
* :func:`hierarchical_contrastive_loss` / :class:`HierarchicalContrastiveLoss`: the
  instance-wise + temporal contrastive loss summed over a max-pooling hierarchy of
  TS2Vec (Yue et al., "TS2Vec: Towards Universal Representation of Time Series",
  AAAI 2022), extended with a validity mask for batches whose overlaps have
  different lengths.

This module only imports torch, so that it is cheap to import in spawned workers.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "gather_with_grad", "gather_no_grad", "nt_xent", "NTXentLoss", "moco_info_nce", "byol_loss",
    "hierarchical_contrastive_loss", "HierarchicalContrastiveLoss",
]


# ----------------------------------------------------------------------------- distributed gather

def _dist_world_size(group=None) -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sends every rank the summed gradient of its own shard.

    Each rank's loss depends on every rank's shard (through the gathered negatives),
    so the gradient of a shard is the sum over ranks of the gradients flowing into
    its gathered copy: all-reduce (sum) the gradients of the gathered tensor and
    keep the local slice.  Only all_reduce is used, which every backend supports.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        tensor = tensor.contiguous()
        world = dist.get_world_size(group)
        out = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(out, tensor, group=group)
        ctx.rank, ctx.n = dist.get_rank(group), tensor.shape[0]
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in-place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def gather_with_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate ``t`` from all processes along dim 0, keeping the gradient of every shard.

    The backward pass sums, over processes, the gradients that reach each shard and
    returns its own to every process, i.e. the gradient of the local shard is that of
    the *sum* of all processes' losses (plain ``torch.distributed.all_gather`` has no
    gradient at all).  Uses ``torch.distributed.nn.functional.all_gather`` when
    available (reduce-scatter / all-to-all backward), else an all-reduce based
    autograd Function.  Without an initialised process group of size > 1 it returns
    ``t`` unchanged.

    All processes must pass tensors of the same shape (same local batch size; fastai's
    ``DistributedDL`` pads the data so that this holds, or use ``drop_last=True``).

    Args:
        t: local tensor ``(n, ...)``.
        group: process group (default: the world).

    Returns:
        ``(world_size * n, ...)``, ordered by rank.
    """
    if _dist_world_size(group) == 1:
        return t
    try:
        from torch.distributed.nn.functional import all_gather
    except ImportError:  # pragma: no cover - depends on the torch build
        return _AllGatherWithGrad.apply(t, group)
    with warnings.catch_warnings():
        # torch >= 2.x marks it deprecated in favour of a private functional API; it is
        # still the public autograd-aware gather, and the fallback covers its removal.
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(t, group=group) if group is not None else all_gather(t)
    return torch.cat(parts, dim=0)


def gather_no_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """``t`` of every process concatenated along dim 0 in rank order, without gradient (teacher keys); ``t`` itself
    outside a process group of size > 1. All processes must pass the same shape."""
    if _dist_world_size(group) == 1:
        return t
    t = t.detach().contiguous()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.cat(out, dim=0)


# ----------------------------------------------------------------------------- NT-Xent

def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    distributed: bool | None = None,
    group=None,
) -> torch.Tensor:
    """NT-Xent / InfoNCE loss of SimCLR (Chen et al., ICML 2020) for two views.

    With ``z = [z1; z2]`` L2-normalised and ``s_ab = z_a . z_b / temperature``, the
    loss of anchor ``a`` with positive ``p(a)`` (the other view of the same sample) is
    ``-log(exp(s_a,p(a)) / sum_{b != a} exp(s_ab))``: one positive and ``2N - 2``
    negatives for a batch of ``N`` pairs.  The result is the mean over the ``2N``
    anchors.

    Distributed mode (negatives from all processes): every process gathers the
    embeddings of all processes with :func:`gather_with_grad` and computes the loss of
    its *local* anchors against all ``2N - 1`` global candidates (``N`` = global number
    of pairs), averaged over its local anchors.  Why this scaling gives exact
    gradients: with ``W`` processes and equal local batches, the single-process loss on
    the concatenated batch is ``L = (1/W) sum_r L_r``.  Through the gather's backward,
    process ``r`` receives for its embeddings the gradient of ``sum_r' L_r'`` (``= W L``),
    and DDP then *averages* the parameter gradients over processes, dividing by
    ``W``: the applied gradient is exactly ``dL/dtheta``.  (Consequently, the raw
    gradient w.r.t. the local embeddings before DDP's averaging is ``W`` times the
    single-process one.)  The returned value is the local mean, an unbiased estimate
    of ``L``; averaging it over processes gives ``L`` exactly.

    Args:
        z1, z2: embeddings of the two views, ``(N, d)`` each; row ``i`` of both comes from
            the same sample.
        temperature: softmax temperature ``tau > 0``.
        distributed: gather negatives from all processes.  ``None`` (default): when
            ``torch.distributed`` is initialised with ``world_size > 1``.  All processes
            must then pass the same number of pairs ``n`` (see :func:`gather_with_grad`).
        group: process group for the gather (default: the world).

    Returns:
        Scalar loss.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    world = _dist_world_size(group)
    if distributed is None:
        distributed = world > 1
    if distributed and world == 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group")

    n = z1.shape[0]
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    if distributed and world > 1:
        rank = dist.get_rank(group)
        g1, g2 = gather_with_grad(z1, group), gather_with_grad(z2, group)
    else:
        rank, world, g1, g2 = 0, 1, z1, z2
    big_n = g1.shape[0]
    anchors = torch.cat([z1, z2], dim=0)             # (2n, d): local anchors
    candidates = torch.cat([g1, g2], dim=0)          # (2N, d): global candidates
    logits = anchors @ candidates.T / temperature    # (2n, 2N)

    # Global index of each local anchor in `candidates`, and of its positive.
    local = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([local, local + big_n])
    pos_idx = torch.cat([local + big_n, local])
    rows = torch.arange(2 * n, device=z1.device)
    # An anchor is not its own negative (every row keeps its positive, so no all -inf row).
    logits = logits.index_put((rows, self_idx), logits.new_tensor(float("-inf")))
    loss_sum = F.cross_entropy(logits, pos_idx, reduction="sum")
    # (W / 2N) * sum over local anchors == mean over local anchors for equal shards.
    return loss_sum * world / (2 * big_n)


class NTXentLoss(nn.Module):
    """Module wrapper of :func:`nt_xent`: ``NTXentLoss(temperature)(z1, z2)``.

    Args:
        temperature: softmax temperature.
        distributed: see :func:`nt_xent` (``None`` = automatic).
    """

    def __init__(self, temperature: float = 0.1, distributed: bool | None = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.distributed = temperature, distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature, self.distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, distributed={self.distributed}"


# ----------------------------------------------------------------------------- TS2Vec

def _masked_info_nce(sim: torch.Tensor, valid: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the InfoNCE losses of a stack of similarity matrices.

    ``sim`` is ``(G, 2*half, 2*half)``: in group ``g``, item ``k < half`` and item
    ``k + half`` are positives of each other; all other *valid* items are negatives;
    an item is never its own negative.  Only valid anchors with at least one valid
    negative are counted.
    """
    neg = torch.finfo(sim.dtype).min  # finite: fully masked rows stay NaN-free, also in backward
    G, n = sim.shape[0], 2 * half
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    # In place and fused: ``sim`` is a fresh product whose backward does not need it, and cross_entropy does
    # log-softmax and the pick of the positive in one pass. The temporal term's (B, 2T, 2T) tensors are the
    # largest of a TS2Vec step, so every full-size temporary counts.
    logits = sim.masked_fill_(eye | ~valid[:, None, :], neg)
    pos = (torch.arange(n, device=sim.device) + half) % n
    lp_pos = -F.cross_entropy(logits.reshape(G * n, n), pos.repeat(G), reduction='none').view(G, n)
    # Valid candidates other than the anchor and its (valid) positive.
    n_neg = valid.sum(dim=-1, keepdim=True) - 2
    counted = valid & (n_neg > 0)
    return -(lp_pos * counted).sum(), counted.sum()


def _instance_loss(z1: torch.Tensor, z2: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Contrast series against each other at every timestep (TS2Vec's instance-wise loss)."""
    B = z1.shape[0]
    z = torch.cat([z1, z2], dim=0).transpose(0, 1)            # (T, 2B, d)
    sim = z @ z.transpose(1, 2)                               # (T, 2B, 2B)
    valid = torch.cat([m, m], dim=0).T                        # (T, 2B)
    total, count = _masked_info_nce(sim, valid, B)
    return total / count.clamp(min=1)


def _temporal_loss(z1: torch.Tensor, z2: torch.Tensor, m: torch.Tensor, anchors: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Contrast timesteps against each other within every series (TS2Vec's temporal loss).

    ``anchors``: score only that many anchor timesteps (the same uniform sample for every series, both views),
    each against every valid step: ``(B, 2K, 2T)`` similarities instead of ``(B, 2T, 2T)``. Every step is an anchor
    with the same probability, so the expected sum over the sampled anchors is K/T times the full sum."""
    T = z1.shape[1]
    z = torch.cat([z1, z2], dim=1)                            # (B, 2T, d)
    valid = torch.cat([m, m], dim=1)                          # (B, 2T)
    if anchors is None or anchors >= T:
        sim = z @ z.transpose(1, 2)                           # (B, 2T, 2T)
        total, count = _masked_info_nce(sim, valid, T)
        return total / count.clamp(min=1)
    dev = generator.device if generator is not None else z.device
    t = torch.randperm(T, generator=generator, device=dev)[:anchors].to(z.device)  # (K,)
    rows = torch.cat([t, t + T])                              # anchors z1[t], z2[t]
    sim = z[:, rows] @ z.transpose(1, 2)                      # (B, 2K, 2T)
    neg = torch.finfo(sim.dtype).min
    K = t.shape[0]
    own = torch.zeros(2 * K, 2 * T, dtype=torch.bool, device=z.device)
    own[torch.arange(2 * K, device=z.device), rows] = True    # an anchor is not its own negative
    logits = sim.masked_fill_(own | ~valid[:, None, :], neg)
    pos = torch.cat([t + T, t])                               # z1[t] <-> z2[t]
    lp = -F.cross_entropy(logits.reshape(-1, 2 * T), pos.repeat(z.shape[0]), reduction='none').view(z.shape[0], 2 * K)
    counted = valid[:, rows] & (valid.sum(-1, keepdim=True) - 2 > 0)
    return -(lp * counted).sum() / counted.sum().clamp(min=1)


def _masked_max_pool(z: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool ``(B, T, d)`` over time with kernel 2 (floor), ignoring invalid steps.

    A pooled step is valid if either input step is; its value is the max over the
    valid ones only.  Pooled steps with no valid input are set to 0 (and invalid).
    """
    neg = torch.finfo(z.dtype).min
    zt = z.masked_fill(~m[..., None], neg).transpose(1, 2)
    pooled = F.max_pool1d(zt, kernel_size=2).transpose(1, 2)
    pm = F.max_pool1d(m[:, None].to(z.dtype), kernel_size=2)[:, 0] > 0
    return pooled.masked_fill(~pm[..., None], 0.0), pm


def hierarchical_contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    alpha: float = 0.5,
    temporal_unit: int = 0,
    mask: torch.Tensor | None = None,
    anchors: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hierarchical contrastive loss of TS2Vec (Yue et al., AAAI 2022).

    ``z1`` and ``z2`` are the per-timestep representations of the overlapping segment
    of two crops, aligned so that ``z1[i, t]`` and ``z2[i, t]`` describe the same
    original timestep (see :func:`tsai_ssl.augment.overlapping_crops`).  At every level
    of a hierarchy obtained by max-pooling both along time with kernel 2 (odd
    trailing steps dropped) until one step is left, the loss adds

    * ``alpha`` times the *instance-wise* contrastive loss: at every timestep ``t``,
      anchor ``z1[i, t]`` has positive ``z2[i, t]`` and negatives ``z1[j, t]``,
      ``z2[j, t]`` for ``j != i`` (and symmetrically for ``z2``);
    * ``1 - alpha`` times the *temporal* contrastive loss (only from level
      ``temporal_unit`` on, and not at the final length-1 level): within series
      ``i``, anchor ``z1[i, t]`` has positive ``z2[i, t]`` and negatives ``z1[i, t']``,
      ``z2[i, t']`` for ``t' != t``;

    each an InfoNCE loss on raw dot products (no normalisation, no temperature, as in
    TS2Vec) averaged over the anchors of both views; the sum is divided by the number
    of levels.  A loss term with no negatives (batch of one series, one timestep) is 0.

    Mask semantics (``mask[i, t] = False``: step ``t`` of series ``i`` is padding, e.g.
    because the overlaps of the series have different lengths): an invalid step is
    neither an anchor, nor a positive, nor a negative; it is excluded from the
    softmax denominators and from the averages.  Anchors left with no valid negative
    (a timestep where only one series is valid, a series with one valid step) carry
    no contrastive signal and are excluded from the averages too.  Pooling ignores
    invalid steps (a pooled step is valid if any of its two inputs is, and takes the
    max over the valid ones).  With ``mask=None`` (or all ``True``) the loss equals
    TS2Vec's.

    Cost: the temporal term builds ``(B, 2T, 2T)`` similarities; crop long series
    first (TS2Vec caps training length at 3000), or pass ``anchors``: at every level
    longer than that, the temporal term scores a uniform sample of ``anchors`` timesteps
    (the same for every series and both views) against all valid steps, ``(B, 2K, 2T)``,
    and averages over the sampled valid anchors. Each step is sampled with the same
    probability, so the sampled mean estimates the full mean (exactly so in expectation
    when every step is valid); the instance-wise term is always exact.

    Args:
        z1, z2: ``(B, T, d)`` aligned representations.
        alpha: weight of the instance-wise term (``1 - alpha`` for the temporal term).
        temporal_unit: first hierarchy level (0 = original resolution) with a temporal term.
        mask: optional ``(B, T)`` bool, ``True`` at valid timesteps.
        anchors: temporal anchors sampled per level (None: every step, the exact loss).
        generator: for the anchor sample (validation: a fixed one, so losses compare across epochs).

    Returns:
        Scalar loss.
    """
    if z1.shape != z2.shape or z1.ndim != 3:
        raise ValueError(f"z1 and z2 must both be (B, T, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if anchors is not None and anchors < 1:
        raise ValueError(f"anchors must be >= 1 or None, got {anchors}")
    if mask is None:
        mask = torch.ones(z1.shape[:2], dtype=torch.bool, device=z1.device)
    elif mask.shape != z1.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(z1.shape[:2])}")
    mask = mask.to(device=z1.device, dtype=torch.bool)

    loss = z1.new_zeros(())
    levels = 0
    while True:
        if alpha != 0:
            loss = loss + alpha * _instance_loss(z1, z2, mask)
        if z1.shape[1] <= 1:
            levels += 1
            break
        if levels >= temporal_unit and alpha != 1:
            loss = loss + (1 - alpha) * _temporal_loss(z1, z2, mask, anchors, generator)
        levels += 1
        z1, m1 = _masked_max_pool(z1, mask)
        z2, _ = _masked_max_pool(z2, mask)
        mask = m1
    return loss / levels


class HierarchicalContrastiveLoss(nn.Module):
    """Module wrapper of :func:`hierarchical_contrastive_loss`: ``loss(z1, z2, mask=None)``.

    Args:
        alpha: weight of the instance-wise term.
        temporal_unit: first hierarchy level with a temporal term.
    """

    def __init__(self, alpha: float = 0.5, temporal_unit: int = 0):
        super().__init__()
        self.alpha, self.temporal_unit = alpha, temporal_unit

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return hierarchical_contrastive_loss(z1, z2, self.alpha, self.temporal_unit, mask)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temporal_unit={self.temporal_unit}"


# ----------------------------------------------------------------------------- MoCo

def moco_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor | None = None,
    temperature: float = 0.2,
    exclude: torch.Tensor | None = None,
    distributed: bool | None = None,
    group=None,
) -> torch.Tensor:
    """InfoNCE of MoCo: each query against its own key, the batch's other keys and a queue of earlier keys.

    With ``q``, ``k`` and the queue L2-normalised (here) and ``s(a, b) = a . b / temperature``, the loss of query
    ``i`` is ``-log(exp(s(q_i, k_i)) / (sum_j exp(s(q_i, k_j)) + sum_m exp(s(q_i, queue_m))))``, ``j`` running over the
    keys of the batch (of every process under DDP: more negatives for free, as in MoCo v3) and ``m`` over the queue
    (MoCo v1/v2: negatives that do not depend on the batch size). The mean over the local queries is returned.

    The keys come from a teacher and carry no gradient (detached here), so a process's loss depends on its own queries
    only: for equal shards the mean of the processes' losses is the single-process loss on the concatenated batch, and
    DDP's gradient averaging makes the update exact without the rescaling `nt_xent` needs.

    Args:
        q: the student's queries ``(n, d)``.
        k: the teacher's keys ``(n, d)``; row ``i`` is the other view of the series of ``q[i]``.
        queue: keys of earlier batches ``(K, d)``, or None / ``K = 0``: the batch's keys only.
        temperature: softmax temperature ``> 0`` (MoCo v2: 0.2).
        exclude: bool ``(n, K)``, True where queue entry ``m`` is no negative of query ``i`` (an older key of the
            same series: on a small data set the queue holds several), or None.
        distributed: use the keys of all processes; None (default): when a process group of size > 1 exists.
        group: process group (default: the world).

    Returns:
        Scalar loss.

    Example:
        ```python
        q, k, queue = torch.randn(8, 128), torch.randn(8, 128), torch.randn(4096, 128)
        loss = moco_info_nce(q, k, queue, temperature=0.2)
        ```
    """
    if q.shape != k.shape or q.ndim != 2:
        raise ValueError(f"q and k must both be (n, d), got {tuple(q.shape)} and {tuple(k.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if queue is not None and queue.numel() and (queue.ndim != 2 or queue.shape[1] != q.shape[1]):
        raise ValueError(f"queue must be (K, {q.shape[1]}), got {tuple(queue.shape)}")
    world = _dist_world_size(group)
    if distributed is None:
        distributed = world > 1
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    keys, offset = (gather_no_grad(k, group), dist.get_rank(group) * q.shape[0]) if distributed and world > 1 else (k, 0)
    n_batch = keys.shape[0]
    if queue is not None and queue.numel():
        keys = torch.cat([keys, F.normalize(queue.detach().to(keys.dtype), dim=1)], dim=0)
    logits = q @ keys.T / temperature                                   # (n, N + K)
    if exclude is not None and keys.shape[0] > n_batch:
        if exclude.shape != (q.shape[0], keys.shape[0] - n_batch):
            raise ValueError(f"exclude must be (n, K) = {(q.shape[0], keys.shape[0] - n_batch)}, got {tuple(exclude.shape)}")
        logits = torch.cat([logits[:, :n_batch], logits[:, n_batch:].masked_fill(exclude, float("-inf"))], dim=1)
    target = torch.arange(q.shape[0], device=q.device) + offset         # own key's column
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # exp of 1/temperature-scaled logits: not in half precision
    return F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------- BYOL

def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss ``2 - 2 cos(p_i, z_i)`` averaged over rows (the squared distance of the L2-normalised vectors).

    Args:
        p: the student's predictions ``(n, d)``.
        z: the teacher's projections ``(n, d)`` (targets: detached here).

    Returns:
        Scalar loss in ``[0, 4]``.

    Example:
        ```python
        loss = byol_loss(torch.randn(8, 128), torch.randn(8, 128))
        ```
    """
    if p.shape != z.shape or p.ndim != 2:
        raise ValueError(f"p and z must both be (n, d), got {tuple(p.shape)} and {tuple(z.shape)}")
    if p.dtype in (torch.float16, torch.bfloat16):
        p, z = p.float(), z.float()
    return (2 - 2 * F.cosine_similarity(p, z.detach().to(p.dtype), dim=1)).mean()
