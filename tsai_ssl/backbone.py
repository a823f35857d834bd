"""Backbone adapter: the per-timestep part of a classifier, a causal view of it, and padding-aware pooling.

`split_backbone(model)` returns a `Backbone`: a module that runs the classifier's own layers up to (not
including) global pooling and returns features ``(bs, nf, L)``. It *shares* the classifier's modules and
registers them under the classifier's own attribute names, so ``backbone.state_dict()`` keys are exactly
the classifier's keys for those tensors: pretrained weights load into a fresh classifier of the same
architecture with fastai's ``learn.load(name, strict=False, with_opt=False)``.

Supported: tsai models with ``.backbone``/``.head`` (ResNetPlus, InceptionTimePlus, XceptionTimePlus,
FCNPlus, ... as built by `ts_learner`), tsai's plain ResNet, FCN, InceptionTime, XceptionTime, ResCNN,
TCN, any ``nn.Sequential`` whose first global pooling layer ends the backbone, and any other module that
`torch.fx` can trace (the user story's ``encoder -> conv body -> mean over time -> linear``): the graph is
cut at the first global pooling over time. tsai's Transformers `TSTPlus` and `TSiTPlus` get a `tsai_ssl.transformer.TransformerBackbone`
(any length up to its seq_len, padding masks in the attention, causal attention for next-step prediction).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['Backbone', 'PretextModel', 'split_backbone', 'masked_mean', 'masked_max', 'causal', 'check_causal', 'lookahead', 'infer_c_in']

# tsai classifiers whose forward is "these children in order, then pooling and a linear layer"
_SEQUENTIAL_PARTS = {
    'ResNet': ['resblock1', 'resblock2', 'resblock3'],
    'FCN': ['convblock1', 'convblock2', 'convblock3'],
    'InceptionTime': ['inceptionblock'],
    'XceptionTime': ['block'],
    'TCN': ['tcn'],
}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
_POOL_NAMES = {'GAP1d', 'GACP1d', 'GAWP1d', 'AdaptiveConcatPool1d', 'GMP1d'}


class Backbone(nn.Module):
    """Runs a classifier's feature layers; child names are the classifier's, so state_dict keys match.

    Build it with `split_backbone`. ``nf`` is the number of output features per time step.

    Example:
        ```python
        bb = split_backbone(ResNetPlus(1, 5))      # a Backbone sharing the classifier's parameters
        h = bb(torch.randn(8, 1, 512))               # (8, bb.nf, 512): features at every step
        ```
    """

    def __init__(self, parts: dict[str, nn.Module] | None = None, graph: nn.Module | None = None, nf: int | None = None,
                 arch: str = ''):
        super().__init__()
        if (parts is None) == (graph is None): raise ValueError('Backbone needs either parts or a traced graph.')
        self._graph = [graph]  # a list, so the graph module is not registered twice under another name
        for name, m in (parts or dict(graph.named_children())).items(): self.add_module(name, m)
        self._order = list(parts) if parts is not None else None
        self.nf, self.arch = nf, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._order is None: return self._graph[0](x)
        for name in self._order: x = self._modules[name](x)
        return x


def infer_c_in(model: nn.Module) -> int:
    "Input channels of a model: those of its first 1-D convolution (or linear layer)."
    for m in model.modules():
        if isinstance(m, nn.Conv1d): return m.in_channels
        if isinstance(m, nn.Linear): return m.in_features
    raise ValueError(f'Cannot infer the input channels of {type(model).__name__}: pass c_in.')


def _is_global_pool(m: nn.Module) -> bool:
    return isinstance(m, _POOL_MODULES) or type(m).__name__ in _POOL_NAMES


def _sequential_parts(model: nn.Sequential) -> dict[str, nn.Module] | None:
    parts = {}
    for name, m in model.named_children():
        if _is_global_pool(m) or isinstance(m, (nn.Flatten, nn.Linear)): return parts or None
        parts[name] = m
    return None


def _traced_parts(model: nn.Module) -> nn.Module:
    "Trace `model` with torch.fx and cut the graph just before the first global pooling over time."
    import torch.fx as fx
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        raise TypeError(_structure_error(model, f'torch.fx could not trace it ({type(e).__name__}: {e})')) from e
    modules = dict(gm.named_modules())
    cut = None
    for node in gm.graph.nodes:
        if node.op == 'call_module' and _is_global_pool(modules[node.target]): cut = node
        elif node.op == 'call_function' and node.target in (F.adaptive_avg_pool1d, F.adaptive_max_pool1d, torch.mean,
                                                              torch.amax, torch.max, torch.sum): cut = node
        elif node.op == 'call_method' and node.target in ('mean', 'amax', 'max', 'sum'): cut = node
        if cut is not None: break
    if cut is None: raise TypeError(_structure_error(model, 'no global pooling over time was found in its forward'))
    feats = cut.args[0]
    out = next(n for n in gm.graph.nodes if n.op == 'output')
    out.args = (feats,)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    # keep only the modules the backbone uses, under their original names (fx shares the module objects)
    gm.delete_all_unused_submodules()
    return gm


def _structure_error(model: nn.Module, why: str) -> str:
    return (f'split_backbone cannot find the per-timestep backbone of {type(model).__name__}: {why}. Expected a tsai '
            'classifier (ResNet, ResNetPlus, InceptionTime(Plus), XceptionTime(Plus), FCN(Plus), TCN, ...), an nn.Sequential '
            '[feature layers..., global pooling, linear], or a module whose forward is traceable by torch.fx and pools over '
            'time (e.g. x.mean(-1) or nn.AdaptiveAvgPool1d) before its classification layer.')


# tsai's Transformer classifiers other than TSTPlus (`tsai_ssl.transformer`): no padding mask in their encoders
_TRANSFORMERS = {'TST', 'MultiTSTPlus', 'PatchTST', 'TSPerceiver', 'TransformerModel',
                 'TransformerRNNPlus', 'TransformerLSTMPlus', 'TransformerGRUPlus', 'gMLP', 'TSSequencerPlus'}


def split_backbone(model: nn.Module, c_in: int | None = None) -> Backbone:
    """The per-timestep feature extractor of `model`, sharing its parameters and parameter names.

    Returns a `Backbone` with ``backbone(x) -> (bs, nf, L)`` and ``backbone.nf``.
    Raises `TypeError` saying what structure is expected when the model is not supported.

    Example:
        ```python
        model = ResNetPlus(1, 5)
        bb = split_backbone(model)                   # bb.nf == 128 features per step
        assert set(bb.state_dict()) <= set(model.state_dict())   # same parameter names
        ```
    """
    name = getattr(model, '__name__', type(model).__name__)
    if isinstance(model, Backbone): return model
    if type(model).__name__ in ('TSTPlus', 'TSiTPlus'):
        from .transformer import TransformerBackbone
        bb = TransformerBackbone(model, arch=name)
        bb.training = model.training
        return bb
    if type(model).__name__ == 'PatchTST':
        raise TypeError("PatchTST is tsai's forecasting Transformer: its output is pred_dim future values per channel, "
                        'not class logits, so there is no PatchTST classifier for pretrained weights to load into (and '
                        'its attention takes no padding mask). For patches of long series in a classifier use TSTPlus '
                        'with seq_len > max_seq_len (patches of ceil(seq_len / max_seq_len) steps).')
    if type(model).__name__ in _TRANSFORMERS:
        raise TypeError(f'{type(model).__name__} is one of tsai\'s Transformer classifiers that tsai-ssl does not '
                        'support: its encoder takes no padding mask and its positional encoding fixes the input '
                        'length, while the pretext tasks crop series and batch varying lengths (and next-step '
                        'prediction needs a causal attention mask). Use TSTPlus or TSiTPlus (padding masks in the '
                        'attention, causal attention; TSTPlus embeds patches of long series), or a CNN (ResNetPlus, '
                        'InceptionTimePlus, XceptionTimePlus, FCNPlus, TCN, or your own nn.Module).')
    if isinstance(getattr(model, 'backbone', None), nn.Module) and isinstance(getattr(model, 'head', None), nn.Module):
        bb = Backbone({'backbone': model.backbone}, arch=name)
    elif type(model).__name__ in _SEQUENTIAL_PARTS and all(hasattr(model, p) for p in _SEQUENTIAL_PARTS[type(model).__name__]):
        bb = Backbone({p: getattr(model, p) for p in _SEQUENTIAL_PARTS[type(model).__name__]}, arch=name)
    elif isinstance(model, nn.Sequential) and (parts := _sequential_parts(model)):
        bb = Backbone(parts, arch=name)
    else:
        bb = Backbone(graph=_traced_parts(model), arch=name)
    bb.training = model.training
    bb.nf = _infer_nf(bb, c_in or infer_c_in(model))
    return bb


@torch.no_grad()
def _infer_nf(bb: nn.Module, c_in: int, seq_len: int = 64) -> int:
    p = next(bb.parameters())
    with _eval_mode(bb):
        out = bb(torch.zeros(2, c_in, seq_len, device=p.device, dtype=p.dtype))
    if out.ndim != 3 or out.shape[-1] != seq_len:
        raise TypeError(f'The backbone of {bb.arch} returns shape {tuple(out.shape)} for input (2, {c_in}, {seq_len}); '
                        f'expected per-timestep features (2, nf, {seq_len}). Models that downsample time are not supported.')
    return out.shape[1]



class PretextModel(nn.Module):
    """Backbone + pretext head. The backbone's modules are registered under the classifier's names, so even a
    plain ``learn.save`` of this model loads into the classifier with ``strict=False`` (``ssl_head.*`` is ignored).

    ``forward(x (bs, C, L), pad_mask (bs, L) | None, *head_args) -> head(backbone(x), *head_args)``. With a
    `tsai_ssl.padding.PaddingAware` `pa` over the backbone, `pad_mask` (True = real step) is set on it for this forward only, so
    padded steps never reach a real step's features and BatchNorm statistics use real steps only.

    Example:
        ```python
        learn = ts_learner(dls_u, ResNetPlus, cbs=MaskedValuePretrain())
        learn.fit(1)                                  # during the fit learn.model is a PretextModel
        learn.model                                   # after it, the ResNetPlus again
        ```
    """

    def __init__(self, backbone: Backbone, head: nn.Module, pa=None):
        super().__init__()
        for name, m in backbone.named_children(): self.add_module(name, m)
        self.ssl_head = head
        self._backbone = [backbone]  # not registered again: its modules are the ones above
        self.pa = pa

    @property
    def backbone(self) -> Backbone: return self._backbone[0]

    def forward(self, x, pad_mask=None, *head_args):
        if self.pa is None: return self.ssl_head(self.backbone(x), *head_args)
        self.pa.pad_mask = pad_mask
        try: h = self.backbone(x)
        finally: self.pa.pad_mask = None  # a stale mask must never reach another caller of the backbone
        return self.ssl_head(h, *head_args)


@contextlib.contextmanager
def _eval_mode(m: nn.Module) -> Iterator[None]:
    "Eval mode inside; every submodule gets its own previous mode back (shared modules: never flip the classifier)."
    modes = [(mod, mod.training) for mod in m.modules()]
    m.eval()
    try: yield
    finally:
        for mod, was in modes: mod.training = was


# ----------------------------------------------------------------------------------------------------
# Padding-aware pooling
# ----------------------------------------------------------------------------------------------------
def _fit_mask(pad_mask: torch.Tensor, L: int) -> torch.Tensor:
    if pad_mask.shape[-1] == L: return pad_mask
    return F.interpolate(pad_mask[:, None].float(), size=L, mode='nearest')[:, 0] > 0.5


def masked_mean(h: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of ``h (bs, nf, L)`` using only real steps (``pad_mask (bs, L)`` True); plain mean if pad_mask is None.

    Example:
        ```python
        h = split_backbone(ResNetPlus(1, 5))(x)     # (bs, nf, L)
        z = masked_mean(h, pad_mask)                 # (bs, nf): the mean over each series' real steps
        ```
    """
    if pad_mask is None: return h.mean(-1)
    m = _fit_mask(pad_mask, h.shape[-1]).to(h.dtype)[:, None]
    return (h * m).sum(-1) / m.sum(-1).clamp_min(1)


def masked_max(h: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """Max over time of ``h (bs, nf, L)`` using only real steps.

    Example:
        ```python
        h = split_backbone(ResNetPlus(1, 5))(x)     # (bs, nf, L)
        z = masked_max(h, pad_mask)                  # (bs, nf), padded steps never win
        ```
    """
    if pad_mask is None: return h.amax(-1)
    m = _fit_mask(pad_mask, h.shape[-1])[:, None]
    return h.masked_fill(~m, torch.finfo(h.dtype).min).amax(-1)


# ----------------------------------------------------------------------------------------------------
# Causal view: same parameters, left-only padding
# ----------------------------------------------------------------------------------------------------
def _causal_conv(m: nn.Conv1d, total: int):
    def forward(x):
        return F.conv1d(F.pad(x, (total, 0)), m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    return forward


def _causal_pool(m: nn.Module, total: int):
    fill = float('-inf') if isinstance(m, nn.MaxPool1d) else 0.
    pool = F.max_pool1d if isinstance(m, nn.MaxPool1d) else F.avg_pool1d
    def forward(x):
        return pool(F.pad(x, (total, 0), value=fill), m.kernel_size, 1, 0)
    return forward


def _as_int(v) -> int: return v[0] if isinstance(v, (tuple, list)) else v


@contextlib.contextmanager
def causal(backbone: nn.Module) -> Iterator[nn.Module]:
    """Run `backbone` causally inside the context: every convolution and pooling layer pads on the left only.

    Parameters (names, shapes, values) are untouched, so what is learnt transfers to the ordinary
    classifier. Inside, the output at step t depends on ``x[..., :t+1]`` only (in eval mode; in train mode
    BatchNorm's batch statistics still pool over all steps). Restored on exit, also after an exception.
    Raises `NotImplementedError` for layers it cannot make causal (strided convolutions, global pooling
    or attention inside the backbone); `check_causal` verifies the result.

    Example:
        ```python
        bb = split_backbone(ResNetPlus(1, 5))
        with causal(bb):
            h = bb(x)                                # h[..., t] depends on x[..., :t+1] only (eval mode)
            check_causal(bb, c_in=1)                 # passes here; outside the context it raises (18 steps ahead)
        ```
    """
    from .transformer import TransformerBackbone, causal_attention
    if isinstance(backbone, TransformerBackbone):  # causal attention, same parameters
        if backbone.spec.patch > 1:
            raise NotImplementedError(f'This TSTPlus embeds patches of {backbone.spec.patch} steps (seq_len > '
                                      'max_seq_len), so a step\'s feature sees the rest of its patch: use '
                                      "causal='shift' (it predicts past the patch), or build it with max_seq_len >= seq_len.")
        with causal_attention(backbone): yield backbone
        return
    patched, pads = [], []
    try:
        for name, m in backbone.named_modules():
            kind = type(m).__name__
            if kind == 'CausalConv1d' or kind == 'Chomp1d': continue  # already causal (tsai)
            if isinstance(m, nn.Conv1d):
                k, d, s = _as_int(m.kernel_size), _as_int(m.dilation), _as_int(m.stride)
                need = d * (k - 1)
                have = need if m.padding == 'same' else 2 * _as_int(m.padding) if m.padding != 'valid' else 0
                if k == 1 and s == 1 and have == 0: continue
                if _in_chomped_block(backbone, name): continue
                if s != 1 or have != need:
                    raise NotImplementedError(f'{name}: Conv1d(kernel={k}, stride={s}, dilation={d}, padding={m.padding}) '
                                              'does not keep the length, so it has no causal equivalent with the same weights.')
                m.forward = _causal_conv(m, need); patched.append(m)
            elif kind == 'SameConv1d':
                c = m.conv1d_same
                m.forward = (lambda c, t: (lambda x: c(F.pad(x, (t, 0)))))(c, _as_int(c.dilation) * (_as_int(c.kernel_size) - 1))
                patched.append(m)
            elif isinstance(m, (nn.MaxPool1d, nn.AvgPool1d)):
                k, s, p = _as_int(m.kernel_size), _as_int(m.stride), _as_int(m.padding)
                if s != 1 or 2 * p != k - 1:
                    raise NotImplementedError(f'{name}: {kind}(kernel={k}, stride={s}, padding={p}) changes the length.')
                m.forward = _causal_pool(m, 2 * p); patched.append(m)
            elif isinstance(m, nn.ConstantPad1d):
                pads.append((m, m.padding)); m.padding = (m.padding[0] + m.padding[1], 0)
            elif _is_global_pool(m) or isinstance(m, nn.MultiheadAttention) or kind in ('SqueezeExciteBlock', 'SimpleSelfAttention'):
                raise NotImplementedError(f'{name}: {kind} mixes information across all time steps; next-step prediction '
                                          'cannot run this backbone causally (build the model without it, e.g. se=None, sa=False).')
        yield backbone
    finally:
        for m in patched: del m.forward
        for m, p in pads: m.padding = p


def _in_chomped_block(backbone: nn.Module, conv_name: str) -> bool:
    "tsai's TCN pads both sides and chomps the right: already causal, leave it alone."
    parent = backbone.get_submodule(conv_name.rsplit('.', 1)[0]) if '.' in conv_name else backbone
    return any(type(c).__name__ == 'Chomp1d' for c in parent.modules())


def lookahead(backbone: nn.Module, c_in: int, seq_len: int = 256, max_probe: int = 4096, seed: int = 0) -> int:
    """How far ahead the backbone sees: the largest ``j`` such that its output at step ``s`` depends on ``x[..., s+j]``
    (eval mode), measured with gradients of one output step on random inputs.

    For a stack of 'same'-padded convolutions this is the sum of the right paddings along the longest path (18 for
    ResNetPlus). The output at ``s`` is then a function of ``x[..., :s+j+1]`` only, which is what next-step
    prediction with ``causal='shift'`` uses. Raises `NotImplementedError` when the output does not keep the length or
    depends on every step (global pooling, squeeze-excite or attention inside the backbone).

    Example:
        ```python
        lookahead(split_backbone(ResNetPlus(1, 5)), c_in=1)   # 18: output step t has seen x[..., :t+19]
        ```
    """
    from .transformer import TransformerBackbone
    if isinstance(backbone, TransformerBackbone):  # exact, from its patch size
        if backbone.causal_reach is None:
            raise NotImplementedError('The attention of this Transformer sees every step: run it inside '
                                      'tsai_ssl.transformer.causal_attention (next-step prediction does).')
        return backbone.causal_reach
    p = next(backbone.parameters())
    g = torch.Generator().manual_seed(seed)
    L = seq_len
    with _eval_mode(backbone), torch.enable_grad():
        while True:
            x = torch.randn(4, c_in, L, generator=g).to(p).requires_grad_()
            y = backbone(x)
            if y.ndim != 3 or y.shape[-1] != L:
                raise NotImplementedError(f'The backbone returns shape {tuple(y.shape)} for input {tuple(x.shape)}: '
                                          'next-step prediction needs one output per step.')
            s = L // 2
            w = torch.randn(y[..., s].shape, generator=g).to(y)  # random weights: no cancellation between channels
            (grad,) = torch.autograd.grad((y[..., s] * w).sum(), x)
            reach = int(grad.abs().sum((0, 1)).nonzero().max()) - s
            if s + reach < L - 1: return max(reach, 0)
            if L >= max_probe:
                raise NotImplementedError(f'The output at a step depends on steps up to the end of a {L}-step input: a '
                                          'layer inside the backbone mixes information across all time steps (global '
                                          'pooling, squeeze-excite, attention). Next-step prediction needs a backbone '
                                          'that sees a bounded stretch ahead (e.g. build it with se=None, sa=False).')
            L *= 4


@torch.no_grad()
def check_causal(backbone: nn.Module, c_in: int, seq_len: int = 96, atol: float = 1e-5, seed: int = 0) -> None:
    """Raise `AssertionError` if, in eval mode, changing ``x[..., t+1:]`` changes the output at any step <= t.

    Example:
        ```python
        bb = split_backbone(ResNetPlus(1, 5))
        with causal(bb): check_causal(bb, c_in=1)    # passes: no output step sees a later input step
        ```
    """
    from .transformer import TransformerBackbone
    if isinstance(backbone, TransformerBackbone): seq_len = min(seq_len, backbone.spec.seq_len)  # takes no more
    p = next(backbone.parameters())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, seq_len, generator=g).to(p)
    with _eval_mode(backbone):
        y = backbone(x)
        for t in (seq_len // 4, seq_len // 2, seq_len - 2):
            x2 = x.clone()
            x2[..., t + 1:] = torch.randn(x2[..., t + 1:].shape, generator=g).to(p) * 3
            y2 = backbone(x2)
            err = (y2[..., :t + 1] - y[..., :t + 1]).abs().max().item()
            if err > atol:
                raise AssertionError(f'Future leak: changing steps > {t} changed outputs at steps <= {t} by {err:.2e}.')
