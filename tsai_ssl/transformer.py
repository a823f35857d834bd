"""tsai's Transformer classifiers `TSTPlus` and `TSiTPlus` as tsai-ssl backbones: any length, padding masks in the attention.

Both take inputs of exactly the ``seq_len`` they were built with: their positional encoding is a learnt
``(Q, d_model)`` table. When ``seq_len > max_seq_len`` a TSTPlus first embeds patches of ``k`` steps with a strided
convolution (``Q = max_seq_len`` positions); a TSiTPlus (a ViT) has one position per step, and optionally a class
token in front. Pretext tasks crop series and batch varying lengths, so:

* every batch is right-padded to ``seq_len`` (zeros) and the padded positions reach the attention as tsai's own
  ``key_padding_mask`` (TSTPlus takes it as input; a TSiTPlus's encoder has no argument for it, so forward
  pre-hooks hand it to each attention layer, `AttentionMasks`). A position is padding when none of its ``k`` steps
  is real; tsai's centring pad on the left counts as real: it is the same for every series, and a causal row must
  keep one key;
* the features of position ``q`` are repeated for its ``k`` steps and cropped to the input's length, so the backbone
  returns per-step features ``(bs, d_model, L)`` like a CNN's (a whole patch shares one feature vector);
* next-step prediction runs with a causal attention mask (``attn_mask``, same parameters): the output at step ``t``
  then depends on steps up to the end of ``t``'s patch, at most ``k - 1`` steps ahead (`causal_reach`), and with
  ``k = 1`` on ``x[..., :t+1]`` only.

The padding is batch-independent by construction: a series is always padded to ``seq_len``, whatever its batch.
`tsai_ssl.IgnorePadding` does the same for the classifier (training, validation, `get_preds` on `test_dl`), so a
Transformer classifier takes variable-length batches. Cost: the backbone runs only the positions a batch reaches
(the rest would be masked keys), so a batch of short series is cheap; the classifier (tsai's own forward) always runs
all ``Q``. For long series TSTPlus's ``max_seq_len`` (512 by default) is the knob; a TSiTPlus attends over every step.
Causal attention assumes right padding (a series' first step is real), as every loader of tsai-ssl makes.

Not supported (`split_backbone` and `input_spec` say why): TSTPlus built with convolution keyword arguments, TSiTPlus
with a tokenizer, feature extractor or categorical embeddings (their own input encodings), PatchTST (a forecaster,
no classifier to load into), and tsai's other Transformers (TST, TSPerceiver, ...).
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Backbone
from .padding import active_owner, contexts_over

__all__ = ['InputSpec', 'input_spec', 'pad_to_spec', 'TransformerBackbone', 'causal_attention', 'AttentionMasks']


@dataclass(frozen=True)
class InputSpec:
    "What a Transformer takes: ``seq_len`` steps, embedded ``patch`` at a time into ``n_pos`` positions."
    seq_len: int    # S: input steps the classifier was built for
    patch: int      # k: steps per attention position (1: one position per step)
    pad_left: int   # steps tsai pads on the left before patching (centres S in k * n_pos)
    n_pos: int      # Q: attention positions (rows of the positional encoding)
    kind: str = 'TSTPlus'   # 'TSTPlus' (takes (x, key_padding_mask)) or 'TSiTPlus' (masks through `AttentionMasks`)
    token: bool = False     # TSiTPlus: a class token in front of the positions


_BACKBONES = {'_TSTBackbone': 'TSTPlus', '_TSiTBackbone': 'TSiTPlus'}


def _encoder(model: nn.Module) -> nn.Module | None:
    "The backbone module of a TSTPlus / TSiTPlus (or that backbone itself); None for any other model."
    if type(model).__name__ in _BACKBONES: return model
    if type(model).__name__ in _BACKBONES.values(): return model.backbone
    return None


def _tsit_spec(tsit: nn.Module) -> InputSpec:
    own = [n for n in ('to_cat_embed', 'tokenizer', 'feature_extractor') if not isinstance(getattr(tsit, n), nn.Identity)]
    if own or not tsit.use_pe:
        raise TypeError(f"This TSiTPlus has its own input encoding ({', '.join(own) or 'use_pe=False'}); tsai-ssl "
                        'supports the default one (a linear projection of each step and a learnt positional '
                        'embedding). Build it without tokenizer, token_size, feature_extractor or n_cat_embeds, or '
                        'use TSTPlus, whose max_seq_len embeds patches of long series.')
    S = int(tsit.pos_embed.shape[1])
    return InputSpec(S, 1, 0, S, kind='TSiTPlus', token=bool(tsit.use_token))


def input_spec(model: nn.Module) -> InputSpec | None:
    """The `InputSpec` of a `TSTPlus` or `TSiTPlus` (or its backbone, or a `TransformerBackbone`); None for other models.

    Raises `TypeError` for an input encoding tsai-ssl does not support: a TSTPlus with a user-configured convolution
    (``TSTPlus(**conv_kwargs)``), a TSiTPlus with a tokenizer, feature extractor or categorical embeddings.

    Example:
        ```python
        from tsai.models.TSTPlus import TSTPlus
        input_spec(TSTPlus(1, 5, seq_len=1000))     # InputSpec(seq_len=1000, patch=2, pad_left=12, n_pos=512)
        ```
    """
    if isinstance(model, TransformerBackbone): return model.spec
    tst = _encoder(model)
    if tst is None: return None
    if _BACKBONES[type(tst).__name__] == 'TSiTPlus': return _tsit_spec(tst)
    Q = int(tst.seq_len)
    if isinstance(tst.W_P, nn.Linear): return InputSpec(Q, 1, 0, Q)
    parts = list(tst.W_P.children()) if isinstance(tst.W_P, nn.Sequential) else []
    if (len(parts) == 2 and isinstance(parts[0], nn.ConstantPad1d) and isinstance(parts[1], nn.Conv1d)
            and parts[1].kernel_size == parts[1].stride and parts[1].padding in ((0,), 0)):
        k = parts[1].kernel_size[0]
        left, right = parts[0].padding
        return InputSpec(Q * k - left - right, k, left, Q)
    raise TypeError('This TSTPlus embeds its input with a user-configured convolution (TSTPlus(..., **conv_kwargs)); '
                    'tsai-ssl supports the default encodings only (one position per step, or patches when '
                    'seq_len > max_seq_len). Build it without the convolution keyword arguments.')


def pad_to_spec(x: torch.Tensor, pad_mask: torch.Tensor | None, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (bs, C, L)`` right-padded with zeros to ``spec.seq_len``, and the real mask of the attention positions.

    Returns ``(x (bs, C, S), pos_real (bs, Q))``: ``pos_real`` is False at positions holding no real step (tsai's
    ``key_padding_mask`` is its negation). ``pad_mask (bs, L)`` is True at real steps (None: all real).
    Raises `ValueError` when ``L > S``.
    """
    bs, C, L = x.shape
    S, k = spec.seq_len, spec.patch
    if L > S:
        raise ValueError(f'A batch of {L} steps reached a {spec.kind} built for seq_len={S}: it takes at most seq_len '
                         f'steps. Build it with seq_len >= the longest series (arch_config seq_len={L} or more; '
                         "TSTPlus's max_seq_len bounds the attention cost) or crop the series to at most "
                         f'{S} steps (max_len={S}).')
    real = torch.ones(bs, L, dtype=torch.bool, device=x.device) if pad_mask is None else pad_mask.to(x.device)
    x = F.pad(x.masked_fill(~real[:, None], 0.), (0, S - L))
    real = F.pad(real, (0, S - L), value=False)
    if k == 1: return x, real
    # the left pad counts as real (identical for every series); the right one as padding
    right = spec.n_pos * k - S - spec.pad_left
    real = F.pad(F.pad(real, (spec.pad_left, 0), value=True), (0, right), value=False)
    return x, real.view(bs, spec.n_pos, k).any(-1)


def _positions(spec: InputSpec, L: int, device) -> torch.Tensor:
    "The attention position of each of the first `L` input steps."
    return torch.div(torch.arange(L, device=device) + spec.pad_left, spec.patch, rounding_mode='floor')


class TransformerBackbone(Backbone):
    """A `TSTPlus`'s or `TSiTPlus`'s backbone taking any length up to its ``seq_len``; per-step features ``(bs, d_model, L)``.

    Built by `split_backbone`; shares the classifier's ``backbone`` module, so state_dict keys are the classifier's.
    The padding mask of the forward comes from the `tsai_ssl.padding.PaddingAware` context over it (a pretext task's
    `PretextModel` sets it); without one, every step of the input is real. Inside the context, ``BatchNorm`` layers of
    the encoder take their batch statistics over real positions only.

    Example:
        ```python
        from tsai.models.TSTPlus import TSTPlus
        bb = split_backbone(TSTPlus(1, 5, seq_len=1024))   # a TransformerBackbone: 512 patches of 2 steps
        h = bb(torch.randn(8, 1, 300))               # (8, 128, 300): padded to 1024 inside, masked in attention
        ```
    """

    takes_pad_mask = True  # `PaddingAware` hands this module its mask (see tsai_ssl.padding)

    def __init__(self, model: nn.Module, arch: str = 'TSTPlus'):
        super().__init__({'backbone': _encoder(model)}, arch=arch)
        self.spec = input_spec(model)
        self.nf = _d_model(self.backbone)
        self.causal_attention = False

    @property
    def causal_reach(self) -> int | None:
        "With causal attention: how many steps ahead an output step sees at most (``patch - 1``); None otherwise."
        return self.spec.patch - 1 if self.causal_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        L = x.shape[-1]
        pa = active_owner(self)
        x, pos_real = pad_to_spec(x, pa._mask_for(x) if pa is not None else None, spec)
        # positions after the batch's last step are padding for every series: leave them out (exact, as they are
        # masked keys), so a batch of short series costs what its length needs, not seq_len
        n = min((L - 1 + spec.pad_left) // spec.patch + 1, spec.n_pos)
        saved_mask = pa.pad_mask if pa is not None else None
        if pa is not None: pa.pad_mask = pos_real[:, :n]  # a TSTPlus's BatchNorm: statistics over real positions
        try:
            run = _tsit_forward if spec.kind == 'TSiTPlus' else _tst_forward
            z = run(self.backbone, x, ~pos_real[:, :n], spec, self.causal_attention)  # (bs, d_model, n)
        finally:
            if pa is not None: pa.pad_mask = saved_mask
        return z[..., _positions(spec, L, z.device)]  # (bs, d_model, L)


# tsai's own forwards run every position of seq_len; these two are the same computations (tsai 1.0.1, checked
# against them in the tests) on the first `n` positions only
def _tst_forward(tst: nn.Module, x: torch.Tensor, kpm: torch.Tensor, spec: InputSpec, causal: bool) -> torch.Tensor:
    "`_TSTBackbone.forward((x, key_padding_mask))` on the first ``n = kpm.shape[1]`` positions."
    n = kpm.shape[1]
    u = tst.W_P(x).transpose(2, 1) if tst.new_q_len else tst.W_P(x.transpose(2, 1))  # (bs, Q, d_model)
    u = tst.dropout(u[:, :n] + tst.W_pos[:n])
    am = tst.attn_mask[..., :n, :n] if tst.attn_mask is not None else None  # a user's (Q, Q) mask
    if causal: am = _merge_causal(am, _causal_mask(n, x.device))
    z = tst.encoder(u, key_padding_mask=kpm, attn_mask=am)  # (bs, n, d_model)
    return tst.transpose(z) * ~kpm[:, None]  # (bs, d_model, n), padded positions zeroed as tsai does


def _tsit_forward(tsit: nn.Module, x: torch.Tensor, kpm: torch.Tensor, spec: InputSpec, causal: bool) -> torch.Tensor:
    "`_TSiTBackbone.forward(x)` on the first ``n = kpm.shape[1]`` positions, its attention masked; no class token out."
    n = kpm.shape[1]
    u = tsit.linear_proj(tsit.transpose(x[..., :n])) + tsit.pos_embed[:, :n]  # (bs, n, d_model)
    if spec.token: u = torch.cat((tsit.cls_token.expand(u.shape[0], -1, -1), u), dim=1)
    with AttentionMasks(tsit, causal=causal) as am:
        am.key_padding_mask = _with_token(kpm, spec)
        z = tsit.encoder(tsit.emb_dropout(u))
    return z.transpose(1, 2)[..., int(spec.token):]  # (bs, d_model, n)


def _causal_mask(n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)  # True: the key comes after the query


def _merge_causal(am: torch.Tensor | None, causal: torch.Tensor) -> torch.Tensor:
    "A model's own attention mask (bool: True = masked, or additive float) with the causal mask added."
    if am is None: return causal
    if am.dtype == torch.bool: return am | causal
    return am.masked_fill(causal, float('-inf'))


def _with_token(key_padding_mask: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    return F.pad(key_padding_mask, (1, 0), value=False) if spec.token else key_padding_mask


def _d_model(enc: nn.Module) -> int:
    "The width of a Transformer backbone: the output size of its input encoding (its first projection)."
    for m in enc.modules():
        if isinstance(m, nn.Linear): return m.out_features
        if isinstance(m, nn.Conv1d): return m.out_channels
    raise TypeError('cannot find the width of this Transformer')


# hooked attention layer -> the entered `AttentionMasks` contexts hooking it (`tsai_ssl.memory` replays them)
_ACTIVE: 'weakref.WeakKeyDictionary[nn.Module, list[AttentionMasks]]' = weakref.WeakKeyDictionary()


class AttentionMasks:
    """Hands every tsai ``MultiheadAttention`` inside `module` a key padding mask and, with ``causal``, a causal mask,
    through forward pre-hooks (a TSiTPlus's encoder layers call their attention without them). A context manager;
    set ``key_padding_mask`` (bool ``(bs, positions)``, True = padded; None: no mask) before each forward.
    A query whose keys would all be masked (LSA masks each position's own key: a series with one real position)
    keeps its own key, so no attention row is NaN. `tsai_ssl.memory.checkpoint_blocks` replays the masks of the
    forward when it recomputes a block.

    Example:
        ```python
        from tsai.models.TSiTPlus import TSiTPlus
        model = TSiTPlus(1, 2, seq_len=64, depth=2, verbose=False)
        with AttentionMasks(model) as am:
            am.key_padding_mask = torch.arange(64)[None].repeat(4, 1) >= 40   # the last 24 steps padded
            out = model(torch.randn(4, 1, 64))
        ```
    """

    def __init__(self, module: nn.Module, causal: bool = False):
        self.module, self.causal = module, causal
        self.key_padding_mask: torch.Tensor | None = None
        self._handles, self._layers = [], []

    def __enter__(self) -> 'AttentionMasks':
        for m in self.module.modules():
            if type(m).__name__ == 'MultiheadAttention' and not isinstance(m, nn.MultiheadAttention):
                self._handles.append(m.register_forward_pre_hook(self._hook, with_kwargs=True))
                _ACTIVE.setdefault(m, []).append(self); self._layers.append(m)
        return self

    def __exit__(self, *exc):
        for h in self._handles: h.remove()
        for m in self._layers:
            owners = _ACTIVE.get(m, [])
            if self in owners: owners.remove(self)
            if not owners: _ACTIVE.pop(m, None)
        self._handles, self._layers, self.key_padding_mask = [], [], None
        return False

    def _hook(self, mod, args, kwargs):
        q = args[0] if args else kwargs['Q']  # (bs, positions, d_model)
        bs, n = q.shape[:2]
        kpm = self.key_padding_mask
        if kpm is not None and kpm.shape != (bs, n): kpm = None  # not this input's positions
        am = kwargs.get('attn_mask')
        if am is not None and am.shape[-1] != n: am = am[..., :n, :n]  # LSA's mask, built for every position
        if self.causal: am = _merge_causal(am, _causal_mask(n, q.device))
        if kpm is None and am is kwargs.get('attn_mask'): return None
        if am is not None and am.dtype == torch.bool:  # one mask (bs, 1, n, n), every query keeping a key
            full = am.reshape(-1, n, n).expand(bs, n, n) if am.numel() == n * n else am.reshape(bs, n, n)
            if kpm is not None: full = full | kpm[:, None, :]
            lone = full.all(-1)  # (bs, n): queries without a key keep their own
            full = full & ~(lone[:, :, None] & torch.eye(n, dtype=torch.bool, device=q.device))
            return args, {**kwargs, 'key_padding_mask': None, 'attn_mask': full[:, None]}
        return args, {**kwargs, 'key_padding_mask': kpm if kpm is not None else kwargs.get('key_padding_mask'),
                      'attn_mask': am}


def attention_masks_over(block: nn.Module) -> list['AttentionMasks']:
    "The entered `AttentionMasks` contexts hooking attention layers inside `block`."
    return contexts_over(block, _ACTIVE)


@contextlib.contextmanager
def causal_attention(backbone: TransformerBackbone) -> Iterator[TransformerBackbone]:
    """Inside the context the backbone's attention is causal (no position attends to a later one); restored on exit.

    Example:
        ```python
        from tsai.models.TSTPlus import TSTPlus
        bb = split_backbone(TSTPlus(1, 5, seq_len=96))     # one attention position per step
        with causal_attention(bb):
            check_causal(bb, c_in=1)                 # h[..., t] depends on x[..., :t+1] only
        ```
    """
    was = backbone.causal_attention
    backbone.causal_attention = True
    try: yield backbone
    finally: backbone.causal_attention = was
