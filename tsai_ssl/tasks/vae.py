"""A variational autoencoder as a pretext task: the backbone encodes a series to a Gaussian latent, a small decoder
reconstructs the series from it.

    learn = ts_learner(dls_unlabeled, ResNetPlus, cbs=VAEPretrain(n_values=41, save_as='ssl_vae'))
    learn.fit_one_cycle(20, 1e-3)
    clf = ts_learner(dls_labeled, ResNetPlus, metrics=accuracy)
    clf.load('ssl_vae', strict=False, with_opt=False)

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. Choices, and why:

* **One latent per series**, from the padding-aware mean of the backbone's features over the real steps (the
  pooling of tsai's average-pool heads), not one per step: a per-step latent next to the step it encodes can copy its
  input, and what the classifier needs is a summary of the whole series.
* **The decoder sees only the latent and where it is in the series** (Fourier features of the relative position
  ``t / (n - 1)``, so every length decodes on the same scale), through a per-step MLP. It cannot look at neighbouring
  values, so everything it reconstructs has to come through the latent: no autoregressive decoder to make the
  latent unnecessary (the usual cause of posterior collapse).
* **Likelihood**: 41-way categorical over the exact integers for count data (``n_values=41``, targets from the raw
  input as in `MaskedValuePretrain`), Gaussian with a learned per-step scale for real values (``n_values=None``, in
  the model's input scale).
* **Loss**: the negative ELBO per real value, ``(sum of per-value NLL + beta * KL) / real values``, padded steps
  excluded. ``beta`` rises linearly from 0 over the first ``kl_warmup`` of the fit (KL annealing, Bowman et al.
  2016), and each latent dimension's KL counts at least ``free_bits`` nats (Kingma et al. 2016): two guards against
  posterior collapse. Validation uses the full ``beta`` and the posterior mean (and still counts the free bits), so
  its loss compares across epochs; with ``free_bits > 0`` it bounds the negative ELBO from above rather than equals it.
* Metrics: ``recon_nll`` (per value) and ``kl`` (nats per series); a ``kl`` near 0 means the latent is unused.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import masked_mean
from .base import CountMetric, PretextTask
from .targets import check_n_values

__all__ = ['VAEPretrain', 'VAEHead', 'gaussian_kl', 'negative_elbo']


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    "KL(N(mu, exp(logvar)) || N(0, 1)) per dimension, ``(bs, d)``: ``(mu^2 + exp(logvar) - 1 - logvar) / 2``."
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def negative_elbo(nll: torch.Tensor, kl: torch.Tensor, n_real: torch.Tensor | float, beta: float = 1.,
                  free_bits: float = 0.) -> torch.Tensor:
    """``(sum(nll) + beta * bs * sum_d max(mean_i kl[i, d], free_bits)) / n_real``: the negative ELBO per real value
    when ``beta=1`` and ``free_bits=0``.

    Args:
        nll: per-value negative log-likelihoods at the real steps (any shape; padded ones already 0).
        kl: per-series, per-dimension KL ``(bs, d)`` (`gaussian_kl`).
        n_real: the number of real (not padded) values the NLL sums over.
        beta: weight of the KL term.
        free_bits: the least KL, in nats, a latent dimension counts for (the batch mean per dimension, clamped).

    Example:
        ```python
        kl = gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4))      # 0: the prior itself
        negative_elbo(torch.ones(2, 10), kl, n_real=20)             # 1.0
        ```
    """
    per_dim = kl.mean(0)
    if free_bits > 0: per_dim = per_dim.clamp_min(free_bits)
    return (nll.sum() + beta * kl.shape[0] * per_dim.sum()) / n_real


def _positions(pad_mask: torch.Tensor | None, bs: int, L: int, n_freq: int, device) -> torch.Tensor:
    "Fourier features ``(bs, 2 n_freq, L)`` of each step's relative position t / (n - 1) in its own series."
    t = torch.arange(L, device=device, dtype=torch.float32)[None].expand(bs, L)
    n = (pad_mask.sum(1, keepdim=True) if pad_mask is not None else torch.full((bs, 1), L, device=device)).float()
    rel = t / (n - 1).clamp_min(1)
    k = torch.arange(1, n_freq + 1, device=device, dtype=torch.float32)
    ang = math.pi * rel[:, None] * k[None, :, None]  # (bs, n_freq, L): frequencies 1/2 .. n_freq/2 cycles per series
    return torch.cat([ang.sin(), ang.cos()], 1)


class VAEHead(nn.Module):
    """Encoder end (pooled features -> mean and log-variance) and decoder (latent + position -> per-step outputs).

    ``forward(h (bs, nf, L), pad_mask (bs, L) | None) -> (out (bs, n_out, L), mu (bs, d), logvar (bs, d))``: the latent
    is sampled in training, the mean in eval mode. ``decode(z (bs, d), pad_mask)`` for samples from the prior.
    ``n_out`` is ``c_in * n_values`` (categorical logits) or ``2 * c_in`` (Gaussian mean and log-scale)."""

    def __init__(self, nf: int, n_out: int, latent_dim: int = 16, hidden: int = 64, n_freq: int = 16):
        super().__init__()
        self.latent_dim, self.n_freq = latent_dim, n_freq
        self.to_latent = nn.Linear(nf, 2 * latent_dim)
        self.decoder = nn.Sequential(nn.Conv1d(latent_dim + 2 * n_freq, hidden, 1), nn.ReLU(),
                                     nn.Conv1d(hidden, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, n_out, 1))

    def decode(self, z: torch.Tensor, pad_mask: torch.Tensor | None, length: int | None = None) -> torch.Tensor:
        L = pad_mask.shape[1] if pad_mask is not None else length
        pos = _positions(pad_mask, z.shape[0], L, self.n_freq, z.device).to(z.dtype)
        return self.decoder(torch.cat([z[..., None].expand(-1, -1, L), pos], 1))

    def forward(self, h, pad_mask=None):
        mu, logvar = self.to_latent(masked_mean(h, pad_mask)).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z, pad_mask, h.shape[-1]), mu, logvar


class VAEPretrain(PretextTask):
    """fastai callback: variational-autoencoder pretraining of any backbone `split_backbone` supports. See the module
    docstring for the model and the loss.

    Args:
        n_values: number of integer values (categorical likelihood over 0..n_values-1), or None (Gaussian).
        latent_dim: size of the per-series latent.
        beta: weight of the KL term (1: the ELBO).
        kl_warmup: share of the fit over which beta rises linearly from 0 (0: no warm-up).
        free_bits: the least KL, in nats, each latent dimension counts for (0: none).
        hidden: width of the decoder.
        n_freq: Fourier frequencies of the position features.
        save_as: see `PretextTask`.
        save: see `PretextTask`.
        seed: see `PretextTask`.
        pad_aware: see `PretextTask`.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=VAEPretrain(n_values=41, save_as='ssl_vae'))
        learn.fit_one_cycle(10, 1e-3)
        ```
    """
    task_name, aliases, label = 'vae', ('variational-autoencoder',), 'VAE'
    epoch_cost = 1.15  # the decoder runs at every step: 1.05x a supervised step at 2048 steps, 1.23x at 8192

    def __init__(self, n_values: int | None = 41, latent_dim: int = 16, beta: float = 1., kl_warmup: float = 0.3,
                 free_bits: float = 0.1, hidden: int = 64, n_freq: int = 16, save_as: str | Path | None = None,
                 save: str = 'best', seed: int = 0, pad_aware: bool = True):
        super().__init__(save_as=save_as, save=save, seed=seed, pad_aware=pad_aware)
        if n_values is not None and n_values < 2: raise ValueError(f'n_values must be >= 2 or None, got {n_values}')
        if latent_dim < 1: raise ValueError(f'latent_dim must be >= 1, got {latent_dim}')
        if beta < 0 or free_bits < 0: raise ValueError('beta and free_bits must be >= 0')
        if not 0 <= kl_warmup <= 1: raise ValueError(f'kl_warmup must be in [0, 1], got {kl_warmup}')
        self.n_values, self.latent_dim, self.beta, self.kl_warmup = n_values, latent_dim, beta, kl_warmup
        self.free_bits, self.hidden, self.n_freq = free_bits, hidden, n_freq

    def make_head(self, nf, c_in):
        self.c_in = c_in
        n_out = c_in * self.n_values if self.n_values is not None else 2 * c_in
        return VAEHead(nf, n_out, self.latent_dim, self.hidden, self.n_freq)

    def make_batch(self, x, pad_mask, raw, generator):
        mask = pad_mask if pad_mask is not None else torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
        tgt = x if self.n_values is None else check_n_values(raw, pad_mask, self.n_values, self.series_index)
        return (x, pad_mask, mask), (tgt, mask)  # the head gets a mask always: it fixes the decoded length

    def current_beta(self) -> float:
        "beta at this point of the fit: warming up during training, the full value in validation."
        learn = getattr(self, 'learn', None)
        if self.kl_warmup == 0 or learn is None or not getattr(learn, 'training', False): return self.beta
        return self.beta * min(1., float(getattr(learn, 'pct_train', 1.)) / self.kl_warmup)

    def value_nll(self, out: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        "Per-value negative log-likelihood ``(bs, C, L)``, 0 at padded steps."
        out = out.float()
        if self.n_values is None:
            mu, log_scale = out.chunk(2, dim=1)
            log_scale = log_scale.clamp(-5, 5)
            nll = 0.5 * math.log(2 * math.pi) + log_scale + 0.5 * ((tgt.float() - mu) / log_scale.exp()).pow(2)
        else:
            logits = out.reshape(out.shape[0], -1, self.n_values, out.shape[-1]).transpose(1, 2)  # (bs, V, C, L)
            nll = F.cross_entropy(logits, tgt.masked_fill(~mask[:, None], 0), reduction='none')
        return nll * mask[:, None]

    def loss(self, pred, tgt, mask):
        out, mu, logvar = pred
        nll = self.value_nll(out, tgt, mask)
        kl = gaussian_kl(mu.float(), logvar.float())
        return negative_elbo(nll, kl, (mask.sum() * nll.shape[1]).clamp_min(1), self.current_beta(), self.free_bits)

    def metrics(self):
        def recon(pred, tgt, mask):
            return self.value_nll(pred[0], tgt, mask).sum(), mask.sum() * tgt.shape[1]
        def kl(pred, tgt, mask):
            return gaussian_kl(pred[1].float(), pred[2].float()).sum(), pred[1].shape[0]
        return [CountMetric(recon, 'recon_nll'), CountMetric(kl, 'kl')]

    # -- looking at it -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int = 4, length: int = 512, seed: int = 0) -> torch.Tensor:
        """`n` series of `length` steps decoded from latents drawn from the prior: ``(n, C, length)`` (the most likely
        integer per step, or the Gaussian mean, in the model's input scale)."""
        if self.pretext_head is None: raise RuntimeError('The VAE head does not exist yet: fit the Learner with this callback first.')
        head = self.pretext_head
        p = next(head.parameters())
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed)).to(p)
        was = head.training
        head.eval()
        try: out = head.decode(z, None, length)
        finally: head.train(was)
        return self._point(out)

    def _point(self, out: torch.Tensor) -> torch.Tensor:
        if self.n_values is None: return out.chunk(2, dim=1)[0]
        return out.reshape(out.shape[0], -1, self.n_values, out.shape[-1]).argmax(2).float()

    def show_reconstructions(self, n: int = 3, dl=None, n_samples: int = 3, path: str | Path | None = None):
        """Plot `n` validation series with their reconstructions (from the posterior mean), and `n_samples` series
        decoded from the prior. Returns the matplotlib figure; writes a PNG when `path` is given."""
        import matplotlib
        if path is not None: matplotlib.use('Agg', force=False)
        import matplotlib.pyplot as plt
        b = self.pretext_batch(dl=dl, n=n)
        rec = self._point(b['pred'][0]).cpu()
        target = b['yb'][0].float().cpu()
        mask = b['yb'][1].cpu()
        L = int(mask.sum(1).max())
        samples = self.sample(n_samples, length=L)
        fig, axes = plt.subplots(n + n_samples, 1, figsize=(10, 1.8 * (n + n_samples)), squeeze=False)
        for i in range(n):
            k = int(mask[i].sum())
            ax = axes[i, 0]
            ax.plot(target[i, 0, :k], lw=0.8, label='series')
            ax.plot(rec[i, 0, :k], lw=1.2, label='reconstruction')
            ax.set_title(f'validation series {i}: reconstruction from the latent mean', fontsize=9)
            if i == 0: ax.legend(fontsize=8, loc='upper right')
        for j in range(n_samples):
            ax = axes[n + j, 0]
            ax.plot(samples[j, 0].cpu(), lw=1.0, color='C2')
            ax.set_title(f'sample {j} from the prior ({L} steps)', fontsize=9)
        fig.tight_layout()
        if path is not None: fig.savefig(path, dpi=100)
        return fig
