"tsai's TSTPlus and TSiTPlus as backbones: any length, padding masks in the attention, causal attention, every task, transfer."
import contextlib
import warnings

import numpy as np
import pytest
import torch
from conftest import ar_counts
from fastai.metrics import accuracy
from helpers import ALL_TASKS, fit_quiet, unlabeled_dls
from tsai.learner import ts_learner

from tsai_ssl import IgnorePadding, get_ssl_dls, load_pretrained
from tsai_ssl.backbone import causal, check_causal, lookahead, split_backbone
from tsai_ssl.padding import padding_aware
from tsai_ssl.transformer import InputSpec, TransformerBackbone, causal_attention, input_spec, pad_to_spec

with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    from tsai.models.TSiTPlus import TSiTPlus
    from tsai.models.TSTPlus import TSTPlus

SMALL = dict(d_model=32, n_heads=4, d_ff=64, n_layers=2)
SMALL_TSIT = dict(d_model=32, n_heads=4, depth=2, verbose=False)
KINDS = ['TSTPlus', 'TSiTPlus', 'TSiTPlus+token']


def tst(seq_len, max_seq_len=512, **kw):
    torch.manual_seed(0)
    return TSTPlus(1, 3, seq_len=seq_len, max_seq_len=max_seq_len, flatten=False, **{**SMALL, **kw})


def arch_kw(kind: str) -> tuple:
    "(class, config) of a small Transformer of `kind` for ts_learner."
    if kind == 'TSTPlus': return TSTPlus, dict(flatten=False, **SMALL)
    return TSiTPlus, dict(use_token=kind.endswith('token'), **SMALL_TSIT)


def small(kind: str, seq_len: int):
    torch.manual_seed(0)
    cls, kw = arch_kw(kind)
    return cls(1, 3, seq_len=seq_len, **kw)


@pytest.mark.parametrize('seq_len,max_seq_len,spec', [(200, 512, InputSpec(200, 1, 0, 200)),
                                                      (1000, 512, InputSpec(1000, 2, 12, 512)),
                                                      (300, 64, InputSpec(300, 5, 10, 64))])
def test_split_keeps_the_classifier_names_and_reads_the_input_spec(seq_len, max_seq_len, spec):
    model = tst(seq_len, max_seq_len)
    bb = split_backbone(model)
    assert isinstance(bb, TransformerBackbone) and bb.spec == spec == input_spec(model) and bb.nf == 32
    assert set(bb.state_dict()) <= set(model.state_dict()) and all(k.startswith('backbone.') for k in bb.state_dict())
    assert bb(torch.randn(3, 1, 77)).shape == (3, 32, 77)  # per-step features at any length up to seq_len


@pytest.mark.parametrize('token', [False, True])
def test_split_tsitplus_keeps_the_classifier_names(token):
    model = TSiTPlus(1, 3, seq_len=120, use_token=token, **SMALL_TSIT)
    bb = split_backbone(model)
    assert bb.spec == InputSpec(120, 1, 0, 120, kind='TSiTPlus', token=token) and bb.nf == 32
    assert set(bb.state_dict()) <= set(model.state_dict()) and 'backbone.pos_embed' in bb.state_dict()
    assert bb(torch.randn(3, 1, 77)).shape == (3, 32, 77)  # the class token's output is not a step's feature


def test_own_input_encodings_are_refused_with_the_reason():
    with pytest.raises(TypeError, match='own input encoding.*token_size'):
        split_backbone(TSiTPlus(1, 3, seq_len=120, token_size=4, **SMALL_TSIT))
    with pytest.raises(TypeError, match='user-configured convolution'):
        split_backbone(TSTPlus(1, 3, seq_len=120, kernel_size=3, padding=1, **SMALL))


def test_pad_to_spec_masks_right_padding_only():
    spec = InputSpec(seq_len=10, patch=4, pad_left=1, n_pos=3)  # positions hold steps [-1..2], [3..6], [7..10]
    x = torch.ones(2, 1, 6)
    pm = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    xs, pos_real = pad_to_spec(x, pm, spec)
    assert xs.shape == (2, 1, 10) and xs[1, 0, 2:].abs().sum() == 0 and xs[0, 0, :6].sum() == 6
    # series 0: steps 0..5 real -> positions 0, 1; series 1: steps 0..1 -> position 0 only (the left pad counts as real)
    assert pos_real.tolist() == [[True, True, False], [True, False, False]]
    with pytest.raises(ValueError, match='seq_len=10.*at most seq_len'):
        pad_to_spec(torch.ones(1, 1, 11), None, spec)


@pytest.mark.parametrize('make', [lambda: tst(200), lambda: tst(300, 64), lambda: small('TSiTPlus', 200),
                                  lambda: small('TSiTPlus+token', 200)], ids=['TSTPlus', 'TSTPlus-patches', 'TSiTPlus',
                                                                             'TSiTPlus+token'])
def test_a_series_gets_the_same_features_alone_and_in_a_padded_batch(make):
    bb = split_backbone(make()).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 180, generator=g)
    pm = torch.ones(4, 180, dtype=torch.bool); pm[0, 90:] = False
    x[0, :, 90:] = 7.  # garbage in the padded steps must not matter
    with torch.no_grad(), padding_aware(bb) as pa:
        pa.pad_mask = pm
        batched = bb(x)
    with torch.no_grad():
        alone = bb(x[:1, :, :90])
    assert torch.allclose(batched[0, :, :90], alone[0], atol=1e-5)
    with torch.no_grad():  # and padding is masked at all: garbage without the mask changes the features
        assert not torch.allclose(bb(x)[0, :, :90], alone[0], atol=1e-3)


@pytest.mark.parametrize('make', [lambda: tst(200), lambda: tst(300, 64), lambda: small('TSiTPlus', 200),
                                  lambda: small('TSiTPlus+token', 200),
                                  lambda: TSiTPlus(1, 3, seq_len=200, lsa=True, **SMALL_TSIT)],
                         ids=['TSTPlus', 'TSTPlus-patches', 'TSiTPlus', 'TSiTPlus+token', 'TSiTPlus-lsa'])
def test_features_are_tsais_own_at_full_length_and_the_classifiers_when_padded(make):
    """At seq_len the backbone computes what tsai's forward does with the same masks (it runs only the positions a
    batch needs, with its own code for that); on a padded batch, what the classifier computes under IgnorePadding."""
    from tsai_ssl.transformer import AttentionMasks, _with_token
    model = make().eval()
    bb, spec = split_backbone(model), input_spec(model)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1, spec.seq_len, generator=g)
    pos = torch.div(torch.arange(spec.seq_len) + spec.pad_left, spec.patch, rounding_mode='floor')
    _, pos_real = pad_to_spec(x, None, spec)  # patches of tsai's own right pad count as padding
    with torch.no_grad(), AttentionMasks(model) as am:
        if spec.kind == 'TSiTPlus':
            am.key_padding_mask = _with_token(~pos_real, spec)
            own = model.backbone(x)[..., int(spec.token):]
        else: own = model.backbone((x, ~pos_real))
        assert torch.allclose(bb(x), own[..., pos], atol=1e-5)
    pm = torch.ones(3, spec.seq_len - 40, dtype=torch.bool); pm[1, 60:] = False; pm[2, 20:] = False
    ip = IgnorePadding()
    ip._spec, ip._attn = spec, None
    xs = x[..., :spec.seq_len - 40]
    with torch.no_grad(), padding_aware(bb) as pa, AttentionMasks(model) as am:
        pa.pad_mask = pm
        h = bb(xs)
        if spec.kind == 'TSiTPlus': ip._attn = am
        inp, _ = ip.model_input(xs, pm)
        clf = model.backbone(inp)[..., int(spec.token):][..., pos[:xs.shape[-1]]]
    for i, n in enumerate(pm.sum(1).tolist()):
        assert torch.allclose(h[i, :, :n], clf[i, :, :n], atol=1e-5), i


def test_training_batchnorm_uses_real_positions_only():
    "Batch statistics of the encoder's BatchNorm: a padded batch gives the statistics of its real steps."
    bb = split_backbone(tst(120, norm='BatchNorm')).train()
    x = torch.randn(2, 1, 120, generator=torch.Generator().manual_seed(2))
    pm = torch.ones(2, 120, dtype=torch.bool); pm[1, 60:] = False
    x2 = x.clone(); x2[1, :, 60:] = 50.
    with padding_aware(bb) as pa:
        pa.pad_mask = pm
        a = bb(x)[:, :, :60]
        b = bb(x2)[:, :, :60]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('make', [lambda: tst(96), lambda: small('TSiTPlus', 96), lambda: small('TSiTPlus+token', 96),
                                  lambda: TSiTPlus(1, 3, seq_len=96, lsa=True, **SMALL_TSIT)],
                         ids=['TSTPlus', 'TSiTPlus', 'TSiTPlus+token', 'TSiTPlus-lsa'])
def test_causal_attention_has_no_future_leak_with_one_position_per_step(make):
    bb = split_backbone(make())
    with pytest.raises(AssertionError, match='Future leak'):
        check_causal(bb, c_in=1)  # plain attention sees every step
    with causal(bb):
        check_causal(bb, c_in=1)
        assert lookahead(bb, 1) == 0
        assert torch.isfinite(bb(torch.randn(2, 1, 96))).all()  # every query keeps a key (LSA masks the diagonal)
    assert bb.causal_attention is False  # restored
    with pytest.raises(NotImplementedError, match='causal_attention'):
        lookahead(bb, 1)


def test_patched_causal_attention_sees_exactly_the_rest_of_the_patch():
    "With patches of k steps, output step t depends on x up to the end of t's patch: at most k - 1 ahead, and tight."
    bb = split_backbone(tst(300, 64)).eval()  # k = 5, 10 steps of left pad
    k = bb.spec.patch
    with pytest.raises(NotImplementedError, match="causal='shift'"):
        with causal(bb): pass
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 300, generator=g)
    with causal_attention(bb), torch.no_grad():
        reach = lookahead(bb, 1)
        assert reach == k - 1
        y = bb(x)
        tight = False
        for t in range(100, 110):
            x2 = x.clone(); x2[..., t + reach + 1:] = torch.randn(x2[..., t + reach + 1:].shape, generator=g) * 3
            assert torch.allclose(bb(x2)[..., :t + 1], y[..., :t + 1], atol=1e-5), t
            x3 = x.clone(); x3[..., t + reach] += 3.
            tight |= not torch.allclose(bb(x3)[..., t], y[..., t], atol=1e-5)
        assert tight  # at a patch's first step the whole patch ahead counts


def _counts(n=48, seed=0, n_classes=0):
    return ar_counts(n, min_len=60, max_len=160, seed=seed, n_classes=n_classes)


def _pos(model) -> torch.Tensor:
    b = model.backbone
    return (b.W_pos if hasattr(b, 'W_pos') else b.pos_embed).detach().cpu().clone()


@pytest.mark.parametrize('kind', ['TSTPlus', 'TSiTPlus'])
@pytest.mark.parametrize('Task', ALL_TASKS, ids=lambda T: T.task_name)
def test_every_task_pretrains_a_transformer_and_loads_into_the_classifier(Task, kind, tmp_path):
    dls = unlabeled_dls(48, bs=16)
    kw = {'n_values': 41} if 'n_values' in Task.__init__.__code__.co_varnames else {}
    task = Task(save_as=tmp_path / 'w.pth', **kw)
    cls, akw = arch_kw(kind)
    learn = ts_learner(dls, cls, seq_len=160, cbs=task, **akw)
    fit_quiet(learn, 1)
    assert type(learn.model).__name__ == kind  # restored
    X, y = _counts(24, n_classes=3)
    clf = ts_learner(get_ssl_dls(X, y, bs=8), cls, seq_len=160, metrics=accuracy, cbs=IgnorePadding(), **akw)
    before = _pos(clf.model)
    report = load_pretrained(clf, tmp_path / 'w.pth')
    assert report.transferred and not torch.equal(_pos(clf.model), before)
    assert torch.equal(_pos(clf.model), _pos(learn.model))


@pytest.mark.parametrize('kind', KINDS)
def test_classifier_takes_variable_lengths_and_predicts_independently_of_batching(kind):
    X, y = _counts(40, n_classes=3)
    dls = get_ssl_dls(X, y, bs=8)
    cls, akw = arch_kw(kind)
    learn = ts_learner(dls, cls, seq_len=160, metrics=accuracy, cbs=IgnorePadding(), **akw)
    fit_quiet(learn, 1)
    p8, _ = learn.get_preds(dl=dls.test_dl(X[:16], exact=False, bs=8))
    p1, _ = learn.get_preds(dl=dls.test_dl(X[:16], exact=False, bs=1))
    assert torch.allclose(p8, p1, atol=1e-5)
    with pytest.raises(ValueError, match='seq_len=160'):  # longer than the classifier takes: says what to do
        learn.get_preds(dl=dls.test_dl([np.zeros((1, 200), np.float32)]))


def test_exported_transformer_classifier_predicts_the_same(tmp_path):
    "learn.export() / load_learner keep IgnorePadding: the loaded classifier takes variable lengths, same predictions."
    from fastai.learner import load_learner
    X, y = _counts(24, n_classes=2)
    dls = get_ssl_dls(X, y, bs=8)
    learn = ts_learner(dls, TSTPlus, seq_len=160, metrics=accuracy, cbs=IgnorePadding(), flatten=False, **SMALL)
    fit_quiet(learn, 1)
    learn.export(tmp_path / 'clf.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        loaded = load_learner(tmp_path / 'clf.pkl')
    p, _ = learn.get_preds(dl=dls.test_dl(X[:8], exact=False, bs=4))
    q, _ = loaded.get_preds(dl=loaded.dls.test_dl(X[:8], exact=False, bs=4))
    assert torch.allclose(p, q, atol=1e-6)


def test_runs_need_seq_len_and_say_which_series_is_too_long():
    from tsai_ssl.errors import InputError
    from tsai_ssl.experiment import RunConfig, finetune, pretrain, pretrain_mvp
    X, y = _counts(12, n_classes=2)
    with pytest.raises(InputError, match='seq_len.*--arch-config'):
        pretrain(X, 'masked', RunConfig(arch='TSTPlus'))
    cfg = RunConfig(arch='tstplus', arch_config=dict(seq_len=100, **SMALL))
    with pytest.raises(InputError, match=r'X_train\[\d+\] has \d+ steps, more than the seq_len=100 of TSTPlus.*crop'):
        finetune(X, y, X, y, cfg)
    with pytest.raises(InputError, match=r'X_test\[\d+\] has'):  # test series are never cropped
        finetune([x[:, :50] for x in X], y, X, y, cfg.replace(max_len=50))
    with pytest.raises(InputError, match='MVP.*max_seq_len'):
        pretrain_mvp(X, cfg.replace(arch_config=dict(seq_len=160, max_seq_len=32, **SMALL)), path='unused')


@pytest.mark.parametrize('arch,config', [('TSTPlus', dict(max_seq_len=64, flatten=False, **SMALL)),
                                         ('TSiTPlus', SMALL_TSIT)])
def test_a_transformer_pretrains_and_finetunes_through_the_run_api(arch, config, tmp_path):
    from tsai_ssl.experiment import RunConfig, finetune, pretrain
    X, y = _counts(32, n_classes=2)
    cfg = RunConfig(arch=arch, arch_config=dict(seq_len=160, **config), pretrain_steps=4, finetune_steps=4, bs=8)
    w = pretrain(X, 'next', cfg, path=tmp_path / 'next.pth')
    acc = finetune(X[:16], y[:16], X[16:], y[16:], cfg, weights=w)
    assert 0 <= acc <= 1


@pytest.mark.parametrize('arch,config', [('TSTPlus', dict(flatten=False, **SMALL)), ('TSiTPlus', SMALL_TSIT)])
def test_semi_supervised_fine_tuning_with_pseudo_labels_on_a_transformer(arch, config):
    "The unlabeled forwards of the classifier (FixMatch term) get the padding to seq_len too."
    from tsai_ssl.experiment import RunConfig, finetune
    from tsai_ssl.semi import SemiSupervised
    X, y = _counts(32, n_classes=2)
    cfg = RunConfig(arch=arch, arch_config=dict(seq_len=160, **config), finetune_steps=3, bs=8,
                    semi_weight=1., pseudo_threshold=0.)
    _, learn = finetune(X[:16], y[:16], X[16:], y[16:], cfg, semi_task='masked', X_unlabeled=X, return_learner=True)
    semi = next(cb for cb in learn.cbs if isinstance(cb, SemiSupervised))
    assert semi.pseudo_share == 1. and np.isfinite(semi.pseudo_loss) and np.isfinite(semi.pretext_loss)


def test_compare_runs_a_transformer_with_its_plan(tmp_path):
    "compare's plan times a step at the Transformer's seq_len; scratch and a task run and are reported."
    from tsai_ssl.experiment import RunConfig, compare
    X, y = _counts(32, n_classes=2)
    cfg = RunConfig(arch='TSTPlus', arch_config=dict(seq_len=160, max_seq_len=32, flatten=False, **SMALL),
                    pretrain_steps=3, finetune_steps=3, bs=8)
    rows = compare(X[:20], y[:20], X[20:], y[20:], config=cfg, tasks=['contrastive'], fractions=[1.0], seeds=[0],
                   workdir=tmp_path, probe=False, progress=False)
    scored = [r for r in rows if r['fraction'] is not None]  # (the others record the pretraining)
    assert {r['method'] for r in scored} == {'scratch', 'contrastive'} and all(0 <= r['accuracy'] <= 1 for r in scored)


@pytest.mark.parametrize('kind', ['TSTPlus', 'TSiTPlus'])
@pytest.mark.parametrize('causal_attn', [False, True])
def test_memory_saver_gives_the_same_gradients(kind, causal_attn):
    "Checkpointed blocks recompute with the forward's masks (a TSiTPlus's come from hooks gone by the backward)."
    from tsai_ssl import checkpoint_blocks
    bb = split_backbone(small(kind, 120)).train()
    x = torch.randn(3, 1, 100, generator=torch.Generator().manual_seed(5))
    pm = torch.ones(3, 100, dtype=torch.bool); pm[0, 40:] = False; pm[2, 70:] = False

    def grads(saver: bool):
        bb.zero_grad()
        with contextlib.ExitStack() as st:
            pa = st.enter_context(padding_aware(bb))
            if causal_attn: st.enter_context(causal_attention(bb))
            if saver: st.enter_context(checkpoint_blocks(bb))
            pa.pad_mask = pm
            h = bb(x)
            pa.pad_mask = None  # as a task clears it after its forward: the recomputation must not need it
            (h * pm[:, None]).pow(2).sum().backward()  # a TSiTPlus's attention hooks are gone by now
        return [p.grad.clone() for p in bb.parameters() if p.grad is not None]

    plain, saved = grads(False), grads(True)
    assert len(plain) == len(saved) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain, saved))


def test_trailing_padding_of_the_whole_batch_and_one_step_series():
    "A mask whose last steps are padding in every series, and a series of one real step under LSA: finite, exact."
    bb = split_backbone(TSiTPlus(1, 3, seq_len=64, lsa=True, **SMALL_TSIT)).eval()
    x = torch.randn(2, 1, 40, generator=torch.Generator().manual_seed(6))
    pm = torch.zeros(2, 40, dtype=torch.bool); pm[0, :30] = True; pm[1, :1] = True
    with torch.no_grad(), padding_aware(bb) as pa:
        pa.pad_mask = pm
        h = bb(x)
        alone = bb(x[1:, :, :1])
    assert h.shape == (2, 32, 40) and torch.isfinite(h).all() and torch.isfinite(alone).all()
    assert torch.allclose(h[1, :, :1], alone[0], atol=1e-5)


def test_next_step_pad_mode_on_a_short_transformer():
    "check_causal probes at most seq_len steps of a Transformer (its default probe, 96, is longer than 64)."
    bb = split_backbone(tst(64))
    with causal(bb): check_causal(bb, c_in=1)


def test_validation_series_longer_than_seq_len_are_named_before_training():
    from tsai_ssl.errors import InputError
    from tsai_ssl.experiment import RunConfig, pretrain
    X, _ = _counts(12)
    cfg = RunConfig(arch='TSTPlus', arch_config=dict(seq_len=100, **SMALL), max_len=80, pretrain_steps=3, bs=4)
    with pytest.raises(InputError, match=r'X\[\d+\] has \d+ steps.*never cropped'):
        pretrain(X, 'masked', cfg)
